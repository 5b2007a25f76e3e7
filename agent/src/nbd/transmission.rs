//! The transmission phase. A reader loop takes requests off the socket, checks them, and queues
//! them for the connection's workers: a few blocking tasks that drain the queue in batches (a
//! run of writes under one exclusive lock, a run of reads under one shared lock, so reads run in
//! parallel and a busy queue costs no thread wake-up per request). A flush hands data to the
//! backend under the lock and waits for the disk outside it (group commit). Replies go to a
//! single writer task through a channel, so they leave in completion order (out of order, as NBD
//! allows).
//!
//! Memory is bounded per connection and over all of them: a request holds a slot and its
//! payload bytes (a READ's reply, a WRITE's data, a BLOCK_STATUS reply's maximum) from before
//! its payload is read until its reply is written, in the connection's budget, its peer's and
//! the global one (see `crate::limits::ByteBudget`). When one is spent the reader stops taking
//! requests off the socket (back-pressure): a client that does not read its replies holds at
//! most its budgets, never more. A WRITE whose payload is over the limit cannot be skipped
//! without reading it, so that one closes the connection.

use super::handshake::{Export, Negotiated};
use super::proto::*;
use crate::limits::{PeerBudget, Reserved};
use crate::manager::SharedVolume;
use hlfs_engine::{EncodedWrite, Encoder, Volume};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Requests in flight per connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Payload bytes (READ and WRITE) in flight per connection.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Block status descriptors in one reply (the spec lets a server answer for less than asked).
const MAX_DESCRIPTORS: usize = 16 * 1024;
/// Bytes a BLOCK_STATUS holds in the budgets: its largest reply.
const BLOCK_STATUS_RESERVE: u32 = (8 * MAX_DESCRIPTORS + 64) as u32;
/// Blocking workers per connection: enough to keep both reads in flight on every core and a
/// flush's disk sync from stalling the writes queued behind it.
const WORKERS: usize = 4;
/// Requests a worker takes from the queue at once.
const BATCH: usize = 32;
/// Payload bytes a worker takes from the queue at once (beyond its first request).
const BATCH_BYTES: usize = 256 << 10;
/// Largest write run on the connection's reader task rather than a worker.
const INLINE_MAX: u32 = 64 << 10;

/// A checked request, its payload, and the budget it holds until its reply is written.
struct Job {
    req: Request,
    data: Vec<u8>,
    /// A WRITE's records, built outside the volume's lock.
    encoded: Option<EncodedWrite>,
    check: Result<(), Fail>,
    slot: OwnedSemaphorePermit,
    reserved: Option<(OwnedSemaphorePermit, Reserved)>,
}

/// What a connection draws on from the server-wide limits.
pub struct ConnLimits {
    /// Payload bytes of its peer and of the server.
    pub budget: PeerBudget,
    /// Read reply buffers, shared by every connection.
    pub pool: Arc<ReplyPool>,
    /// Close the connection after this long without a request (and none in flight).
    pub idle_timeout: Option<Duration>,
}

/// Requests waiting for a worker, and how many workers are draining them.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    workers: usize,
}

/// What a connection's workers share.
struct Shared {
    conn: Conn,
    /// None if the volume was already closed (then every request fails anyway).
    encoder: Option<Encoder>,
    /// Small requests may run on the reader task (an async runtime thread): only when all of
    /// the volume's I/O is local. HDFS calls block on the backend's own runtime, which cannot
    /// be entered from a runtime thread.
    inline_ok: bool,
    queue: Mutex<Queue>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply(&self, job: Job, bytes: Vec<u8>) {
        // A closed channel means the client is gone: nothing left to tell it.
        let _ = self.tx.send(Outgoing {
            bytes,
            _slot: job.slot,
            _bytes: job.reserved,
        });
    }
}

/// Queues a job; starts a worker when none is idle enough to take it soon.
fn submit(shared: &Arc<Shared>, job: Job) {
    let start = {
        let mut q = shared.queue();
        q.jobs.push_back(job);
        let start = q.workers < WORKERS && q.jobs.len() > q.workers;
        if start {
            q.workers += 1;
        }
        start
    };
    if start {
        let s = shared.clone();
        tokio::task::spawn_blocking(move || drain(&s));
    }
}

