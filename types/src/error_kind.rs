//! What kind of failure an error is: one list for the engine, the agent and the clients, so the
//! kind travels from a failed write in the engine to the D-Bus error name a client acts on with
//! no mapping in between.

use std::io;

/// What kind of failure an error is. The engine's and the agent's errors have a `kind()`
/// returning it; each kind has one D-Bus error name ([`ErrorKind::dbus_name`]), which is how a
/// client gets it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ErrorKind {
    /// No such pool, volume, snapshot, job or file.
    NotFound,
    /// The pool, volume, snapshot or destination already exists.
    Exists,
    /// In use: a volume with NBD clients, a pool with volumes, a protected snapshot.
    Busy,
    /// A bad name, size, URI, option, format or path.
    InvalidArgument,
    /// The caller is neither root nor in group `hlfs`.
    PermissionDenied,
    /// A backend that does not answer now (an HDFS NameNode that is down); retrying may work.
    Unavailable,
    /// The object is read-only (a snapshot, a read-only filesystem).
    ReadOnly,
    /// The backend is full.
    NoSpace,
    /// Stored data failed a checksum or structural check.
    Corrupt,
    /// Any other I/O failure (and a tool such as qemu-img failing).
    Io,
    /// A feature that is not built in.
    NotSupported,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::NotFound,
        ErrorKind::Exists,
        ErrorKind::Busy,
        ErrorKind::InvalidArgument,
        ErrorKind::PermissionDenied,
        ErrorKind::Unavailable,
        ErrorKind::ReadOnly,
        ErrorKind::NoSpace,
        ErrorKind::Corrupt,
        ErrorKind::Io,
        ErrorKind::NotSupported,
    ];

    /// The D-Bus error name hlfsd answers with for this kind.
    pub fn dbus_name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "org.hlfs.Error.NotFound",
            ErrorKind::Exists => "org.hlfs.Error.Exists",
            ErrorKind::Busy => "org.hlfs.Error.Busy",
            ErrorKind::InvalidArgument => "org.hlfs.Error.Invalid",
            ErrorKind::PermissionDenied => "org.hlfs.Error.PermissionDenied",
            ErrorKind::Unavailable => "org.hlfs.Error.Unavailable",
            ErrorKind::ReadOnly => "org.hlfs.Error.ReadOnly",
            ErrorKind::NoSpace => "org.hlfs.Error.NoSpace",
            ErrorKind::Corrupt => "org.hlfs.Error.Corrupt",
            ErrorKind::Io => "org.hlfs.Error.Io",
            ErrorKind::NotSupported => "org.hlfs.Error.NotSupported",
        }
    }

    /// The kind of an operating-system or backend I/O error.
    pub fn of_io(e: &io::Error) -> ErrorKind {
        use io::ErrorKind as K;
        match e.kind() {
            K::StorageFull | K::QuotaExceeded => ErrorKind::NoSpace,
            K::ReadOnlyFilesystem => ErrorKind::ReadOnly,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown => ErrorKind::Unavailable,
            _ => ErrorKind::Io,
        }
    }
}
