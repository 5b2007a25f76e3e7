//! Speaks NBD bytes directly over the Unix socket: the hostile and malformed cases real clients
//! never send. After each, the server must still be up and serve the next good client.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
const READ: u16 = 0;
const WRITE: u16 = 1;
const DISC: u16 = 2;
const FLUSH: u16 = 3;
const TRIM: u16 = 4;
const BLOCK_STATUS: u16 = 7;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const SIZE: u64 = 4 << 20;

struct Client {
    s: UnixStream,
}

impl Client {
    /// Connects and completes the greeting (fixed newstyle, no zeroes).
    fn connect(d: &Daemon) -> Client {
        let s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { s };
        assert_eq!(c.u64(), NBDMAGIC);
        assert_eq!(c.u64(), IHAVEOPT);
        let flags = c.u16();
        assert_eq!(
            flags & 3,
            3,
            "server must offer FIXED_NEWSTYLE and NO_ZEROES"
        );
        c.send(&3u32.to_be_bytes());
        c
    }
    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.bytes(8).try_into().unwrap())
    }
    /// True when the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }
    /// Reads one option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), REPLY_MAGIC);
        let opt = self.u32();
        let kind = self.u32();
        let len = self.u32();
        (opt, kind, self.bytes(len as usize))
    }
    fn go_payload(name: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
        b
    }
    /// NBD_OPT_GO; returns (size, transmission flags) or the error reply.
    fn go(&mut self, name: &str) -> Result<(u64, u16), (u32, String)> {
        self.option(OPT_GO, &Self::go_payload(name));
        let mut export = None;
        loop {
            let (opt, kind, data) = self.reply();
            assert_eq!(opt, OPT_GO);
            match kind {
                REP_INFO => {
                    let t = u16::from_be_bytes([data[0], data[1]]);
                    if t == 0 {
                        let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                        export = Some((size, u16::from_be_bytes([data[10], data[11]])));
                    }
                }
                REP_ACK => return Ok(export.expect("NBD_INFO_EXPORT before ACK")),
                k if k & (1 << 31) != 0 => return Err((k, String::from_utf8_lossy(&data).into())),
                k => panic!("unexpected reply {k}"),
            }
        }
    }
    fn request(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = Vec::new();
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.send(&b);
    }
    /// A simple reply: (cookie, error); `data_len` bytes of READ data follow on success.
    fn simple(&mut self, data_len: usize) -> (u64, u32, Vec<u8>) {
        assert_eq!(self.u32(), SIMPLE_MAGIC);
        let err = self.u32();
        let cookie = self.u64();
        let data = if err == 0 {
            self.bytes(data_len)
        } else {
            Vec::new()
        };
        (cookie, err, data)
    }
    /// A structured chunk: (flags, type, cookie, payload).
    fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        assert_eq!(self.u32(), STRUCTURED_MAGIC);
        let flags = self.u16();
        let kind = self.u16();
        let cookie = self.u64();
        let len = self.u32();
        (flags, kind, cookie, self.bytes(len as usize))
    }
}

fn daemon(tag: &str) -> Daemon {
    Daemon::start(tag, &["--create-volume", "default/vm1:4M"])
}

/// A good client still works: write, read back, disconnect cleanly.
fn assert_serves(d: &mut Daemon) {
    assert!(d.alive(), "hlfsd died:\n{}", d.stderr());
    let mut c = Client::connect(d);
    let (size, _) = c.go("default/vm1").expect("GO");
    assert_eq!(size, SIZE);
    c.request(0, WRITE, 1, 8192, 4, b"good");
    assert_eq!(c.simple(0).1, 0);
    c.request(0, READ, 2, 8192, 4, &[]);
    let (cookie, err, data) = c.simple(4);
    assert_eq!((cookie, err, data.as_slice()), (2, 0, &b"good"[..]));
    c.request(0, DISC, 3, 0, 0, &[]);
    assert!(c.closed());
}

#[test]
fn bad_greeting_and_option_magic_disconnect() {
    let mut d = daemon("magic");
    // Unknown client flags.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    // Bad option magic.
    let mut c = Client::connect(&d);
    c.send(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0]);
    assert!(c.closed());
    // Garbage then hang-up mid-header.
    let mut c = Client::connect(&d);
    c.send(&IHAVEOPT.to_be_bytes()[..5]);
    drop(c);
    assert_serves(&mut d);
}