/// A worker: takes batches until the queue is empty, then exits (the count is kept under the
/// queue's lock, so a job is never left without a worker).
fn drain(shared: &Shared) {
    // No lingering when the queue is empty: measured, spinning or yielding for the next request
    // cost more (CPU taken from the client on 2 cores, context switches) than starting a worker.
    loop {
        let batch: Vec<Job> = {
            let mut q = shared.queue();
            if q.jobs.is_empty() {
                q.workers -= 1;
                return;
            }
            // Split what is queued among the workers, so reads and the encoding of writes
            // spread over the cores: a share of the count, and no more than BATCH_BYTES of
            // payload (large requests go one or two at a time).
            let share = q.jobs.len().div_ceil(q.workers.max(1)).min(BATCH);
            let mut bytes = 0usize;
            let n = q
                .jobs
                .iter()
                .take(share)
                .take_while(|j| {
                    let first = bytes == 0;
                    bytes += j.req.len as usize + 1;
                    first || bytes <= BATCH_BYTES
                })
                .count();
            q.jobs.drain(..n).collect()
        };
        run_batch(shared, batch);
    }
}

/// Reads exactly `len` payload bytes into `data` without zero-filling it first (a 1 MiB write
/// would otherwise pay a memset before the copy).
async fn read_payload<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    data: &mut Vec<u8>,
    len: usize,
) -> std::io::Result<()> {
    data.reserve_exact(len);
    while data.len() < len {
        let mut part = (&mut *rd).take((len - data.len()) as u64);
        if part.read_buf(data).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Whether a request changes the volume (runs under the exclusive lock).
fn mutates(j: &Job) -> bool {
    j.check.is_ok()
        && matches!(
            j.req.kind,
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_FLUSH
        )
}

/// Runs a batch in order: each run of mutating requests under one exclusive lock, each run of
/// the others (reads, block status, rejected requests) under one shared lock.
fn run_batch(shared: &Shared, batch: Vec<Job>) {
    let c = &shared.conn;
    let mut jobs = batch.into_iter().peekable();
    while let Some(first) = jobs.next() {
        let exclusive = mutates(&first);
        let mut run = vec![first];
        while let Some(j) = jobs.next_if(|j| mutates(j) == exclusive) {
            run.push(j);
        }
        if exclusive {
            run_mutations(shared, run);
        } else {
            let mut pending = Some(run);
            let done = c.volume.read(|v| {
                pending
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|j| {
                        let bytes = match &j.check {
                            Ok(()) => execute_read(c, v, &j.req),
                            Err(f) => error_reply(c, &j.req, Fail(f.0, f.1.clone())),
                        };
                        (j, bytes)
                    })
                    .collect::<Vec<_>>()
            });
            match done {
                Some(done) => done.into_iter().for_each(|(j, b)| shared.reply(j, b)),
                None => shutting_down(shared, pending.unwrap_or_default()),
            }
        }
    }
}

/// Answers `jobs` once the volume is closed (shutdown).
fn shutting_down(shared: &Shared, jobs: Vec<Job>) {
    let c = &shared.conn;
    for j in jobs {
        let bytes = error_reply(
            c,
            &j.req,
            Fail(ESHUTDOWN, "the server is shutting down".into()),
        );
        shared.reply(j, bytes);
    }
}

/// Applies a WRITE (pre-encoded if `encoded` is given), TRIM or WRITE_ZEROES; anything else
/// (FLUSH) changes nothing here.
fn apply(
    v: &mut Volume,
    r: &Request,
    data: &[u8],
    encoded: Option<EncodedWrite>,
) -> hlfs_engine::Result<()> {
    match (r.kind, encoded) {
        (CMD_WRITE, Some(enc)) => v.write_encoded(enc),
        (CMD_WRITE, None) => v.write(r.offset, data),
        (CMD_TRIM, _) => v.trim(r.offset, u64::from(r.len)),
        (CMD_WRITE_ZEROES, _) => v.write_zeroes(r.offset, u64::from(r.len)),
        _ => Ok(()),
    }
}

/// Encodes a WRITE's payload, handing its buffer to the records (the engine writes it to the
/// segment file from there, uncopied); a write that is not block-aligned keeps its payload.
fn encode_job(enc: &Encoder, job: &mut Job) {
    match enc.encode_owned(job.req.offset, std::mem::take(&mut job.data)) {
        Ok(e) => job.encoded = Some(e),
        Err(data) => job.data = data,
    }
}

/// Runs a small request on the reader task, when the volume's I/O is local, nothing is
/// queued and the lock is free: a write without FUA is a memory copy in the engine and a read
/// a lookup and a unit from the page cache, cheaper than the wake-ups of a hand-off to a
/// worker and back. Returns the job if it must go to a worker after all.
fn run_inline(shared: &Shared, mut job: Job) -> Option<Job> {
    let r = &job.req;
    let small_write =
        matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) && r.flags & CMD_FLAG_FUA == 0;
    if !shared.inline_ok
        || job.check.is_err()
        || r.len > INLINE_MAX
        || !(small_write || r.kind == CMD_READ)
        || !shared.queue().jobs.is_empty()
    {
        return Some(job);
    }
    let c = &shared.conn;
    if r.kind == CMD_READ {
        return match c.volume.try_read(|v| execute_read(c, v, &job.req)) {
            Some(bytes) => {
                shared.reply(job, bytes);
                None
            }
            None => Some(job), // a writer holds the volume: a worker takes it
        };
    }
    if r.kind == CMD_WRITE {
        if let Some(e) = &shared.encoder {
            encode_job(e, &mut job);
        }
    }
    let Some(res) = c
        .volume
        .try_with(|v| apply(v, &job.req, &job.data, job.encoded.take()))
    else {
        return Some(job); // busy: a worker takes it, encoded already
    };
    c.volume.mark_changed();
    let bytes = match res {
        Ok(()) => simple_reply(job.req.cookie, 0).to_vec(),
        Err(e) => error_reply(c, &job.req, engine_fail(c, &e)),
    };
    shared.reply(job, bytes);
    None
}

