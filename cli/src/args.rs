//! The command line: nouns (pool, volume, snapshot, job) with their verbs, and the image and
//! clone shortcuts. `hlfs man` and `hlfs completions` are generated from these definitions.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// A bus to reach hlfsd through.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BusArg {
    Session,
    System,
}

impl From<BusArg> for hlfs_client::socket::Bus {
    fn from(b: BusArg) -> Self {
        match b {
            BusArg::Session => hlfs_client::socket::Bus::Session,
            BusArg::System => hlfs_client::socket::Bus::System,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "hlfs",
    version,
    about = "HLFS admin CLI: pools, volumes, snapshots, import and export"
)]
pub struct Cli {
    /// hlfsd's peer-to-peer D-Bus socket [default: your own daemon's RUNTIME_DIR/dbus.sock,
    /// then /run/hlfs/dbus.sock, then the system bus]
    #[arg(long, value_name = "PATH", global = true, env = "HLFS_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Reach hlfsd through a bus instead
    #[arg(long, value_enum, global = true, conflicts_with = "socket")]
    pub bus: Option<BusArg>,
    /// Machine-readable output: one JSON value on stdout (errors: one JSON object on stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar for import, export, flatten and clean (there is none either when
    /// stderr is not a terminal, or under --json)
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Pools: create, list, info, delete
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Volumes: create, list, info, resize, delete, clean
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots: create, list (tree), delete, before, rollback, export
    #[command(subcommand)]
    Snapshot(SnapCmd),
    /// Jobs (import, export, clean, flatten): list, cancel
    #[command(subcommand)]
    Job(JobCmd),
    /// Create volume NEW (pool/name or name) from snapshot VOLUME%SNAP, instantly
    Clone { source: String, new: String },
    /// Copy everything a clone reads from its base into it
    Flatten { volume: String },
    /// Create volume VOLUME from a raw or qcow2 image (Ctrl-C cancels: no volume is left)
    Import {
        image: PathBuf,
        volume: String,
        /// Image format (raw or qcow2) [probed]
        #[arg(long, short = 'f')]
        format: Option<String>,
    },
    /// Copy VOLUME (or snapshot VOLUME%SNAP) into a new raw or qcow2 image
    Export {
        volume: String,
        image: PathBuf,
        /// Output format (raw or qcow2)
        #[arg(long, short = 'O', default_value = "raw")]
        format: String,
    },
    /// Print the completion script for SHELL (packaging installs them)
    Completions { shell: ShellArg },
    /// Print the man page hlfs(1), in roff
    Man,
}

/// A shell to complete for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Running and recently finished jobs (finished ones stay 5 minutes)
    List,
    /// Stop running job ID (waits for nothing: see `job list`)
    Cancel { id: u32 },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Add pool NAME on URI (local:///DIR or hdfs://HOST:PORT/DIR)
    Create { name: String, uri: String },
    /// Pools, their URIs, volume counts and status
    List,
    /// A pool's URI and volumes
    Info { name: String },
    /// Remove an empty pool
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create VOLUME (pool/name, name, local:///dir/name or hdfs://host:port/dir/name) of SIZE (e.g. 10G)
    Create {
        volume: String,
        size: String,
        /// Block size in bytes (512 to 65536)
        #[arg(long)]
        block_size: Option<u32>,
        /// Segment size, e.g. 32M
        #[arg(long)]
        segment_size: Option<String>,
        /// Store blocks uncompressed
        #[arg(long)]
        no_compression: bool,
    },
    /// List volumes (of POOL, or of every pool)
    List { pool: Option<String> },
    /// Every property of VOLUME
    Info { volume: String },
    /// Grow or shrink VOLUME to SIZE
    Resize { volume: String, size: String },
    /// Delete VOLUME with its data
    Delete { volume: String },
    /// Run a cleaner pass now (reclaims space of overwritten data)
    Clean { volume: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapCmd {
    /// Take snapshot VOLUME%SNAP
    Create {
        snapshot: String,
        /// The guest's filesystems are frozen (e.g. virsh domfsfreeze): record the snapshot as
        /// consistent, not merely crash-consistent
        #[arg(long)]
        frozen: bool,
    },
    /// Show the snapshots of VOLUME as a tree
    List { volume: String },
    /// Delete snapshot VOLUME%SNAP
    Delete { snapshot: String },
    /// Name the newest snapshot of VOLUME taken at or before TIME (Unix seconds, or UTC
    /// `YYYY-MM-DD[THH:MM[:SS]][Z]`)
    Before { volume: String, time: String },
    /// Make VOLUME's contents those of VOLUME%SNAP
    Rollback { snapshot: String },
    /// Copy snapshot VOLUME%SNAP into a new raw or qcow2 image
    Export {
        snapshot: String,
        image: PathBuf,
        /// Output format (raw or qcow2)
        #[arg(long, short = 'O', default_value = "raw")]
        format: String,
    },
}
