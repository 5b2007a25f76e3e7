//! The transmission phase. A reader loop takes requests off the socket, checks them, and hands
//! each to a blocking task that runs it on the shared engine; replies go to a single writer task
//! through a channel, so they leave in completion order (out of order, as NBD allows).
//!
//! Memory is bounded per connection: a request holds a slot and its payload bytes in two
//! semaphores from before its payload is read until its reply is written. A WRITE whose payload
//! is over the limit cannot be skipped without reading it, so that one closes the connection.

use super::handshake::{Export, Negotiated};
use super::proto::*;
use crate::manager::SharedVolume;
use hlfs_engine::Volume;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Requests in flight per connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Payload bytes (READ and WRITE) in flight per connection.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Block status descriptors in one reply (the spec lets a server answer for less than asked).
const MAX_DESCRIPTORS: usize = 16 * 1024;

/// An encoded reply and the budget it releases once written.
struct Outgoing {
    bytes: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// Per-connection facts every request needs.
#[derive(Clone)]
struct Conn {
    volume: Arc<SharedVolume>,
    /// Serving this snapshot of the volume (read-only) rather than its head.
    snapshot: Option<String>,
    size: u64,
    read_only: bool,
    structured: bool,
    base_allocation: bool,
}

/// An error to send back: NBD errno and a message (sent with structured replies, logged).
struct Fail(u32, String);

fn engine_errno(e: &hlfs_engine::Error) -> u32 {
    use hlfs_engine::Error as E;
    match e {
        E::OutOfRange { .. } | E::Invalid(_) => EINVAL,
        E::ReadOnly(_) => EPERM,
        E::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => ENOSPC,
        _ => EIO,
    }
}

fn run<T>(c: &Conn, f: impl FnOnce(&mut Volume) -> hlfs_engine::Result<T>) -> Result<T, Fail> {
    match c.volume.with(f) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => {
            if matches!(engine_errno(&e), EIO | ENOSPC) {
                tracing::error!(volume = c.volume.name(), error = %e, "I/O error");
            }
            Err(Fail(engine_errno(&e), e.to_string()))
        }
        None => Err(Fail(ESHUTDOWN, "the server is shutting down".into())),
    }
}

/// Serves requests until the client disconnects, breaks the protocol, or shutdown is signalled.
/// In-flight requests are always finished and answered before returning.
pub async fn serve<R, W>(
    mut rd: R,
    wr: W,
    neg: Negotiated,
    global_budget: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Negotiated {
        export:
            Export {
                name,
                volume,
                size,
                read_only,
                snapshot,
                ..
            },
        structured,
        base_allocation,
    } = neg;
    let conn = Conn {
        volume,
        snapshot,
        size,
        read_only,
        structured,
        base_allocation,
    };
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(write_replies(wr, rx));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    tracing::debug!(export = %name, structured, base_allocation, "transmission");

    let result: io::Result<()> = loop {
        if tx.is_closed() {
            break Ok(()); // the writer failed: the client is gone
        }
        let mut hdr = [0u8; REQUEST_LEN];
        tokio::select! {
            r = rd.read_exact(&mut hdr) => match r {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(export = %name, "client closed the connection");
                    break Ok(());
                }
                Err(e) => break Err(e),
            },
            _ = shutdown.changed() => break Ok(()),
        }
        let Some(req) = Request::decode(&hdr) else {
            tracing::warn!(export = %name, "bad request magic; disconnecting");
            break Ok(());
        };
        if req.kind == CMD_DISC {
            tracing::debug!(export = %name, "NBD_CMD_DISC");
            break Ok(());
        }
        let payload_len = match req.kind {
            CMD_READ | CMD_WRITE => req.len,
            _ => 0,
        };
        if payload_len > MAX_PAYLOAD && req.kind == CMD_WRITE {
            tracing::warn!(export = %name, len = req.len, "WRITE larger than {MAX_PAYLOAD} bytes; disconnecting");
            break Ok(());
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        // Always the connection's budget first, then the global one: no lock-order cycle.
        let reserved = if payload_len > 0 && payload_len <= MAX_PAYLOAD {
            let mine = budget.clone().acquire_many_owned(payload_len).await;
            let all = global_budget.clone().acquire_many_owned(payload_len).await;
            match (mine, all) {
                (Ok(a), Ok(b)) => Some((a, b)),
                _ => break Ok(()),
            }
        } else {
            None
        };
        let mut data = Vec::new();
        if req.kind == CMD_WRITE {
            data = vec![0u8; req.len as usize];
            if let Err(e) = rd.read_exact(&mut data).await {
                break Err(e);
            }
        }
        let c = conn.clone();
        let tx = tx.clone();
        let check = validate(&c, &req);
        tokio::task::spawn_blocking(move || {
            let bytes = match check {
                Ok(()) => execute(&c, &req, data),
                Err(f) => error_reply(&c, &req, f),
            };
            // A closed channel means the client is gone: nothing left to tell it.
            let _ = tx.send(Outgoing {
                bytes,
                _slot: slot,
                _bytes: reserved,
            });
        });
    };
    drop(tx);
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(export = %name, error = %e, "writing replies failed"),
        Err(e) => tracing::error!(export = %name, error = %e, "reply writer panicked"),
    }
    result
}