/// Writes, trims, zeroes and flushes under one exclusive lock. Writes are answered at once;
/// a flush (or FUA) is answered after its disk sync, which runs once the lock is released.
fn run_mutations(shared: &Shared, run: Vec<Job>) {
    let c = &shared.conn;
    let mut waiting: Vec<(Job, Result<hlfs_engine::FlushWait, Fail>)> = Vec::new();
    let mut run = run;
    // The CPU work of writes (zero detection, LZ4, checksums) before taking the lock, so that
    // workers do it in parallel.
    if let Some(enc) = &shared.encoder {
        for j in run.iter_mut().filter(|j| j.req.kind == CMD_WRITE) {
            if j.encoded.is_none() {
                encode_job(enc, j);
            }
        }
    }
    let mut pending = Some(run);
    let applied = c.volume.with(|v| {
        for mut j in pending.take().unwrap_or_default() {
            let r = &j.req;
            let fua = r.flags & CMD_FLAG_FUA != 0 || r.kind == CMD_FLUSH;
            let res = apply(v, r, &j.data, j.encoded.take());
            match res {
                Err(e) => {
                    let bytes = error_reply(c, r, engine_fail(c, &e));
                    shared.reply(j, bytes);
                }
                Ok(()) if fua => {
                    let w = v.flush_begin().map_err(|e| engine_fail(c, &e));
                    waiting.push((j, w));
                }
                Ok(()) => {
                    let bytes = simple_reply(r.cookie, 0).to_vec();
                    shared.reply(j, bytes);
                }
            }
        }
    });
    if applied.is_none() {
        shutting_down(shared, pending.unwrap_or_default());
        return;
    }
    c.volume.mark_changed();
    for (j, w) in waiting {
        let res = w.and_then(|w| match w.wait() {
            Ok(()) => Ok(()),
            Err(e) => {
                let f = engine_fail(c, &e);
                // Record the failure: the volume refuses writes until reopened.
                let _ = c.volume.with(|v| v.flush_end(Err(e)));
                Err(f)
            }
        });
        let bytes = match res {
            Ok(()) => simple_reply(j.req.cookie, 0).to_vec(),
            Err(f) => error_reply(c, &j.req, f),
        };
        shared.reply(j, bytes);
    }
}

