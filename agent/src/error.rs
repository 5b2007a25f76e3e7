//! The agent's one error type. Each variant says what was being done and to what, so that a
//! message in the log or on the terminal is enough to act on.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on a path or socket.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The volume engine failed; `context` names the operation and volume.
    #[error("{context}: {source}")]
    Engine {
        context: String,
        #[source]
        source: hlfs_engine::Error,
    },
    /// A name (pool, volume, export) is not acceptable.
    #[error("invalid {kind} name {name:?}: {why}")]
    InvalidName {
        kind: &'static str,
        name: String,
        why: String,
    },
    /// A user-supplied value (size, URI, address, volume spec) is not acceptable.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidValue {
        what: &'static str,
        value: String,
        why: String,
    },
    /// The configuration file or pool registry cannot be used.
    #[error("{}: {why}", path.display())]
    Config { path: PathBuf, why: String },
    /// The named pool or volume does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named pool or volume already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The object is in use (an open volume, a running daemon).
    #[error("{0}")]
    Busy(String),
    /// A pool's backend cannot be reached now (an HDFS NameNode that does not answer); `why`
    /// is the last connection error. The pool stays registered and is retried on later calls.
    #[error("{what} is unavailable: {why}")]
    Unavailable { what: String, why: String },
    /// Something is not implemented yet (snapshots over NBD, ...).
    #[error("{0}")]
    Unsupported(String),
    /// The caller may not do this (mutating calls need uid 0 or group `hlfs`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An external tool (qemu-img) failed; `why` carries its own message.
    #[error("{tool}: {why}")]
    Tool { tool: &'static str, why: String },
}

impl Error {
    /// Wraps an `io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Wraps an engine error with what the agent was doing.
    pub fn engine(context: impl Into<String>, source: hlfs_engine::Error) -> Self {
        Error::Engine {
            context: context.into(),
            source,
        }
    }

    /// Builds an invalid-value error.
    pub fn invalid(what: &'static str, value: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidValue {
            what,
            value: value.into(),
            why: why.into(),
        }
    }
}

impl Error {
    /// What kind of failure this is; the D-Bus error name is chosen by it (an HDFS pool whose
    /// NameNode is down reaches clients as `org.hlfs.Error.Unavailable`).
    pub fn kind(&self) -> hlfs_client::ErrorKind {
        use hlfs_client::ErrorKind as K;
        match self {
            Error::Io { source, .. } => K::of_io(source),
            Error::Engine { source, .. } => source.kind(),
            Error::InvalidName { .. } | Error::InvalidValue { .. } | Error::Config { .. } => {
                K::InvalidArgument
            }
            Error::NotFound(_) => K::NotFound,
            Error::Exists(_) => K::Exists,
            Error::Busy(_) => K::Busy,
            Error::Unavailable { .. } => K::Unavailable,
            Error::Unsupported(_) => K::NotSupported,
            Error::PermissionDenied(_) => K::PermissionDenied,
            Error::Tool { .. } => K::Io,
        }
    }
}
