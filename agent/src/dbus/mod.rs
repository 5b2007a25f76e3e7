//! The D-Bus API: service `org.hlfs.Hlfs1`, objects under `/org/hlfs/Hlfs1` (see
//! docs/dbus.md). Served on a peer-to-peer socket (always) and on a bus (on request).
//!
//! Each p2p client has its own zbus connection and so its own object server; the
//! [`Publisher`] keeps the object tree of every connection in step with the service (pools,
//! volumes, snapshots and jobs come and go) and turns service events into PropertiesChanged.

pub mod error;
pub mod interfaces;
pub mod paths;

use crate::error::{Error, Result};
use crate::limits::{Admission, LimitSettings, PeerKey, RateLog};
use crate::service::{Caller, Event, Service};
use interfaces::{Ctx, Job1, Manager1, Peer, Pool1, Snapshot1, Volume1};
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::{watch, Mutex};
use zbus::Connection;

/// An object of the tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    Pool(String),
    Volume(String, String),
    Snapshot(String, String, String),
    Job(u32),
}

/// Whether a connection may receive signals yet.
type Ready = Arc<std::sync::atomic::AtomicBool>;

fn is_ready(r: &Ready) -> bool {
    r.load(std::sync::atomic::Ordering::Acquire)
}

/// Makes a connection ready: adds the ObjectManager (which announces every object) and lets
/// signals through.
async fn make_ready(c: &Connection, r: &Ready) {
    if !r.swap(true, std::sync::atomic::Ordering::AcqRel) {
        add_object_manager(c).await;
    }
}

struct Inner {
    /// `(id, connection, how to identify its callers)`.
    /// `ready`: the client may receive signals (see [`HelloShim`]).
    conns: Vec<(u64, Connection, Peer, Ready)>,
    next_id: u64,
    published: BTreeSet<Obj>,
}

/// Keeps every connection's objects in step with the service.
pub struct Publisher {
    me: std::sync::Weak<Publisher>,
    svc: Arc<Service>,
    inner: Mutex<Inner>,
}

