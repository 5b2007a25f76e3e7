//! Types that the engine, the agent and the client share, with no dependency of their own (as
//! crucible splits its `*-types` crates out): what an HLFS backend URI is, parsed in one place.

pub mod uri;

pub use uri::{BackendUri, Scheme, UriError};
