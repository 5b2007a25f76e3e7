//! The errors of the API: one variant per `org.hlfs.Error.*` name, and the kinds they stand for.
//!
//! hlfsd picks the name from the kind of the failure ([`ErrorKind`], shared with the engine in
//! hlfs-types), so a client (the `hlfs`
//! CLI, the libvirt pool plugin) acts on the kind without parsing messages.

pub use hlfs_types::ErrorKind;

/// An error of the API: what hlfsd answers (the message is its full error text, with the object
/// and operation named), or, for [`HlfsError::ZBus`], a failure to reach it or to decode its
/// answer. Also what this crate's parsers return for bad input ([`HlfsError::Invalid`]).
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.hlfs.Error")]
pub enum HlfsError {
    /// Not an `org.hlfs.Error`: the connection, the bus, or another service's error.
    #[zbus(error)]
    ZBus(zbus::Error),
    NotFound(String),
    Exists(String),
    Busy(String),
    Invalid(String),
    PermissionDenied(String),
    Unavailable(String),
    ReadOnly(String),
    NoSpace(String),
    Corrupt(String),
    Io(String),
    NotSupported(String),
}

impl HlfsError {
    /// The error hlfsd sends for a failure of `kind` described by `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> HlfsError {
        let m = message.into();
        match kind {
            ErrorKind::NotFound => HlfsError::NotFound(m),
            ErrorKind::Exists => HlfsError::Exists(m),
            ErrorKind::Busy => HlfsError::Busy(m),
            ErrorKind::InvalidArgument => HlfsError::Invalid(m),
            ErrorKind::PermissionDenied => HlfsError::PermissionDenied(m),
            ErrorKind::Unavailable => HlfsError::Unavailable(m),
            ErrorKind::ReadOnly => HlfsError::ReadOnly(m),
            ErrorKind::NoSpace => HlfsError::NoSpace(m),
            ErrorKind::Corrupt => HlfsError::Corrupt(m),
            ErrorKind::Io => HlfsError::Io(m),
            ErrorKind::NotSupported => HlfsError::NotSupported(m),
        }
    }

    /// The kind; `None` for [`HlfsError::ZBus`] (no answer from hlfsd, or not one of its names).
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            HlfsError::ZBus(_) => return None,
            HlfsError::NotFound(_) => ErrorKind::NotFound,
            HlfsError::Exists(_) => ErrorKind::Exists,
            HlfsError::Busy(_) => ErrorKind::Busy,
            HlfsError::Invalid(_) => ErrorKind::InvalidArgument,
            HlfsError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            HlfsError::Unavailable(_) => ErrorKind::Unavailable,
            HlfsError::ReadOnly(_) => ErrorKind::ReadOnly,
            HlfsError::NoSpace(_) => ErrorKind::NoSpace,
            HlfsError::Corrupt(_) => ErrorKind::Corrupt,
            HlfsError::Io(_) => ErrorKind::Io,
            HlfsError::NotSupported(_) => ErrorKind::NotSupported,
        })
    }

    /// The D-Bus error name: `org.hlfs.Error.*`, or for [`HlfsError::ZBus`] the name of the
    /// error another party sent (`org.freedesktop.DBus.Error.UnknownObject`, ...), else
    /// `org.freedesktop.DBus.Error.Failed`.
    pub fn error_name(&self) -> String {
        match (self, self.kind()) {
            (_, Some(k)) => k.dbus_name().to_string(),
            (HlfsError::ZBus(zbus::Error::MethodError(name, _, _)), None) => name.to_string(),
            (HlfsError::ZBus(zbus::Error::FDO(e)), None) => {
                zbus::DBusError::name(e.as_ref()).to_string()
            }
            _ => "org.freedesktop.DBus.Error.Failed".to_string(),
        }
    }

    /// The message alone (without the name).
    pub fn message(&self) -> String {
        match self {
            HlfsError::ZBus(zbus::Error::MethodError(name, msg, _)) => {
                msg.clone().unwrap_or_else(|| name.to_string())
            }
            HlfsError::ZBus(zbus::Error::FDO(e)) => match e.as_ref() {
                zbus::fdo::Error::Failed(m) => m.clone(),
                other => other.to_string(),
            },
            HlfsError::ZBus(e) => e.to_string(),
            HlfsError::NotFound(m)
            | HlfsError::Exists(m)
            | HlfsError::Busy(m)
            | HlfsError::Invalid(m)
            | HlfsError::PermissionDenied(m)
            | HlfsError::Unavailable(m)
            | HlfsError::ReadOnly(m)
            | HlfsError::NoSpace(m)
            | HlfsError::Corrupt(m)
            | HlfsError::Io(m)
            | HlfsError::NotSupported(m) => m.clone(),
        }
    }

    /// An invalid-argument error for a `what` (size, name, URI) the user typed.
    pub fn invalid(what: &str, value: &str, why: impl std::fmt::Display) -> HlfsError {
        HlfsError::Invalid(format!("invalid {what} {value:?}: {why}"))
    }
}

impl From<zbus::fdo::Error> for HlfsError {
    fn from(e: zbus::fdo::Error) -> Self {
        HlfsError::ZBus(zbus::Error::FDO(Box::new(e)))
    }
}

impl From<zbus::zvariant::Error> for HlfsError {
    fn from(e: zbus::zvariant::Error) -> Self {
        HlfsError::ZBus(zbus::Error::Variant(e))
    }
}

/// Result of this crate's calls.
pub type Result<T, E = HlfsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_name_and_round_trips() {
        let mut names = std::collections::BTreeSet::new();
        for k in ErrorKind::ALL {
            assert!(names.insert(k.dbus_name()), "{k:?} shares a name");
            let e = HlfsError::new(k, "why");
            assert_eq!(e.kind(), Some(k));
            assert_eq!(e.error_name(), k.dbus_name());
            assert_eq!(zbus::DBusError::name(&e).as_str(), k.dbus_name());
            assert_eq!(e.message(), "why");
        }
    }

    #[test]
    fn a_method_error_of_that_name_becomes_its_variant() {
        let name = zbus::names::OwnedErrorName::try_from("org.hlfs.Error.Unavailable").unwrap();
        let msg = zbus::message::Message::method_call("/", "M")
            .unwrap()
            .build(&())
            .unwrap();
        let e: HlfsError = zbus::Error::MethodError(name, Some("pool p".into()), msg).into();
        assert_eq!(e.kind(), Some(ErrorKind::Unavailable));
        assert_eq!(e.message(), "pool p");
    }
}