impl Publisher {
    /// A publisher for `svc`, with a task that follows the service's events.
    pub fn start(svc: Arc<Service>) -> Arc<Publisher> {
        let p = Arc::new_cyclic(|me| Publisher {
            me: me.clone(),
            svc: svc.clone(),
            inner: Mutex::new(Inner {
                conns: Vec::new(),
                next_id: 0,
                published: BTreeSet::new(),
            }),
        });
        let mut events = svc.subscribe();
        let weak = Arc::downgrade(&p);
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    // Missed events: a full resync covers them.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::Tree,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                let Some(p) = weak.upgrade() else { break };
                p.handle(ev).await;
            }
        });
        p
    }

    async fn handle(&self, ev: Event) {
        match ev {
            Event::Tree => self.sync().await,
            Event::Volume(pool, vol) => {
                self.sync().await;
                let path = paths::volume(&pool, &vol);
                for (_, c, _, r) in self.inner.lock().await.conns.clone() {
                    if !is_ready(&r) {
                        continue;
                    }
                    if let Err(e) = volume_changed(&c, &path).await {
                        tracing::debug!(error = %e, "PropertiesChanged");
                    }
                }
            }
            Event::Job(id) => {
                let path = paths::job(id);
                for (_, c, _, r) in self.inner.lock().await.conns.clone() {
                    if !is_ready(&r) {
                        continue;
                    }
                    if let Err(e) = job_changed(&c, &path).await {
                        tracing::debug!(error = %e, "PropertiesChanged");
                    }
                }
            }
        }
    }

    /// What the tree should hold now. Unreadable pools and volumes are logged and skipped.
    async fn desired(&self) -> BTreeSet<Obj> {
        let mut out = BTreeSet::new();
        for pool in self.svc.pool_names() {
            out.insert(Obj::Pool(pool.clone()));
            let vols = match self.svc.volumes(&pool).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(pool, error = %e, "cannot list volumes");
                    continue;
                }
            };
            for v in vols {
                if let Ok(snaps) = self.svc.snapshots(&pool, &v).await {
                    for s in snaps {
                        out.insert(Obj::Snapshot(pool.clone(), v.clone(), s.name));
                    }
                }
                out.insert(Obj::Volume(pool.clone(), v));
            }
        }
        out.extend(self.svc.job_ids().into_iter().map(Obj::Job));
        out
    }

    /// Adds and removes objects on every connection so that they match the service.
    pub async fn sync(&self) {
        let want = self.desired().await;
        let mut inner = self.inner.lock().await;
        let gone: Vec<Obj> = inner.published.difference(&want).cloned().collect();
        let new: Vec<Obj> = want.difference(&inner.published).cloned().collect();
        for (_, c, peer, _) in &inner.conns {
            // Children go before parents and come after them (reverse order for removal).
            for o in gone.iter().rev() {
                if let Err(e) = remove(c, o).await {
                    tracing::debug!(error = %e, "remove object");
                }
            }
            for o in &new {
                if let Err(e) = add(c, &self.ctx(peer), o).await {
                    tracing::warn!(error = %e, "add object");
                }
            }
        }
        inner.published = want;
    }

    fn ctx(&self, peer: &Peer) -> Ctx {
        Ctx {
            svc: self.svc.clone(),
            peer: peer.clone(),
            publisher: self.me.clone(),
        }
    }

    /// Publishes the whole tree on a bus connection; returns its id for [`Self::detach`].
    pub async fn attach_bus(&self, conn: Connection) -> Result<u64> {
        let mut inner = self.inner.lock().await;
        let ctx = self.ctx(&Peer::Bus);
        let srv = conn.object_server();
        srv.at(paths::ROOT, Manager1 { ctx: ctx.clone() })
            .await
            .map_err(reg_err)?;
        for o in &inner.published {
            add(&conn, &ctx, o).await.map_err(reg_err)?;
        }
        add_object_manager(&conn).await;
        inner.next_id += 1;
        let id = inner.next_id;
        inner
            .conns
            .push((id, conn, Peer::Bus, Arc::new(true.into())));
        Ok(id)
    }

    /// Runs the server side of a p2p connection's handshake with every object already in
    /// place (a client's first call must find them), then catches up with changes made
    /// meanwhile and joins the connection to the set kept in step.
    async fn attach_p2p(
        &self,
        stream: tokio::net::UnixStream,
        guid: zbus::OwnedGuid,
        caller: Caller,
        auth_timeout: std::time::Duration,
    ) -> Result<(u64, Connection, Ready)> {
        let known = KnownPeer {
            stream,
            creds: Arc::new(PeerCreds {
                uid: caller.uid,
                gids: caller.gids.clone(),
            }),
        };
        let peer = Peer::Direct(caller);
        let ready: Ready = Arc::new(false.into());
        let (attached_tx, attached) = watch::channel(false);
        let ctx = self.ctx(&peer);
        let snapshot = self.inner.lock().await.published.clone();
        let mut b = zbus::connection::Builder::socket(known)
            .server(guid)
            .map_err(reg_err)?
            .p2p()
            .serve_at(
                "/org/freedesktop/DBus",
                HelloShim {
                    ready: ready.clone(),
                    attached,
                },
            )
            .map_err(reg_err)?
            .serve_at(paths::ROOT, Manager1 { ctx: ctx.clone() })
            .map_err(reg_err)?;
        for o in &snapshot {
            b = serve_obj(b, &ctx, o).map_err(reg_err)?;
        }
        // The authentication is part of the build: a client that does not authenticate in
        // time must not keep its slot.
        let conn = tokio::time::timeout(auth_timeout, b.build())
            .await
            .map_err(|_| {
                Error::Busy(format!(
                    "D-Bus client did not authenticate within {auth_timeout:?}"
                ))
            })?
            .map_err(reg_err)?;
        let mut inner = self.inner.lock().await;
        for o in snapshot
            .difference(&inner.published)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let _ = remove(&conn, o).await;
        }
        for o in inner.published.difference(&snapshot) {
            add(&conn, &ctx, o).await.map_err(reg_err)?;
        }
        // No signal (nor the ObjectManager, whose registration announces every object) until
        // the client is ready for them: see HelloShim. Clients that send no Hello are ready
        // at their first message, or after a moment.
        let (c, r) = (conn.clone(), ready.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            make_ready(&c, &r).await;
        });
        inner.next_id += 1;
        let id = inner.next_id;
        inner.conns.push((id, conn.clone(), peer, ready.clone()));
        attached_tx.send_replace(true);
        Ok((id, conn, ready))
    }

    /// Drops a closed connection.
    async fn detach(&self, id: u64) {
        self.inner
            .lock()
            .await
            .conns
            .retain(|(i, _, _, _)| *i != id);
    }
}

