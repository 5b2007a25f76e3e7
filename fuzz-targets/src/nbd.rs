//! The NBD server fed a client's byte stream: negotiation then transmission
//! (`nbd_handshake`), or transmission alone on an export chosen by the first byte
//! (`nbd_transmission`). The server code is the daemon's own (`hlfs_agent::nbd`), serving a real
//! volume in a scratch directory; the bytes it answers are checked to be well-formed replies, one
//! final reply per request it accepted.

use crate::scratch::Scratch;
use hlfs_agent::manager::{CleanerSettings, Manager};
use hlfs_agent::names::PoolUri;
use hlfs_agent::nbd::handshake::{self, Export, Negotiated, Outcome};
use hlfs_agent::nbd::proto::*;
use hlfs_agent::nbd::{transmission, Limits};
use hlfs_agent::pools::Registry;
use hlfs_engine::CreateOptions;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// The export every connection finds: `default/vm1`, with snapshot `s1`.
pub const POOL: &str = "default";
pub const VOLUME: &str = "vm1";
pub const SNAPSHOT: &str = "s1";
pub const SIZE: u64 = 1 << 20;
/// A hung server is a finding too.
const DEADLINE: Duration = Duration::from_secs(30);

/// Input flags of `nbd_transmission` (its first byte).
pub const STRUCTURED: u8 = 1;
pub const BASE_ALLOCATION: u8 = 2;
pub const SNAPSHOT_EXPORT: u8 = 4;

struct Env {
    rt: tokio::runtime::Runtime,
    mgr: Arc<Manager>,
    _dir: Scratch,
}

/// The value, or a panic naming the harness step that failed (set-up, not input handling).
fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("fuzz harness: {what}: {e}"),
    }
}

/// One daemon's state per process, made on first use: a local pool with a 1 MiB volume that
/// holds some data and a snapshot. Requests change it from run to run, as a client would.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = Scratch::new("nbd");
        let rt = ok(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            "runtime",
        );
        let mut reg = ok(Registry::load(&dir.path().join("data")), "registry");
        ok(
            reg.add(POOL, PoolUri::Local(dir.path().join("pool"))),
            "add pool",
        );
        // Inline cleaning keeps the log bounded over millions of runs; no background thread.
        let cleaner = CleanerSettings {
            background: None,
            ..CleanerSettings::default()
        };
        let mgr = Arc::new(Manager::new(reg, 1 << 20).with_cleaner(Some(cleaner)));
        let opts = CreateOptions {
            size: SIZE,
            segment_size: 256 << 10,
            ..Default::default()
        };
        let v = ok(mgr.create_volume(POOL, VOLUME, &opts), "create volume");
        let made = v.with(|v| {
            v.write(0, &[7u8; 8192])?;
            v.write(65536, b"hlfs fuzz")?;
            v.snapshot_create(SNAPSHOT, false)?;
            v.write(4096, &[9u8; 4096])?;
            v.trim(65536, 4096)
        });
        match made {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("fuzz harness: fill volume: {e}"),
            None => panic!("fuzz harness: volume closed"),
        }
        Env { rt, mgr, _dir: dir }
    })
}

/// What the server wrote, shared with the harness.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A client connection for negotiation: reads the input, writes into the sink.
struct Conn<'a> {
    input: &'a [u8],
    out: Sink,
}

impl AsyncRead for Conn<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.out).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.out).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.out).poll_shutdown(cx)
    }
}

/// Runs the transmission phase over `input` and checks the replies.
async fn transmit(input: &[u8], neg: Negotiated) {
    let structured = neg.structured;
    let out = Sink::default();
    let (_keep, shutdown) = watch::channel(false);
    let budget = Limits::default().for_connection(hlfs_agent::limits::PeerKey::Uid(0));
    // An error is the server's verdict on a broken stream (here: the input ending mid-payload).
    let _ = transmission::serve(input, out.clone(), neg, budget, shutdown).await;
    check_replies(input, &out.take(), structured);
}

/// Negotiation, then transmission if the client picked an export.
pub fn handshake(data: &[u8]) {
    let e = env();
    e.rt.block_on(async {
        let run = async {
            let mut conn = Conn {
                input: data,
                out: Sink::default(),
            };
            let outcome = handshake::negotiate(&mut conn, &e.mgr).await;
            if let Ok(Outcome::Transmission(neg)) = outcome {
                assert!(
                    neg.export.size <= SIZE && neg.export.name.contains(VOLUME),
                    "negotiated an export that does not exist: {:?}",
                    neg.export.name
                );
                transmit(conn.input, neg).await;
            }
        };
        if tokio::time::timeout(DEADLINE, run).await.is_err() {
            panic!("NBD server hung (no progress for {DEADLINE:?})");
        }
    });
}