#[test]
fn oversized_and_unknown_options() {
    let mut d = daemon("options");
    let mut c = Client::connect(&d);
    // Unknown option: error, connection goes on.
    c.option(0xabcd, b"xyz");
    let (opt, kind, _) = c.reply();
    assert_eq!((opt, kind), (0xabcd, REP_ERR_UNSUP));
    // STRUCTURED_REPLY with data is invalid; LIST with data too.
    c.option(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(c.reply().1, REP_ERR_INVALID);
    c.option(OPT_LIST, b"x");
    assert_eq!(c.reply().1, REP_ERR_INVALID);
    // A malformed GO (name length beyond the payload).
    c.option(OPT_GO, &[0, 0, 0xff, 0xff, b'a']);
    assert_eq!(c.reply().1, REP_ERR_INVALID);
    // LIST works.
    c.option(OPT_LIST, &[]);
    let (_, kind, data) = c.reply();
    assert_eq!(kind, REP_SERVER);
    assert_eq!(&data[4..], b"default/vm1");
    assert_eq!(c.reply().1, REP_ACK);
    // INFO does not end negotiation; GO afterwards does.
    c.option(OPT_INFO, &Client::go_payload("default/vm1"));
    loop {
        let (_, kind, _) = c.reply();
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_INFO);
    }
    assert_eq!(c.go("default/vm1").unwrap().0, SIZE);
    drop(c);

    // An option claiming 1 GiB: refused without allocating, then hung up.
    let mut c = Client::connect(&d);
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.send(&b);
    let (_, kind, msg) = c.reply();
    assert_eq!(kind, REP_ERR_TOO_BIG, "{}", String::from_utf8_lossy(&msg));
    assert!(c.closed());

    // ABORT is acknowledged.
    let mut c = Client::connect(&d);
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.reply().1, REP_ACK);
    assert!(c.closed());
    assert_serves(&mut d);
}

#[test]
fn unknown_traversal_and_snapshot_exports() {
    let mut d = daemon("exports");
    let mut c = Client::connect(&d);
    for name in [
        "default/nope",
        "nopool/vm1",
        "default/../../etc",
        "../vm1",
        "vm1",
        "",
        "default/vm1/x",
    ] {
        let (code, msg) = c.go(name).expect_err(name);
        assert_eq!(code, REP_ERR_UNKNOWN, "{name}: {msg}");
    }
    let (code, msg) = c.go("default/vm1@snap").unwrap_err();
    assert_eq!(code, REP_ERR_UNKNOWN);
    assert!(msg.contains("snap") && msg.contains("not found"), "{msg}");
    // The connection is still usable after all those refusals.
    assert_eq!(c.go("default/vm1").unwrap().0, SIZE);
    assert!(!d.data_dir().join("pools/etc").exists());
    assert_serves(&mut d);
}

#[test]
fn bad_requests_get_errors_and_the_connection_survives() {
    let mut d = daemon("requests");
    let mut c = Client::connect(&d);
    let (_, flags) = c.go("default/vm1").unwrap();
    assert_eq!(flags & 1, 1, "HAS_FLAGS");
    assert_eq!(flags & 2, 0, "not read-only");
    assert_ne!(flags & (1 << 2), 0, "SEND_FLUSH");
    assert_ne!(flags & (1 << 3), 0, "SEND_FUA");
    assert_ne!(flags & (1 << 5), 0, "SEND_TRIM");
    assert_ne!(flags & (1 << 6), 0, "SEND_WRITE_ZEROES");
    // Read past the end, straddling the end, and with offset+len overflowing u64.
    c.request(0, READ, 10, SIZE, 512, &[]);
    assert_eq!(c.simple(512).1, EINVAL);
    c.request(0, READ, 11, SIZE - 100, 512, &[]);
    assert_eq!(c.simple(512).1, EINVAL);
    c.request(0, READ, 12, u64::MAX - 10, 512, &[]);
    assert_eq!(c.simple(512).1, EINVAL);
    // Write past the end: the payload is consumed, the answer is ENOSPC.
    c.request(0, WRITE, 13, SIZE - 2, 4, b"abcd");
    assert_eq!(c.simple(0), (13, ENOSPC, vec![]));
    // Trim past the end.
    c.request(0, TRIM, 14, SIZE, 4096, &[]);
    assert_eq!(c.simple(0).1, EINVAL);
    // Unknown command, unknown flags.
    c.request(0, 99, 15, 0, 0, &[]);
    assert_eq!(c.simple(0), (15, EINVAL, vec![]));
    c.request(1 << 9, READ, 16, 0, 512, &[]);
    assert_eq!(c.simple(512).1, EINVAL);
    // READ far above the maximum payload: refused, nothing allocated.
    c.request(0, READ, 17, 0, u32::MAX, &[]);
    assert_eq!(c.simple(0).1, EINVAL);
    // BLOCK_STATUS without structured replies.
    c.request(0, BLOCK_STATUS, 18, 0, 4096, &[]);
    assert_eq!(c.simple(0).1, EINVAL);
    // Still fine: write with FUA, flush, read back.
    c.request(1, WRITE, 19, 100, 3, b"xyz");
    assert_eq!(c.simple(0), (19, 0, vec![]));
    c.request(0, FLUSH, 20, 0, 0, &[]);
    assert_eq!(c.simple(0), (20, 0, vec![]));
    c.request(0, READ, 21, 99, 5, &[]);
    assert_eq!(c.simple(5), (21, 0, vec![0, b'x', b'y', b'z', 0]));
    // A WRITE announcing 4 GiB of payload: the server hangs up rather than read or allocate it.
    c.request(0, WRITE, 22, 0, u32::MAX, &[1, 2, 3]);
    assert!(c.closed());
    // A bad request magic also ends the connection.
    let mut c = Client::connect(&d);
    c.go("default/vm1").unwrap();
    c.send(&[0u8; 28]);
    assert!(c.closed());
    assert_serves(&mut d);
}