/// Registers the standard ObjectManager at the root (idempotent).
async fn add_object_manager(c: &Connection) {
    if let Err(e) = c
        .object_server()
        .at(paths::ROOT, zbus::fdo::ObjectManager)
        .await
    {
        tracing::debug!(error = %e, "ObjectManager");
    }
}

/// Answers `org.freedesktop.DBus.Hello` on p2p connections: clients written for a bus
/// (sd-bus, so busctl) send it first even on a direct connection, and treat any message that
/// arrives before its reply as a protocol error. So the ObjectManager, whose registration
/// announces every object (InterfacesAdded), is added only once the reply is out; and since
/// this interface runs inline (no task per call), the client's next call is dispatched only
/// after that, so it finds the ObjectManager. Written by hand rather than with
/// `#[interface]` because the reply must be sent before the method's work is done.
struct HelloShim {
    ready: Ready,
    /// Becomes true once the connection is in the publisher's set (so it gets every signal
    /// from the moment Hello is answered).
    attached: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl zbus::object_server::Interface for HelloShim {
    fn name() -> zbus::names::InterfaceName<'static> {
        zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.DBus")
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        false
    }

    async fn get(
        &self,
        _: &str,
        _: &zbus::ObjectServer,
        _: &Connection,
        _: Option<&zbus::message::Header<'_>>,
        _: &zbus::object_server::SignalEmitter<'_>,
    ) -> Option<zbus::fdo::Result<zbus::zvariant::OwnedValue>> {
        None
    }

    async fn get_all(
        &self,
        _: &zbus::ObjectServer,
        _: &Connection,
        _: Option<&zbus::message::Header<'_>>,
        _: &zbus::object_server::SignalEmitter<'_>,
    ) -> zbus::fdo::Result<std::collections::HashMap<String, zbus::zvariant::OwnedValue>> {
        Ok(Default::default())
    }

    async fn set_mut(
        &mut self,
        _: &str,
        _: &zbus::zvariant::Value<'_>,
        _: &zbus::ObjectServer,
        _: &Connection,
        _: Option<&zbus::message::Header<'_>>,
        _: &zbus::object_server::SignalEmitter<'_>,
    ) -> Option<zbus::fdo::Result<()>> {
        None
    }

