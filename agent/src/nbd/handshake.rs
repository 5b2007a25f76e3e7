//! Fixed-newstyle negotiation: the server greeting, then options until the client picks an
//! export (NBD_OPT_GO / NBD_OPT_EXPORT_NAME) or leaves. Every length the client sends is bounded
//! before anything is allocated.

use super::proto::*;
use crate::error::Error;
use crate::manager::{Manager, SharedVolume};
use crate::names::ExportName;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An export chosen by the client.
#[derive(Debug, Clone)]
pub struct Export {
    /// The name as the client sent it.
    pub name: String,
    pub volume: Arc<SharedVolume>,
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// `POOL/VOLUME@SNAPSHOT`: served read-only from the snapshot.
    pub snapshot: Option<String>,
}

/// What negotiation settled, for the transmission phase.
#[derive(Debug)]
pub struct Negotiated {
    pub export: Export,
    pub structured: bool,
    /// `base:allocation` was selected with SET_META_CONTEXT for this export.
    pub base_allocation: bool,
}

/// How negotiation ended.
#[derive(Debug)]
pub enum Outcome {
    Transmission(Negotiated),
    /// The client aborted or left, or broke the protocol badly enough that we hung up.
    Closed,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Transmission flags for an export.
pub fn transmission_flags(export: &Export, structured: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
    if export.read_only {
        f |= FLAG_READ_ONLY;
    } else {
        f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    if structured {
        f |= FLAG_SEND_DF;
    }
    f
}

/// Finds and opens an export; the error is an option reply code and a message for the client.
async fn lookup(mgr: &Arc<Manager>, name: &str) -> Result<Export, (u32, String)> {
    let parsed = ExportName::parse(name).map_err(|e| (REP_ERR_UNKNOWN, e.to_string()))?;
    let mgr = mgr.clone();
    let (pool, vol) = (parsed.pool.clone(), parsed.volume.clone());
    let opened = tokio::task::spawn_blocking(move || mgr.volume(&pool, &vol))
        .await
        .map_err(|e| (REP_ERR_UNKNOWN, format!("export {name}: {e}")))?;
    let volume = match opened {
        Ok(v) => v,
        Err(e @ (Error::NotFound(_) | Error::InvalidName { .. })) => {
            return Err((REP_ERR_UNKNOWN, format!("export {name}: {e}")))
        }
        Err(e) => {
            tracing::warn!(export = name, error = %e, "cannot open export");
            return Err((
                REP_ERR_UNKNOWN,
                format!("export {name} is not available: {e}"),
            ));
        }
    };
    let snapshot = parsed.snapshot;
    let sized = volume.read(|v| {
        let size = match &snapshot {
            Some(s) => v.snapshot_size(s),
            None => Ok(v.size()),
        };
        size.map(|size| (size, v.block_size()))
    });
    let (size, block_size) = match sized {
        Some(Ok(x)) => x,
        Some(Err(e)) => return Err((REP_ERR_UNKNOWN, format!("export {name}: {e}"))),
        None => return Err((REP_ERR_SHUTDOWN, "the server is shutting down".into())),
    };
    Ok(Export {
        name: name.to_string(),
        volume,
        size,
        block_size,
        read_only: snapshot.is_some(),
        snapshot,
    })
}

/// A cursor over an option payload that never reads past its end.
struct Payload<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Payload<'a> {
    fn new(data: &'a [u8]) -> Self {
        Payload { data, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A u32-length-prefixed UTF-8 string of at most MAX_STRING bytes.
    fn string(&mut self) -> Option<&'a str> {
        let n = self.u32()?;
        if n > MAX_STRING {
            return None;
        }
        std::str::from_utf8(self.bytes(n as usize)?).ok()
    }
    fn done(&self) -> bool {
        self.pos == self.data.len()
    }
}

struct State {
    structured: bool,
    /// Export name the meta contexts were set for, and whether base:allocation was chosen.
    meta: Option<(String, bool)>,
    no_zeroes: bool,
}

/// Runs negotiation on a fresh connection.
pub async fn negotiate<S>(s: &mut S, mgr: &Arc<Manager>) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    s.flush().await?;

    let cflags = s.read_u32().await?;
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(invalid(format!("unknown client flags {cflags:#x}")));
    }
    let mut st = State {
        structured: false,
        meta: None,
        no_zeroes: cflags & FLAG_C_NO_ZEROES != 0,
    };

