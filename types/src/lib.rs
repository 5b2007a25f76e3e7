//! Types that the engine, the agent and the client share, with no dependency of their own (as
//! crucible splits its `*-types` crates out): what an HLFS backend URI is, parsed in one place, and the kinds of errors.

pub mod error_kind;
pub mod uri;

pub use error_kind::ErrorKind;
pub use uri::{BackendUri, Scheme, UriError};
