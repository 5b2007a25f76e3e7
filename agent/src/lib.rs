//! HLFS host agent: owns pools and open volume engines and serves them to QEMU over NBD.
//!
//! `hlfsd` (see `bin/hlfsd.rs`) is a thin wrapper around [`daemon::run`].

pub mod background;
pub mod caller_files;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod error;
pub mod fsutil;
pub mod fuse;
pub mod jobs;
pub mod limits;
pub mod manager;
pub mod names;
pub mod nbd;
pub mod paths;
pub mod pools;
pub mod service;
pub mod users;

pub use error::{Error, Result};