    loop {
        let magic = s.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(invalid(format!("bad option magic {magic:#x}")));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            if opt != OPT_EXPORT_NAME {
                let msg = format!("option length {len} exceeds the limit of {MAX_OPTION} bytes");
                s.write_all(&option_reply(opt, REP_ERR_TOO_BIG, msg.as_bytes()))
                    .await?;
                s.flush().await?;
            }
            return Err(invalid(format!("option {opt} with oversized length {len}")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match handle_option(s, mgr, &mut st, opt, &data).await? {
            Some(outcome) => return Ok(outcome),
            None => s.flush().await?,
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    s.write_all(&option_reply(opt, kind, data)).await
}

/// Handles one option; `Some` ends negotiation.
async fn handle_option<S>(
    s: &mut S,
    mgr: &Arc<Manager>,
    st: &mut State,
    opt: u32,
    data: &[u8],
) -> io::Result<Option<Outcome>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match opt {
        OPT_EXPORT_NAME => {
            let Ok(name) = std::str::from_utf8(data) else {
                return Err(invalid("export name is not UTF-8"));
            };
            let export = match lookup(mgr, name).await {
                Ok(e) => e,
                Err((_, msg)) => {
                    // The protocol has no error reply for EXPORT_NAME: hang up.
                    tracing::info!(export = name, "{msg}; closing (NBD_OPT_EXPORT_NAME)");
                    return Ok(Some(Outcome::Closed));
                }
            };
            let mut b = Vec::with_capacity(10 + 124);
            b.extend_from_slice(&export.size.to_be_bytes());
            b.extend_from_slice(&transmission_flags(&export, st.structured).to_be_bytes());
            if !st.no_zeroes {
                b.extend_from_slice(&[0u8; 124]);
            }
            s.write_all(&b).await?;
            s.flush().await?;
            let base_allocation = meta_for(st, name);
            Ok(Some(Outcome::Transmission(Negotiated {
                export,
                structured: st.structured,
                base_allocation,
            })))
        }
        OPT_ABORT => {
            // Best effort: the client may already be gone.
            let _ = reply(s, opt, REP_ACK, &[]).await;
            let _ = s.flush().await;
            Ok(Some(Outcome::Closed))
        }
        OPT_LIST => {
            if !data.is_empty() {
                reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data").await?;
                return Ok(None);
            }
            let m = mgr.clone();
            let exports = tokio::task::spawn_blocking(move || m.exports())
                .await
                .unwrap_or_default();
            for name in exports {
                let mut b = Vec::with_capacity(4 + name.len());
                b.extend_from_slice(&(name.len() as u32).to_be_bytes());
                b.extend_from_slice(name.as_bytes());
                reply(s, opt, REP_SERVER, &b).await?;
            }
            reply(s, opt, REP_ACK, &[]).await?;
            Ok(None)
        }
        OPT_STRUCTURED_REPLY => {
            if !data.is_empty() {
                reply(
                    s,
                    opt,
                    REP_ERR_INVALID,
                    b"NBD_OPT_STRUCTURED_REPLY takes no data",
                )
                .await?;
            } else {
                st.structured = true;
                reply(s, opt, REP_ACK, &[]).await?;
            }
            Ok(None)
        }
        OPT_INFO | OPT_GO => {
            let mut p = Payload::new(data);
            let parsed = (|| {
                let name = p.string()?;
                let n = p.u16()?;
                let reqs: Vec<u16> = (0..n).map(|_| p.u16()).collect::<Option<_>>()?;
                p.done().then_some((name, reqs))
            })();
            let Some((name, reqs)) = parsed else {
                reply(
                    s,
                    opt,
                    REP_ERR_INVALID,
                    b"malformed NBD_OPT_INFO/GO payload",
                )
                .await?;
                return Ok(None);
            };
            let export = match lookup(mgr, name).await {
                Ok(e) => e,
                Err((code, msg)) => {
                    reply(s, opt, code, msg.as_bytes()).await?;
                    return Ok(None);
                }
            };
            let mut info = Vec::with_capacity(12);
            info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
            info.extend_from_slice(&export.size.to_be_bytes());
            info.extend_from_slice(&transmission_flags(&export, st.structured).to_be_bytes());
            reply(s, opt, REP_INFO, &info).await?;
            if reqs.contains(&INFO_BLOCK_SIZE) {
                let mut b = Vec::with_capacity(14);
                b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes()); // any alignment: the engine patches
                b.extend_from_slice(&export.block_size.to_be_bytes());
                b.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                reply(s, opt, REP_INFO, &b).await?;
            }
            if reqs.contains(&INFO_NAME) {
                let mut b = Vec::with_capacity(2 + name.len());
                b.extend_from_slice(&INFO_NAME.to_be_bytes());
                b.extend_from_slice(name.as_bytes());
                reply(s, opt, REP_INFO, &b).await?;
            }
            reply(s, opt, REP_ACK, &[]).await?;
            if opt == OPT_INFO {
                return Ok(None);
            }
            s.flush().await?;
            let base_allocation = meta_for(st, name);
            Ok(Some(Outcome::Transmission(Negotiated {
                export,
                structured: st.structured,
                base_allocation,
            })))
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let set = opt == OPT_SET_META_CONTEXT;
            if set && !st.structured {
                reply(
                    s,
                    opt,
                    REP_ERR_INVALID,
                    b"negotiate NBD_OPT_STRUCTURED_REPLY first",
                )
                .await?;
                return Ok(None);
            }
            let mut p = Payload::new(data);
            let parsed = (|| {
                let name = p.string()?;
                let n = p.u32()?;
                let mut queries = Vec::new();
                for _ in 0..n {
                    queries.push(p.string()?);
                }
                p.done().then_some((name, queries))
            })();
            let Some((name, queries)) = parsed else {
                reply(s, opt, REP_ERR_INVALID, b"malformed meta context payload").await?;
                return Ok(None);
            };
            if let Err((code, msg)) = lookup(mgr, name).await {
                reply(s, opt, code, msg.as_bytes()).await?;
                return Ok(None);
            }
            let matched = if queries.is_empty() {
                !set // LIST with no query lists everything; SET with none selects nothing
            } else {
                queries
                    .iter()
                    .any(|q| *q == BASE_ALLOCATION || (!set && (*q == "base:" || *q == "base")))
            };
            if matched {
                let mut b = Vec::with_capacity(4 + BASE_ALLOCATION.len());
                b.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                b.extend_from_slice(BASE_ALLOCATION.as_bytes());
                reply(s, opt, REP_META_CONTEXT, &b).await?;
            }
            if set {
                st.meta = Some((name.to_string(), matched));
            }
            reply(s, opt, REP_ACK, &[]).await?;
            Ok(None)
        }
        _ => {
            let msg = format!("option {opt} is not supported");
            reply(s, opt, REP_ERR_UNSUP, msg.as_bytes()).await?;
            Ok(None)
        }
    }
}

/// Whether base:allocation applies to the export finally chosen (contexts are per export).
fn meta_for(st: &State, export: &str) -> bool {
    matches!(&st.meta, Some((n, true)) if n == export)
}
