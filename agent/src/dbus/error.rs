//! Named D-Bus errors (`org.hlfs.Error.*`), so that clients can act on the kind of failure
//! without parsing messages. The error type is the client crate's: hlfsd and its clients share
//! the names. The name is chosen by the error's kind ([`Error::kind`]).

use crate::error::Error;

pub use hlfs_client::HlfsError;

impl From<Error> for HlfsError {
    fn from(e: Error) -> Self {
        HlfsError::new(e.kind(), e.to_string())
    }
}

/// Result of a D-Bus method.
pub type DResult<T> = Result<T, HlfsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kinds() {
        let unavailable = Error::Unavailable {
            what: "pool h".into(),
            why: "connection refused".into(),
        };
        assert_eq!(
            HlfsError::from(unavailable).error_name(),
            "org.hlfs.Error.Unavailable"
        );
        let full = Error::engine(
            "write vm1",
            hlfs_engine::Error::io(
                "append",
                "seg",
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ),
        );
        assert_eq!(HlfsError::from(full).error_name(), "org.hlfs.Error.NoSpace");
        let ro = Error::engine("write", hlfs_engine::Error::ReadOnly("v@s".into()));
        assert_eq!(HlfsError::from(ro).error_name(), "org.hlfs.Error.ReadOnly");
        let bad = Error::invalid("size", "x", "not a number");
        let e = HlfsError::from(bad);
        assert_eq!(e.error_name(), "org.hlfs.Error.Invalid");
        assert_eq!(e.message(), "invalid size \"x\": not a number");
    }
}
