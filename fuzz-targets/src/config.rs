//! The TOML configuration file: parsed, then merged into settings as `hlfsd --config` would.

use hlfs_agent::config::{parse_tcp_addr, Cli, ConfigFile, Settings};
use std::path::{Path, PathBuf};

/// Parses the input as `hlfsd.toml` and resolves it. A TCP address that is not a literal
/// (port, IP or IP:port) is dropped first: resolving a host name would query DNS.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/hlfsd.toml");
    let Ok(mut file) = ConfigFile::parse(text, path) else {
        return;
    };
    if let Some(tcp) = &file.nbd.tcp {
        let literal = tcp.parse::<u16>().is_ok()
            || tcp.parse::<std::net::SocketAddr>().is_ok()
            || tcp
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok();
        if literal {
            assert!(
                parse_tcp_addr(tcp).is_ok(),
                "literal address {tcp:?} refused"
            );
        } else {
            file.nbd.tcp = None;
        }
    }
    let cli = Cli {
        config: Some(path.to_path_buf()),
        data_dir: Some(PathBuf::from("/fuzz/data")),
        runtime_dir: Some(PathBuf::from("/fuzz/run")),
        ..Cli::default()
    };
    if let Ok(s) = Settings::resolve_with(&cli, &file) {
        if let Some(c) = &s.cleaner {
            assert!(c.max_live_ratio > 0.0 && c.max_live_ratio < 1.0);
            assert!(c.space_overhead >= 0.0 && c.space_overhead.is_finite());
            assert!(c.max_segments_per_pass > 0);
        }
        assert!(s.hdfs.journal_bytes >= 16 << 20);
        assert!(!s.hdfs.connect_timeout.is_zero() && !s.hdfs.op_timeout.is_zero());
    }
}