    fn call<'call>(
        &'call self,
        _: &'call zbus::ObjectServer,
        conn: &'call Connection,
        msg: &'call zbus::Message,
        name: zbus::names::MemberName<'call>,
    ) -> zbus::object_server::DispatchResult2<'call> {
        if name.as_str() != "Hello" {
            return zbus::object_server::DispatchResult2::NotFound;
        }
        zbus::object_server::DispatchResult2::Async(Box::pin(async move {
            let mut attached = self.attached.clone();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), attached.wait_for(|a| *a))
                    .await;
            // There is no bus: every client gets the same unique name.
            conn.reply(&msg.header(), &(":1.1",))
                .await
                .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
            make_ready(conn, &self.ready).await;
            Ok(())
        }))
    }

    fn call_mut<'call>(
        &'call mut self,
        _: &'call zbus::ObjectServer,
        _: &'call Connection,
        _: &'call zbus::Message,
        _: zbus::names::MemberName<'call>,
    ) -> zbus::object_server::DispatchResult2<'call> {
        zbus::object_server::DispatchResult2::NotFound
    }

    fn introspect_to_writer(&self, w: &mut dyn std::fmt::Write, level: usize) {
        let pad = " ".repeat(level);
        let _ = write!(
            w,
            "{pad}<interface name=\"org.freedesktop.DBus\">\n{pad}  <method name=\"Hello\">\n{pad}    <arg type=\"s\" direction=\"out\"/>\n{pad}  </method>\n{pad}</interface>\n"
        );
    }
}

fn reg_err(e: zbus::Error) -> Error {
    Error::Busy(format!("D-Bus connection set-up: {e}"))
}

/// [`add`] for a connection being built.
fn serve_obj(
    b: zbus::connection::Builder<'static>,
    ctx: &Ctx,
    o: &Obj,
) -> zbus::Result<zbus::connection::Builder<'static>> {
    let ctx = ctx.clone();
    match o {
        Obj::Pool(p) => b.serve_at(
            paths::pool(p).into_inner(),
            Pool1 {
                ctx,
                pool: p.clone(),
            },
        ),
        Obj::Volume(p, v) => b.serve_at(
            paths::volume(p, v).into_inner(),
            Volume1 {
                ctx,
                pool: p.clone(),
                volume: v.clone(),
            },
        ),
        Obj::Snapshot(p, v, s) => b.serve_at(
            paths::snapshot(p, v, s).into_inner(),
            Snapshot1 {
                ctx,
                pool: p.clone(),
                volume: v.clone(),
                snapshot: s.clone(),
            },
        ),
        Obj::Job(id) => b.serve_at(paths::job(*id).into_inner(), Job1 { ctx, id: *id }),
    }
}

async fn add(c: &Connection, ctx: &Ctx, o: &Obj) -> zbus::Result<bool> {
    let srv = c.object_server();
    let ctx = ctx.clone();
    match o {
        Obj::Pool(p) => {
            srv.at(
                paths::pool(p),
                Pool1 {
                    ctx,
                    pool: p.clone(),
                },
            )
            .await
        }
        Obj::Volume(p, v) => {
            let i = Volume1 {
                ctx,
                pool: p.clone(),
                volume: v.clone(),
            };
            srv.at(paths::volume(p, v), i).await
        }
        Obj::Snapshot(p, v, s) => {
            let i = Snapshot1 {
                ctx,
                pool: p.clone(),
                volume: v.clone(),
                snapshot: s.clone(),
            };
            srv.at(paths::snapshot(p, v, s), i).await
        }
        Obj::Job(id) => srv.at(paths::job(*id), Job1 { ctx, id: *id }).await,
    }
}

async fn remove(c: &Connection, o: &Obj) -> zbus::Result<bool> {
    let srv = c.object_server();
    match o {
        Obj::Pool(p) => srv.remove::<Pool1, _>(paths::pool(p)).await,
        Obj::Volume(p, v) => srv.remove::<Volume1, _>(paths::volume(p, v)).await,
        Obj::Snapshot(p, v, s) => srv.remove::<Snapshot1, _>(paths::snapshot(p, v, s)).await,
        Obj::Job(id) => srv.remove::<Job1, _>(paths::job(*id)).await,
    }
}

async fn volume_changed(
    c: &Connection,
    path: &zbus::zvariant::OwnedObjectPath,
) -> zbus::Result<()> {
    let r = c.object_server().interface::<_, Volume1>(path).await?;
    let e = r.signal_emitter();
    let i = r.get().await;
    i.size_changed(e).await?;
    i.allocated_changed(e).await?;
    i.physical_changed(e).await?;
    i.reclaimable_changed(e).await?;
    i.segments_changed(e).await?;
    i.live_ratio_changed(e).await?;
    i.snapshots_changed(e).await
}