/// An encoded reply and the budget it releases once written.
struct Outgoing {
    bytes: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<(OwnedSemaphorePermit, Reserved)>,
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
    /// Read reply buffers, given back by the reply writer (shared by all connections).
    pool: Arc<ReplyPool>,
}

/// Reply buffers of large reads, reused: a fresh 1 MiB buffer costs a zero-fill (and page
/// faults) before the volume overwrites every byte of it. One pool for every connection, so
/// that what it keeps is bounded whatever the number of connections (it was 32 MiB for each).
pub struct ReplyPool {
    bufs: Mutex<(Vec<Vec<u8>>, usize)>,
    max_bytes: usize,
}

impl ReplyPool {
    const MIN: usize = 64 << 10;
    /// Larger (rare) replies are not kept.
    const MAX: usize = (4 << 20) + 64;

    /// A pool keeping buffers of at most `max_bytes` in all.
    pub fn new(max_bytes: usize) -> ReplyPool {
        ReplyPool {
            bufs: Mutex::default(),
            max_bytes,
        }
    }

    /// A buffer of `len` bytes whose contents are left over: the caller overwrites them all.
    fn get(&self, len: usize) -> Vec<u8> {
        if len < Self::MIN {
            return vec![0; len];
        }
        let mut b = {
            let mut p = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
            match p.0.pop() {
                Some(b) => {
                    p.1 -= b.capacity();
                    b
                }
                None => Vec::new(),
            }
        };
        if b.len() < len {
            b.resize(len, 0);
        }
        b.truncate(len);
        b
    }

    fn put(&self, b: Vec<u8>) {
        let cap = b.capacity();
        if (Self::MIN..=Self::MAX).contains(&cap) {
            let mut p = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
            if p.1 + cap <= self.max_bytes {
                p.1 += cap;
                p.0.push(b);
            }
        }
    }
}

/// An error to send back: NBD errno and a message (sent with structured replies, logged).
struct Fail(u32, String);

fn engine_errno(e: &hlfs_engine::Error) -> u32 {
    use hlfs_engine::Error as E;
    match e {
        E::OutOfRange { .. } | E::Invalid(_) => EINVAL,
        E::ReadOnly(_) => EPERM,
        // A full disk, also while the volume waits for space to recover (`Failed`): the client
        // may pause and retry (QEMU's werror=enospc), where EIO fails the guest's I/O.
        e if e.is_no_space() => ENOSPC,
        _ => EIO,
    }
}

/// The NBD error for an engine error; I/O failures are logged.
fn engine_fail(c: &Conn, e: &hlfs_engine::Error) -> Fail {
    if matches!(engine_errno(e), EIO | ENOSPC) {
        tracing::error!(volume = c.volume.name(), error = %e, "I/O error");
    }
    Fail(engine_errno(e), e.to_string())
}

