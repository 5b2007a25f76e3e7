//! Object paths: the client crate's, so that the agent and every client build the same paths.

pub use hlfs_client::paths::*;