async fn job_changed(c: &Connection, path: &zbus::zvariant::OwnedObjectPath) -> zbus::Result<()> {
    let r = c.object_server().interface::<_, Job1>(path).await?;
    let e = r.signal_emitter();
    let i = r.get().await;
    i.progress_changed(e).await?;
    i.state_changed(e).await?;
    i.error_changed(e).await
}

/// A peer's credentials, read once at accept (SO_PEERCRED, SO_PEERGROUPS).
#[derive(Debug)]
struct PeerCreds {
    uid: u32,
    gids: Vec<u32>,
}

impl PeerCreds {
    fn to_zbus(&self) -> zbus::fdo::ConnectionCredentials {
        let mut c = zbus::fdo::ConnectionCredentials::default().set_unix_user_id(self.uid);
        for g in &self.gids {
            c = c.add_unix_group_id(*g);
        }
        c
    }
}

/// A p2p client's Unix stream with the credentials already known. zbus's own tokio stream
/// looks them up on a blocking thread at every connection (getpwuid_r and getgrouplist, NSS
/// calls that may open files or ask a directory service), so a burst of connections grew
/// the blocking pool towards its 512 threads (543 threads for 3000 connections); here they
/// cost no thread and no descriptor.
#[derive(Debug)]
struct KnownPeer {
    stream: tokio::net::UnixStream,
    creds: Arc<PeerCreds>,
}

#[derive(Debug)]
struct KnownRead {
    inner: tokio::net::unix::OwnedReadHalf,
    creds: Arc<PeerCreds>,
}

#[derive(Debug)]
struct KnownWrite {
    inner: tokio::net::unix::OwnedWriteHalf,
    creds: Arc<PeerCreds>,
}

impl zbus::connection::socket::Socket for KnownPeer {
    type ReadHalf = KnownRead;
    type WriteHalf = KnownWrite;

    fn split(self) -> zbus::connection::socket::Split<KnownRead, KnownWrite> {
        let (r, w) = self.stream.into_split();
        zbus::connection::socket::Split::new(
            KnownRead {
                inner: r,
                creds: self.creds.clone(),
            },
            KnownWrite {
                inner: w,
                creds: self.creds,
            },
        )
    }
}

#[async_trait::async_trait]
impl zbus::connection::socket::ReadHalf for KnownRead {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
        zbus::connection::socket::ReadHalf::recvmsg(&mut self.inner, buf).await
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> std::io::Result<zbus::fdo::ConnectionCredentials> {
        Ok(self.creds.to_zbus())
    }
}

#[async_trait::async_trait]
impl zbus::connection::socket::WriteHalf for KnownWrite {
    async fn sendmsg(&mut self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
        zbus::connection::socket::WriteHalf::sendmsg(&mut self.inner, buf, fds).await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        zbus::connection::socket::WriteHalf::close(&mut self.inner).await
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> std::io::Result<zbus::fdo::ConnectionCredentials> {
        Ok(self.creds.to_zbus())
    }
}

/// Binds the p2p socket, open to every local user (reads are for everyone; mutations are
/// checked per call).
pub fn bind_p2p(path: &Path) -> Result<UnixListener> {
    let l = crate::nbd::bind_unix(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::io("set permissions of", path, e))?;
    Ok(l)
}

/// Credentials of the peer of a Unix socket: SO_PEERCRED, plus SO_PEERGROUPS for the
/// supplementary groups.
fn peer_caller(s: &tokio::net::UnixStream) -> std::io::Result<(Caller, i32)> {
    let cred = s.peer_cred()?;
    let mut gids = vec![cred.gid()];
    let mut buf = vec![0u32; 256];
    let mut len = (buf.len() * 4) as libc::socklen_t;
    // SAFETY: buf is valid for len bytes; the kernel writes at most len bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 {
        gids.extend_from_slice(&buf[..len as usize / 4]);
    }
    Ok((
        Caller {
            uid: cred.uid(),
            gids,
        },
        cred.pid().unwrap_or(0),
    ))
}