/// Serves requests until the client disconnects, breaks the protocol, or shutdown is signalled.
/// In-flight requests are always finished and answered before returning.
pub async fn serve<R, W>(
    rd: R,
    wr: W,
    neg: Negotiated,
    limits: ConnLimits,
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
        pool: limits.pool.clone(),
    };
    // Buffered: one read from the socket brings in many pipelined requests, not one syscall
    // per header and another per payload.
    let mut rd = tokio::io::BufReader::with_capacity(256 << 10, rd);
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(write_replies(wr, rx, conn.pool.clone()));
    let encoder = conn.volume.read(|v| v.encoder());
    let inline_ok = conn.volume.read(|v| v.is_local()).unwrap_or(false);
    let shared = Arc::new(Shared {
        conn,
        encoder,
        inline_ok,
        queue: Mutex::new(Queue::default()),
        tx,
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    tracing::debug!(export = %name, structured, base_allocation, "transmission");

    let result: io::Result<()> = loop {
        if shared.tx.is_closed() {
            break Ok(()); // the writer failed: the client is gone
        }
        if let Some(idle) = limits.idle_timeout {
            // Wait for the next request; a connection with nothing in flight that stays
            // silent for `idle` is closed (off by default: see docs/nbd.md).
            let idle_out = loop {
                tokio::select! {
                    _ = rd.fill_buf() => break false,
                    _ = tokio::time::sleep(idle) => {
                        if slots.available_permits() == MAX_IN_FLIGHT {
                            break true;
                        }
                    }
                    _ = shutdown.changed() => break true,
                }
            };
            if idle_out {
                if !*shutdown.borrow() {
                    tracing::info!(export = %name, "idle for {idle:?}; disconnecting");
                }
                break Ok(());
            }
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
        let reserve = match req.kind {
            CMD_BLOCK_STATUS => BLOCK_STATUS_RESERVE,
            _ if payload_len <= MAX_PAYLOAD => payload_len,
            _ => 0, // a READ refused by `validate`
        };
        if payload_len > MAX_PAYLOAD && req.kind == CMD_WRITE {
            tracing::warn!(export = %name, len = req.len, "WRITE larger than {MAX_PAYLOAD} bytes; disconnecting");
            break Ok(());
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        // Always the connection's budget first, then its peer's and the global ones (in
        // `PeerBudget::acquire`): no lock-order cycle. Waiting here is the back-pressure.
        let reserved = if reserve > 0 {
            let Ok(mine) = budget.clone().acquire_many_owned(reserve).await else {
                break Ok(());
            };
            let Some(shared) = limits.budget.acquire(reserve).await else {
                break Ok(());
            };
            Some((mine, shared))
        } else {
            None
        };
        let mut data = Vec::new();
        if req.kind == CMD_WRITE {
            if let Err(e) = read_payload(&mut rd, &mut data, req.len as usize).await {
                break Err(e);
            }
        }
        let check = validate(&shared.conn, &req);
        let job = Job {
            req,
            data,
            encoded: None,
            check,
            slot,
            reserved,
        };
        if let Some(job) = run_inline(&shared, job) {
            submit(&shared, job);
        }
    };
    // The writer ends once the workers, which hold the last senders, have answered everything.
    drop(shared);
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
    pool: Arc<ReplyPool>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(256 << 10, w);
    while let Some(m) = rx.recv().await {
        w.write_all(&m.bytes).await?;
        pool.put(m.bytes);
        while let Ok(m) = rx.try_recv() {
            w.write_all(&m.bytes).await?;
            pool.put(m.bytes);
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

/// Runs a validated non-mutating request (READ, BLOCK_STATUS) and encodes its reply.
fn execute_read(c: &Conn, v: &Volume, r: &Request) -> Vec<u8> {
    match r.kind {
        CMD_READ => read(c, v, r),
        CMD_BLOCK_STATUS => block_status(c, v, r),
        _ => error_reply(c, r, Fail(EINVAL, "unsupported command".into())),
    }
}

fn read(c: &Conn, v: &Volume, r: &Request) -> Vec<u8> {
    let len = r.len as usize;
    if c.structured {
        if len == 0 {
            return chunk_header(r.cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0).to_vec();
        }
        // Header, offset, then data, in one buffer: one allocation, one write.
        let mut buf = c.pool.get(20 + 8 + len);
        match read_at(c, v, r.offset, &mut buf[28..]).map_err(|e| engine_fail(c, &e)) {
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
        let mut buf = c.pool.get(16 + len);
        match read_at(c, v, r.offset, &mut buf[16..]).map_err(|e| engine_fail(c, &e)) {
            Ok(()) => {
                buf[..16].copy_from_slice(&simple_reply(r.cookie, 0));
                buf
            }
            Err(f) => error_reply(c, r, f),
        }
    }
}

/// Reads from the head, or from the snapshot the connection serves.
fn read_at(c: &Conn, v: &Volume, offset: u64, buf: &mut [u8]) -> hlfs_engine::Result<()> {
    match &c.snapshot {
        Some(s) => v.read_snapshot(s, offset, buf),
        None => v.read(offset, buf),
    }
}

fn block_status(c: &Conn, v: &Volume, r: &Request) -> Vec<u8> {
    let extents = match &c.snapshot {
        Some(s) => v.snapshot_allocation(s, r.offset, u64::from(r.len)),
        None => v.allocation(r.offset, u64::from(r.len)),
    };
    let extents = match extents {
        Ok(x) => x,
        Err(e) => return error_reply(c, r, engine_fail(c, &e)),
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