/// Transmission on an export chosen by the first byte (see the flags), the rest the client's
/// requests.
pub fn transmission(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let e = env();
    let volume = ok(e.mgr.volume(POOL, VOLUME), "open volume");
    let snapshot = (flags & SNAPSHOT_EXPORT != 0).then(|| SNAPSHOT.to_string());
    let sized = volume.read(|v| {
        let size = match &snapshot {
            Some(s) => v.snapshot_size(s),
            None => Ok(v.size()),
        };
        size.map(|s| (s, v.block_size()))
    });
    let Some(Ok((size, block_size))) = sized else {
        panic!("fuzz harness: the export's size is unknown");
    };
    let name = match &snapshot {
        Some(s) => format!("{POOL}/{VOLUME}@{s}"),
        None => format!("{POOL}/{VOLUME}"),
    };
    let neg = Negotiated {
        export: Export {
            name,
            volume,
            size,
            block_size,
            read_only: snapshot.is_some(),
            snapshot,
        },
        structured: flags & STRUCTURED != 0,
        base_allocation: flags & BASE_ALLOCATION != 0,
    };
    e.rt.block_on(async {
        if tokio::time::timeout(DEADLINE, transmit(input, neg))
            .await
            .is_err()
        {
            panic!("NBD server hung (no progress for {DEADLINE:?})");
        }
    });
}

/// The requests the server accepts from `input`, as the protocol defines them: headers until
/// a bad magic, NBD_CMD_DISC, an oversized WRITE or the end (a WRITE whose payload is cut short
/// is not a request).
fn requests(input: &[u8]) -> Vec<Request> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(h) = input.get(pos..pos + REQUEST_LEN) {
        let Some(r) = h.try_into().ok().and_then(Request::decode) else {
            break;
        };
        pos += REQUEST_LEN;
        if r.kind == CMD_DISC || (r.kind == CMD_WRITE && r.len > MAX_PAYLOAD) {
            break;
        }
        if r.kind == CMD_WRITE {
            if input.len() - pos < r.len as usize {
                break;
            }
            pos += r.len as usize;
        }
        out.push(r);
    }
    out
}

/// Checks that `out` is a sequence of well-formed replies answering each request exactly once
/// (skipped when cookies repeat: replies could not be matched to requests).
fn check_replies(input: &[u8], out: &[u8], structured: bool) {
    let reqs = requests(input);
    let mut pending: HashMap<u64, Request> = HashMap::new();
    for r in &reqs {
        if pending.insert(r.cookie, *r).is_some() {
            return;
        }
    }
    let be32 = |p: usize| -> u32 {
        match out.get(p..p + 4) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => panic!("reply cut short at byte {p} of {}", out.len()),
        }
    };
    let be64 = |p: usize| (u64::from(be32(p)) << 32) | u64::from(be32(p + 4));
    let mut pos = 0;
    while pos < out.len() {
        match be32(pos) {
            SIMPLE_REPLY_MAGIC => {
                let err = be32(pos + 4);
                let cookie = be64(pos + 8);
                let Some(r) = pending.remove(&cookie) else {
                    panic!("simple reply for cookie {cookie:#x}, which no request is waiting for");
                };
                pos += 16;
                if r.kind == CMD_READ {
                    assert!(
                        !structured,
                        "simple reply to a READ with structured replies on"
                    );
                    if err == 0 {
                        pos += r.len as usize;
                    }
                }
            }
            STRUCTURED_REPLY_MAGIC => {
                assert!(
                    structured,
                    "structured reply without structured replies negotiated"
                );
                let flags = (be32(pos + 4) >> 16) as u16;
                let cookie = be64(pos + 8);
                let len = be32(pos + 16) as usize;
                assert!(
                    pending.contains_key(&cookie),
                    "structured chunk for cookie {cookie:#x}, which no request is waiting for"
                );
                pos += 20 + len;
                assert!(pos <= out.len(), "structured chunk cut short");
                if flags & REPLY_FLAG_DONE != 0 {
                    pending.remove(&cookie);
                }
            }
            m => panic!("reply with bad magic {m:#x} at byte {pos}"),
        }
    }
    assert!(pos == out.len(), "last reply cut short");
    assert!(
        pending.is_empty(),
        "{} of {} requests were never answered: {:?}",
        pending.len(),
        reqs.len(),
        pending.values().collect::<Vec<_>>()
    );
}
