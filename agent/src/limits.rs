//! Connection and memory limits shared by the NBD server and the D-Bus p2p socket, so that no
//! local user (nor a remote TCP peer) can lock others out or starve the data path.
//!
//! - [`Admission`]: connections in all and per peer (uid over Unix sockets, IP address over
//!   TCP), with a reserve of slots only root (uid 0) may take: an unprivileged flood fills the
//!   rest, never the reserve, so root always gets in.
//! - [`ByteBudget`]: NBD payload bytes in flight over all connections, per peer, and with the
//!   same reserve for root. A connection that cannot get budget stops reading requests
//!   (back-pressure) rather than allocate.
//! - [`raise_nofile`] and [`LimitSettings::resolve`]: the descriptor limit is raised to its hard
//!   limit at start and the default caps are sized from it, leaving most descriptors to the
//!   data path (segment files, journals, sockets to HDFS).
//!
//! See docs/nbd.md and docs/dbus.md for the figures and why they were chosen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who a connection comes from, for per-peer caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// A Unix-socket peer, by its uid (SO_PEERCRED).
    Uid(u32),
    /// A TCP peer, by its address (IPv4-mapped IPv6 addresses count as IPv4).
    Ip(IpAddr),
}

impl PeerKey {
    /// A TCP peer's key.
    pub fn ip(a: IpAddr) -> PeerKey {
        PeerKey::Ip(a.to_canonical())
    }

    /// Root over a Unix socket: may use the reserve, has no per-peer cap.
    pub fn privileged(&self) -> bool {
        matches!(self, PeerKey::Uid(0))
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerKey::Uid(u) => write!(f, "uid {u}"),
            PeerKey::Ip(a) => write!(f, "{a}"),
        }
    }
}

/// Caps of one kind of connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections in all (root included).
    pub total: usize,
    /// Connections of one unprivileged peer.
    pub per_peer: usize,
    /// Of `total`, slots only root may use.
    pub root_reserve: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot unprivileged peers may use is taken.
    Full,
    /// This peer has its maximum.
    PeerFull,
}

/// Counts connections against [`Caps`].
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    state: Mutex<AdmissionState>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    total: usize,
    peers: HashMap<PeerKey, usize>,
}

/// A connection's slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    adm: Arc<Admission>,
    key: PeerKey,
}