/// Writes replies as they come, flushing whenever no more are ready.
async fn write_replies<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(256 << 10, w);
    while let Some(m) = rx.recv().await {
        w.write_all(&m.bytes).await?;
        drop(m);
        while let Ok(m) = rx.try_recv() {
            w.write_all(&m.bytes).await?;
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// Protocol-level checks that need no engine call.
fn validate(c: &Conn, r: &Request) -> Result<(), Fail> {
    let einval = |m: String| Err(Fail(EINVAL, m));
    let allowed = match r.kind {
        CMD_READ => {
            if c.structured {
                CMD_FLAG_DF
            } else {
                0
            }
        }
        CMD_WRITE => CMD_FLAG_FUA,
        CMD_FLUSH => 0,
        CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
        k => return einval(format!("command {k} ({}) is not supported", cmd_name(k))),
    };
    if r.flags & !allowed != 0 {
        return einval(format!(
            "flags {:#x} not valid for {}",
            r.flags,
            cmd_name(r.kind)
        ));
    }
    if r.kind == CMD_READ && r.len > MAX_PAYLOAD {
        return einval(format!(
            "READ of {} bytes exceeds the maximum of {MAX_PAYLOAD}",
            r.len
        ));
    }
    if c.read_only && matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return Err(Fail(EPERM, "the export is read-only".into()));
    }
    if r.kind == CMD_FLUSH {
        return Ok(());
    }
    if r.offset
        .checked_add(u64::from(r.len))
        .is_none_or(|end| end > c.size)
    {
        let code = if matches!(r.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            ENOSPC
        } else {
            EINVAL
        };
        return Err(Fail(
            code,
            format!(
                "{} of {}+{} is beyond the end of the export ({} bytes)",
                cmd_name(r.kind),
                r.offset,
                r.len,
                c.size
            ),
        ));
    }
    if r.kind == CMD_BLOCK_STATUS {
        if !c.structured || !c.base_allocation {
            return einval(
                "BLOCK_STATUS needs structured replies and the base:allocation context".into(),
            );
        }
        if r.len == 0 {
            return einval("BLOCK_STATUS of zero length".into());
        }
    }
    Ok(())
}

/// Runs a validated request and encodes its reply.
fn execute(c: &Conn, r: &Request, data: Vec<u8>) -> Vec<u8> {
    let fua = r.flags & CMD_FLAG_FUA != 0;
    let done = |res: Result<(), Fail>| match res {
        Ok(()) => simple_reply(r.cookie, 0).to_vec(),
        Err(f) => error_reply(c, r, f),
    };
    match r.kind {
        CMD_READ => read(c, r),
        CMD_WRITE => done(run(c, |v| {
            v.write(r.offset, &data)?;
            if fua {
                v.flush()?;
            }
            Ok(())
        })),
        CMD_FLUSH => done(run(c, |v| v.flush())),
        CMD_TRIM | CMD_WRITE_ZEROES => done(run(c, |v| {
            if r.kind == CMD_TRIM {
                v.trim(r.offset, u64::from(r.len))?;
            } else {
                v.write_zeroes(r.offset, u64::from(r.len))?;
            }
            if fua {
                v.flush()?;
            }
            Ok(())
        })),
        CMD_BLOCK_STATUS => block_status(c, r),
        _ => error_reply(c, r, Fail(EINVAL, "unsupported command".into())),
    }
}

fn read(c: &Conn, r: &Request) -> Vec<u8> {
    let len = r.len as usize;
    if c.structured {
        if len == 0 {
            return chunk_header(r.cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0).to_vec();
        }
        // Header, offset, then data, in one buffer: one allocation, one write.
        let mut buf = vec![0u8; 20 + 8 + len];
        match run(c, |v| read_at(c, v, r.offset, &mut buf[28..])) {
            Ok(()) => {
                buf[..20].copy_from_slice(&chunk_header(
                    r.cookie,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    8 + r.len,
                ));
                buf[20..28].copy_from_slice(&r.offset.to_be_bytes());
                buf
            }
            Err(f) => error_reply(c, r, f),
        }
    } else {
        let mut buf = vec![0u8; 16 + len];
        match run(c, |v| read_at(c, v, r.offset, &mut buf[16..])) {
            Ok(()) => {
                buf[..16].copy_from_slice(&simple_reply(r.cookie, 0));
                buf
            }
            Err(f) => error_reply(c, r, f),
        }
    }
}

/// Reads from the head, or from the snapshot the connection serves.
fn read_at(c: &Conn, v: &mut Volume, offset: u64, buf: &mut [u8]) -> hlfs_engine::Result<()> {
    match &c.snapshot {
        Some(s) => v.read_snapshot(s, offset, buf),
        None => v.read(offset, buf),
    }
}

fn block_status(c: &Conn, r: &Request) -> Vec<u8> {
    let extents = match run(c, |v| match &c.snapshot {
        Some(s) => v.snapshot_allocation(s, r.offset, u64::from(r.len)),
        None => v.allocation(r.offset, u64::from(r.len)),
    }) {
        Ok(x) => x,
        Err(f) => return error_reply(c, r, f),
    };
    let max = if r.flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_DESCRIPTORS
    };
    let mut payload = Vec::with_capacity(4 + 8 * extents.len().min(max));
    payload.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (_, len, mapped) in extents.into_iter().take(max) {
        // Each piece lies inside the request, whose length is a u32.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let flags = if mapped { 0 } else { STATE_HOLE | STATE_ZERO };
        payload.extend_from_slice(&len.to_be_bytes());
        payload.extend_from_slice(&flags.to_be_bytes());
    }
    if payload.len() == 4 {
        return error_reply(c, r, Fail(EIO, "no allocation information".into()));
    }
    let mut out = chunk_header(
        r.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        payload.len() as u32,
    )
    .to_vec();
    out.extend_from_slice(&payload);
    out
}

/// An error reply: a structured ERROR chunk with the message when structured replies are on
/// (required for READ), else a simple reply with the errno.
fn error_reply(c: &Conn, r: &Request, Fail(code, msg): Fail) -> Vec<u8> {
    tracing::debug!(
        volume = c.volume.name(),
        cmd = cmd_name(r.kind),
        offset = r.offset,
        len = r.len,
        code,
        "{msg}"
    );
    if !c.structured {
        return simple_reply(r.cookie, code).to_vec();
    }
    let mut cut = msg.len().min(4096);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let msg = &msg.as_bytes()[..cut];
    let mut out = chunk_header(
        r.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + msg.len() as u32,
    )
    .to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}