#[test]
fn structured_replies_block_status_and_pipelining() {
    let mut d = daemon("structured");
    let mut c = Client::connect(&d);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.reply().1, REP_ACK);
    let mut meta = Vec::new();
    meta.extend_from_slice(&11u32.to_be_bytes());
    meta.extend_from_slice(b"default/vm1");
    meta.extend_from_slice(&2u32.to_be_bytes());
    for q in ["qemu:dirty-bitmap:x", "base:allocation"] {
        meta.extend_from_slice(&(q.len() as u32).to_be_bytes());
        meta.extend_from_slice(q.as_bytes());
    }
    c.option(OPT_SET_META_CONTEXT, &meta);
    let (_, kind, data) = c.reply();
    assert_eq!(kind, REP_META_CONTEXT);
    let ctx_id = u32::from_be_bytes(data[..4].try_into().unwrap());
    assert_eq!(&data[4..], b"base:allocation");
    assert_eq!(c.reply().1, REP_ACK);
    let (_, flags) = c.go("default/vm1").unwrap();
    assert_ne!(flags & (1 << 7), 0, "SEND_DF with structured replies");

    // Pipelined: 64 writes of distinct data, then 64 reads, without waiting in between.
    let n = 64u64;
    for i in 0..n {
        c.request(
            0,
            WRITE,
            1000 + i,
            (1 << 20) + i * 4096,
            4096,
            &pattern_bytes(i + 1, 4096),
        );
    }
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (cookie, err, _) = c.simple(0);
        assert_eq!(err, 0);
        assert!(
            seen.insert(cookie, ()).is_none(),
            "duplicate reply for {cookie}"
        );
    }
    assert!((0..n).all(|i| seen.contains_key(&(1000 + i))));
    for i in 0..n {
        c.request(0, READ, 2000 + i, (1 << 20) + i * 4096, 4096, &[]);
    }
    for _ in 0..n {
        let (flags, kind, cookie, payload) = c.chunk();
        assert_eq!(
            (flags & 1, kind),
            (1, 1),
            "a single OFFSET_DATA chunk with DONE"
        );
        let i = cookie - 2000;
        assert_eq!(
            u64::from_be_bytes(payload[..8].try_into().unwrap()),
            (1 << 20) + i * 4096
        );
        assert!(
            payload[8..] == pattern_bytes(i + 1, 4096)[..],
            "data for read {i}"
        );
    }
    // A structured error for READ past the end, with a message.
    c.request(0, READ, 3000, SIZE, 1, &[]);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!((flags & 1, kind, cookie), (1, (1 << 15) | 1, 3000));
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), EINVAL);
    assert!(String::from_utf8_lossy(&payload[6..]).contains("beyond the end"));
    // Block status: [0,1M) hole, [1M, 1M+256K) data, rest hole.
    c.request(0, BLOCK_STATUS, 3001, 0, SIZE as u32, &[]);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!((flags & 1, kind, cookie), (1, 5, 3001));
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), ctx_id);
    let desc: Vec<(u32, u32)> = payload[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[..4].try_into().unwrap()),
                u32::from_be_bytes(d[4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        desc,
        vec![
            (1 << 20, 3),
            (256 << 10, 0),
            ((SIZE as u32) - (1 << 20) - (256 << 10), 3)
        ]
    );
    // REQ_ONE gives a single descriptor.
    c.request(1 << 3, BLOCK_STATUS, 3002, 0, SIZE as u32, &[]);
    let (_, _, _, payload) = c.chunk();
    assert_eq!(payload.len(), 12);
    // Block status past the end.
    c.request(0, BLOCK_STATUS, 3003, SIZE - 4096, 8192, &[]);
    let (_, kind, _, payload) = c.chunk();
    assert_eq!(kind, (1 << 15) | 1);
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), EINVAL);
    c.request(0, DISC, 3004, 0, 0, &[]);
    assert!(c.closed());
    assert_serves(&mut d);
}
