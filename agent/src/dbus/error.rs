//! Named D-Bus errors (`org.hlfs.Error.*`), so that clients can act on the kind of failure
//! without parsing messages.

use crate::error::Error;

/// Every error a method can return. The message is the agent's error text.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.hlfs.Error")]
pub enum HlfsError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NotFound(String),
    Busy(String),
    Exists(String),
    Invalid(String),
    PermissionDenied(String),
    Io(String),
    Corrupt(String),
    NotSupported(String),
}

impl From<Error> for HlfsError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match &e {
            Error::NotFound(_) => HlfsError::NotFound(msg),
            Error::Exists(_) => HlfsError::Exists(msg),
            Error::Busy(_) => HlfsError::Busy(msg),
            Error::InvalidName { .. } | Error::InvalidValue { .. } | Error::Config { .. } => {
                HlfsError::Invalid(msg)
            }
            Error::Unsupported(_) => HlfsError::NotSupported(msg),
            Error::PermissionDenied(_) => HlfsError::PermissionDenied(msg),
            Error::Io { .. }
            | Error::Tool { .. }
            | Error::Connect { .. }
            | Error::Unavailable { .. } => HlfsError::Io(msg),
            Error::Remote { .. } => HlfsError::Io(msg),
            Error::Engine { source, .. } => {
                use hlfs_engine::Error as E;
                match source {
                    E::Corrupt { .. } => HlfsError::Corrupt(msg),
                    E::Locked { .. } | E::Busy(_) => HlfsError::Busy(msg),
                    E::Invalid(_) | E::OutOfRange { .. } | E::ReadOnly(_) => {
                        HlfsError::Invalid(msg)
                    }
                    E::NotFound(_) => HlfsError::NotFound(msg),
                    E::Exists(_) => HlfsError::Exists(msg),
                    _ => HlfsError::Io(msg),
                }
            }
        }
    }
}

/// Result of a D-Bus method.
pub type DResult<T> = Result<T, HlfsError>;