/// Accepts p2p clients until `stop`: each gets a zbus server connection with the whole tree.
///
/// Connections are capped in all and per uid, with a reserve only root may use (see
/// [`crate::limits`]): a flood from one user fills its own share, never root's. A client must
/// authenticate within `dbus_auth_timeout` and is dropped after `dbus_idle_timeout` without
/// sending anything.
pub async fn serve_p2p(
    listener: UnixListener,
    publisher: Arc<Publisher>,
    limits: LimitSettings,
    mut stop: watch::Receiver<bool>,
) {
    let guid: zbus::OwnedGuid = zbus::Guid::generate().into();
    let admission = Admission::new(limits.dbus);
    let refusals = RateLog::default();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "D-Bus accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let (caller, pid) = match peer_caller(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "D-Bus peer credentials");
                continue;
            }
        };
        let slot = match admission.try_admit(PeerKey::Uid(caller.uid)) {
            Ok(s) => s,
            Err(why) => {
                if let Some(more) = refusals.due() {
                    let why = admission.refusal(why, "users", "the uid");
                    tracing::warn!(
                        uid = caller.uid,
                        pid,
                        refused_since_last = more,
                        "D-Bus connection refused: {why}"
                    );
                }
                continue; // dropping the stream closes it
            }
        };
        let publisher = publisher.clone();
        let guid = guid.clone();
        let (auth_timeout, idle_timeout) = (limits.dbus_auth_timeout, limits.dbus_idle_timeout);
        tokio::spawn(async move {
            let _slot = slot;
            let uid = caller.uid;
            let (id, conn, ready) = match publisher
                .attach_p2p(stream, guid, caller, auth_timeout)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(uid, error = %e, "D-Bus client");
                    return;
                }
            };
            tracing::debug!(uid, "D-Bus client connected");
            // The stream ends when the client goes away.
            let mut msgs = zbus::MessageStream::from(&conn);
            let mut first = true;
            loop {
                let m = match idle_timeout {
                    Some(t) => match tokio::time::timeout(t, next_message(&mut msgs)).await {
                        Ok(m) => m,
                        Err(_) => {
                            tracing::debug!(uid, "D-Bus client idle for {t:?}; closing");
                            break;
                        }
                    },
                    None => next_message(&mut msgs).await,
                };
                let Some(m) = m else { break };
                if std::mem::take(&mut first)
                    && m.header().member().map(|m| m.as_str()) != Some("Hello")
                {
                    make_ready(&conn, &ready).await;
                }
            }
            publisher.detach(id).await;
            drop(msgs);
            if let Err(e) = conn.close().await {
                tracing::debug!(uid, error = %e, "closing a D-Bus connection");
            }
        });
    }
}

/// The connection's next message (None once it is closed).
async fn next_message(s: &mut zbus::MessageStream) -> Option<zbus::Message> {
    use std::future::poll_fn;
    use std::pin::Pin;
    poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *s), cx))
        .await
        .and_then(|m| m.ok())
}

/// Which bus to register on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Session,
    System,
}

/// Connects to a bus, publishes the tree and takes the name `org.hlfs.Hlfs1`.
pub async fn serve_bus(kind: BusKind, publisher: Arc<Publisher>) -> Result<Connection> {
    let err = |e: zbus::Error| Error::Busy(format!("{kind:?} bus: {e}"));
    let b = match kind {
        BusKind::Session => zbus::connection::Builder::session(),
        BusKind::System => zbus::connection::Builder::system(),
    }
    .map_err(err)?;
    let conn = b.build().await.map_err(err)?;
    publisher.attach_bus(conn.clone()).await?;
    conn.request_name(paths::SERVICE).await.map_err(err)?;
    Ok(conn)
}