impl Admission {
    pub fn new(caps: Caps) -> Arc<Admission> {
        Arc::new(Admission {
            caps,
            state: Mutex::default(),
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Why a connection was refused, for the log: `others` names who shares the unprivileged
    /// slots ("users", "peers"), `who` the refused peer.
    pub fn refusal(&self, why: Refused, others: &str, who: &str) -> String {
        match why {
            Refused::Full => format!(
                "all {} connections unprivileged {others} may use are taken",
                self.caps.total - self.caps.root_reserve
            ),
            Refused::PeerFull => format!("{who} has its maximum of {}", self.caps.per_peer),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `key`, or says why not.
    pub fn try_admit(self: &Arc<Self>, key: PeerKey) -> Result<Slot, Refused> {
        let mut st = self.state();
        if key.privileged() {
            if st.total >= self.caps.total {
                return Err(Refused::Full);
            }
        } else {
            if st.total >= self.caps.total.saturating_sub(self.caps.root_reserve) {
                return Err(Refused::Full);
            }
            if st.peers.get(&key).copied().unwrap_or(0) >= self.caps.per_peer {
                return Err(Refused::PeerFull);
            }
        }
        st.total += 1;
        *st.peers.entry(key).or_insert(0) += 1;
        Ok(Slot {
            adm: self.clone(),
            key,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn in_use(&self) -> usize {
        self.state().total
    }
}

impl Slot {
    pub fn key(&self) -> PeerKey {
        self.key
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.adm.state();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.peers.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.peers.remove(&self.key);
            }
        }
    }
}

/// NBD payload bytes in flight over all connections: a global semaphore, a share of it for
/// unprivileged peers (the rest is root's reserve), and one semaphore per unprivileged peer.
#[derive(Debug)]
pub struct ByteBudget {
    global: Arc<Semaphore>,
    unprivileged: Arc<Semaphore>,
    per_peer: usize,
    peers: Mutex<HashMap<PeerKey, Weak<Semaphore>>>,
    total: usize,
}

/// The budgets one connection draws from, in a fixed order (peer, unprivileged share, global),
/// so that waiting connections never form a cycle.
#[derive(Debug, Clone)]
pub struct PeerBudget {
    peer: Option<Arc<Semaphore>>,
    unprivileged: Option<Arc<Semaphore>>,
    global: Arc<Semaphore>,
}

/// Bytes held from every budget of a connection; given back when dropped (once the reply is
/// written).
#[derive(Debug)]
pub struct Reserved(#[allow(dead_code)] Vec<OwnedSemaphorePermit>);

impl ByteBudget {
    /// `total` bytes in all, `root_reserve` of them for root only, `per_peer` for any other
    /// peer.
    pub fn new(total: usize, per_peer: usize, root_reserve: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            global: Arc::new(Semaphore::new(total)),
            unprivileged: Arc::new(Semaphore::new(total.saturating_sub(root_reserve))),
            per_peer,
            peers: Mutex::default(),
            total,
        })
    }

    /// The budgets of a connection from `key`.
    pub fn for_peer(&self, key: PeerKey) -> PeerBudget {
        if key.privileged() {
            return PeerBudget {
                peer: None,
                unprivileged: None,
                global: self.global.clone(),
            };
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let sem = match peers.get(&key).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                peers.retain(|_, w| w.strong_count() > 0);
                let s = Arc::new(Semaphore::new(self.per_peer));
                peers.insert(key, Arc::downgrade(&s));
                s
            }
        };
        PeerBudget {
            peer: Some(sem),
            unprivileged: Some(self.unprivileged.clone()),
            global: self.global.clone(),
        }
    }

    /// Bytes currently reserved over all connections.
    pub fn in_use(&self) -> usize {
        self.total - self.global.available_permits()
    }
}

impl PeerBudget {
    /// Waits until `n` bytes are free in every budget and holds them. None if a budget was
    /// closed (never, in practice).
    pub async fn acquire(&self, n: u32) -> Option<Reserved> {
        let mut held = Vec::with_capacity(3);
        for s in [&self.peer, &self.unprivileged].into_iter().flatten() {
            held.push(s.clone().acquire_many_owned(n).await.ok()?);
        }
        held.push(self.global.clone().acquire_many_owned(n).await.ok()?);
        Some(Reserved(held))
    }
}

/// Lets a warning through at most once per [`RateLog::PERIOD`], counting the ones held back.
#[derive(Debug, Default)]
pub struct RateLog {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLog {
    pub const PERIOD: Duration = Duration::from_secs(5);

    /// Some(number of events held back since the last one logged) if this one is to be logged.
    pub fn due(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match st.0 {
            Some(t) if now.duration_since(t) < Self::PERIOD => {
                st.1 += 1;
                None
            }
            _ => {
                st.0 = Some(now);
                Some(std::mem::take(&mut st.1))
            }
        }
    }
}

/// Gives the allocator's free memory back to the system, within a second and at most once a
/// second. hlfsd keeps request-sized buffers on the heap (see `tune_malloc` in hlfsd), which
/// glibc would otherwise keep after a burst: 770 MiB stayed after 16 clients queued 32 MiB
/// READs and went away.
pub fn release_memory_soon() {
    static PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if PENDING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        PENDING.store(false, std::sync::atomic::Ordering::Release);
        return;
    };
    rt.spawn(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        PENDING.store(false, std::sync::atomic::Ordering::Release);
        let _ = tokio::task::spawn_blocking(release_memory).await;
    });
}

/// Gives the allocator's free memory back to the system now.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Limits of hlfsd, resolved (defaults sized from the descriptor limit, then the `[limits]`
/// section of the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub nbd: Caps,
    pub dbus: Caps,
    /// NBD payload bytes in flight over all connections.
    pub nbd_in_flight: usize,
    /// NBD payload bytes in flight for one unprivileged peer (all its connections).
    pub nbd_in_flight_per_peer: usize,
    /// Of `nbd_in_flight`, bytes only root's connections may use.
    pub nbd_in_flight_root_reserve: usize,
    /// Close an NBD connection after the handshake when no request came for this long and
    /// none is in flight. None: never (the default: QEMU keeps a connection of an idle guest
    /// for hours, and closing it would fail the guest's next I/O unless QEMU reconnects).
    pub nbd_idle_timeout: Option<Duration>,
    /// Close a D-Bus p2p connection when the client sent nothing for this long. None: never.
    pub dbus_idle_timeout: Option<Duration>,
    /// A D-Bus client must authenticate within this time.
    pub dbus_auth_timeout: Duration,
    /// Segment files kept open for reading, over all local volumes.
    pub open_segment_files: usize,
    /// The descriptor limit the defaults were sized from.
    pub nofile: u64,
}

/// Descriptor limit assumed when it cannot be read.
const FALLBACK_NOFILE: u64 = 1024;

impl LimitSettings {
    /// The defaults for a process allowed `nofile` descriptors: NBD connections take at most a
    /// quarter of them, D-Bus connections an eighth and open segment files a quarter, so the
    /// control plane never exhausts what the data path needs.
    pub fn for_nofile(nofile: u64) -> LimitSettings {
        let n = usize::try_from(nofile).unwrap_or(usize::MAX);
        let nbd_total = (n / 4).clamp(8, 256);
        let dbus_total = (n / 8).clamp(8, 128);
        LimitSettings {
            nbd: Caps {
                total: nbd_total,
                per_peer: nbd_total / 2,
                root_reserve: (nbd_total / 16).max(2),
            },
            dbus: Caps {
                total: dbus_total,
                per_peer: (dbus_total / 4).max(2),
                root_reserve: (dbus_total / 8).max(2),
            },
            nbd_in_flight: 256 << 20,
            nbd_in_flight_per_peer: 128 << 20,
            nbd_in_flight_root_reserve: 64 << 20,
            nbd_idle_timeout: None,
            dbus_idle_timeout: Some(Duration::from_secs(300)),
            dbus_auth_timeout: Duration::from_secs(10),
            open_segment_files: (n / 4).clamp(16, 4096),
            nofile,
        }
    }

    /// Checks that the caps let the server work at all (a request of the largest payload must
    /// fit every budget; root's reserve must leave room for others).
    pub fn check(&self) -> Result<(), String> {
        let max = crate::nbd::proto::MAX_PAYLOAD as usize;
        for (name, c) in [("nbd", &self.nbd), ("dbus", &self.dbus)] {
            if c.total == 0 || c.per_peer == 0 {
                return Err(format!(
                    "{name}_connections and its per-peer cap must be positive"
                ));
            }
            if c.root_reserve >= c.total {
                return Err(format!(
                    "{name}_root_reserve ({}) must be below {name}_connections ({})",
                    c.root_reserve, c.total
                ));
            }
        }
        if self.nbd_in_flight_per_peer < max
            || self.nbd_in_flight_root_reserve < max
            || self.nbd_in_flight - self.nbd_in_flight_root_reserve.min(self.nbd_in_flight)
                < self.nbd_in_flight_per_peer
        {
            return Err(format!(
                "nbd_in_flight_per_peer and nbd_in_flight_root_reserve must each be at least the \
                 largest request ({max} bytes), and nbd_in_flight at least their sum"
            ));
        }
        if self.open_segment_files == 0 {
            return Err("open_segment_files must be positive".into());
        }
        Ok(())
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings::for_nofile(nofile().unwrap_or(FALLBACK_NOFILE))
    }
}

/// The soft descriptor limit.
pub fn nofile() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some(r.rlim_cur)
}

/// Raises the soft descriptor limit to the hard limit (the default soft limit, 1024, is far
/// below what a host serving many guests needs). Returns the limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            r.rlim_cur = r.rlim_max;
        }
    }
    Ok(r.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_per_peer_total_and_root_reserve() {
        let a = Admission::new(Caps {
            total: 6,
            per_peer: 3,
            root_reserve: 2,
        });
        let u1 = PeerKey::Uid(1001);
        let u2 = PeerKey::Uid(1002);
        let s: Vec<Slot> = (0..3).map(|_| a.try_admit(u1).unwrap()).collect();
        assert_eq!(a.try_admit(u1).unwrap_err(), Refused::PeerFull);
        let t = a.try_admit(u2).unwrap();
        // 4 of 6 taken: the last 2 are root's.
        assert_eq!(a.try_admit(u2).unwrap_err(), Refused::Full);
        let r: Vec<Slot> = (0..2)
            .map(|_| a.try_admit(PeerKey::Uid(0)).unwrap())
            .collect();
        assert_eq!(a.try_admit(PeerKey::Uid(0)).unwrap_err(), Refused::Full);
        drop(r);
        drop(s);
        assert_eq!(a.in_use(), 1);
        drop(t);
        assert_eq!(a.in_use(), 0);
        assert!(a.state().peers.is_empty());
    }

    #[tokio::test]
    async fn byte_budget_leaves_root_its_reserve() {
        let b = ByteBudget::new(100, 50, 20);
        let p1 = b.for_peer(PeerKey::Uid(1));
        let held = p1.acquire(50).await.unwrap();
        // Peer 1 is at its cap; peer 2 gets the rest of the unprivileged share (30).
        let p2 = b.for_peer(PeerKey::Uid(2));
        let h2 = p2.acquire(30).await.unwrap();
        let more = tokio::time::timeout(Duration::from_millis(50), p2.acquire(1)).await;
        assert!(more.is_err(), "unprivileged share exhausted");
        let root = b.for_peer(PeerKey::Uid(0));
        let hr = root.acquire(20).await.unwrap();
        assert_eq!(b.in_use(), 100);
        drop((held, h2, hr));
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn defaults_scale_with_descriptors() {
        let small = LimitSettings::for_nofile(300);
        assert_eq!((small.nbd.total, small.dbus.total), (75, 37));
        assert!(small.nbd.total + small.dbus.total + small.open_segment_files < 300);
        let big = LimitSettings::for_nofile(1 << 20);
        assert_eq!((big.nbd.total, big.dbus.total), (256, 128));
        assert!(big.check().is_ok() && small.check().is_ok());
    }
}
