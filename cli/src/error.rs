//! The CLI's failures: an API error (with its D-Bus name, printed and exit status 1), or an
//! interruption by Ctrl-C (exit status 130, as shells report a SIGINT).

use hlfs_client::HlfsError;

#[derive(Debug)]
pub enum CliError {
    /// What hlfsd answered, or a local error of the same kinds (bad size, no daemon).
    Api(HlfsError),
    /// Ctrl-C: what was stopped.
    Interrupted(String),
}

impl CliError {
    /// The D-Bus error name printed with the message; `None` for an interruption.
    pub fn name(&self) -> Option<String> {
        match self {
            CliError::Api(e) => Some(e.error_name()),
            CliError::Interrupted(_) => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            CliError::Api(e) => e.message(),
            CliError::Interrupted(m) => m.clone(),
        }
    }

    /// The exit status: 1, or 130 after Ctrl-C.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api(_) => 1,
            CliError::Interrupted(_) => 130,
        }
    }
}

impl From<HlfsError> for CliError {
    /// A connection lost midway (hlfsd died or restarted) is `Unavailable`, as one that could
    /// not be made, not a generic D-Bus failure.
    fn from(e: HlfsError) -> Self {
        CliError::Api(match e {
            HlfsError::ZBus(zbus::Error::InputOutput(io)) => {
                HlfsError::Unavailable(format!("lost the connection to hlfsd: {io}"))
            }
            e => e,
        })
    }
}

impl From<zbus::Error> for CliError {
    fn from(e: zbus::Error) -> Self {
        CliError::Api(e.into())
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;
