//! The engine's one error type. Every variant names where it happened (object, offset, volume)
//! so that an operator can find the damaged file without a debugger.

use std::io;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system or backend I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// Stored data failed a checksum or structural check. Never served.
    #[error("volume {volume}: corruption in {object} at offset {offset}: {what}")]
    Corrupt {
        volume: String,
        object: String,
        offset: u64,
        what: String,
    },
    /// Another process holds the volume's single-writer lease.
    #[error("volume {volume} is already open for writing by {holder}")]
    Locked { volume: String, holder: String },
    /// A caller-supplied argument is unacceptable (bad size, bad name, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A byte range does not fit inside the volume.
    #[error("volume {volume}: range {offset}+{len} is beyond the volume size {size}")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// A write-path I/O error left the volume's state uncertain; writes are refused until the
    /// volume has derived its state again from what is durable (tried at the next write or
    /// flush). `no_space`: the error was a full disk (reported as ENOSPC, not EIO).
    #[error("volume {volume} is not accepting writes after an I/O error ({cause}); it recovers by itself at a later write or flush")]
    Failed {
        volume: String,
        cause: String,
        no_space: bool,
    },
    /// The operation conflicts with something that depends on it (a protected snapshot).
    #[error("{0}")]
    Busy(String),
    /// The volume is open read-only (a snapshot, or opened for reading).
    #[error("volume {0} is read-only")]
    ReadOnly(String),
}

impl Error {
    /// Wraps an `io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True if the error is a full disk (ENOSPC), directly or as the cause of a volume's
    /// failed state: a client should see "no space", which it may wait out, not an I/O error.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                source.raw_os_error() == Some(libc::ENOSPC)
                    || source.kind() == io::ErrorKind::StorageFull
            }
            Error::Failed { no_space, .. } => *no_space,
            _ => false,
        }
    }

    /// Builds a corruption error.
    pub fn corrupt(
        volume: impl Into<String>,
        object: impl Into<String>,
        offset: u64,
        what: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            volume: volume.into(),
            object: object.into(),
            offset,
            what: what.into(),
        }
    }
}

pub use hlfs_types::ErrorKind;

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Locked { .. } | Error::Busy(_) => ErrorKind::Busy,
            Error::Invalid(_) | Error::OutOfRange { .. } => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Exists(_) => ErrorKind::Exists,
            Error::Failed { .. } => ErrorKind::Io,
            Error::ReadOnly(_) => ErrorKind::ReadOnly,
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn kinds_of_errors() {
        let io = |k: io::ErrorKind| Error::io("write", "seg", io::Error::from(k));
        assert_eq!(io(io::ErrorKind::StorageFull).kind(), ErrorKind::NoSpace);
        assert_eq!(
            io(io::ErrorKind::ConnectionRefused).kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(io(io::ErrorKind::UnexpectedEof).kind(), ErrorKind::Io);
        assert_eq!(
            Error::corrupt("v", "seg", 0, "crc").kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(Error::ReadOnly("v".into()).kind(), ErrorKind::ReadOnly);
        assert_eq!(
            Error::Invalid("x".into()).kind(),
            ErrorKind::InvalidArgument
        );
    }
}
