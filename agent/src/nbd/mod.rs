//! The NBD server: listeners (Unix socket, optional TCP), one task per connection, negotiation
//! (`handshake`) then the transmission phase (`transmission`). Wire constants are in `proto`.

pub mod handshake;
pub mod proto;
pub mod transmission;

use crate::error::{Error, Result};
use crate::manager::Manager;
use handshake::Outcome;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A client must finish negotiating within this time (a silent client must not hold a task).
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once, over all listeners; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Request payload bytes in flight over all connections (each connection also has its own cap).
pub const MAX_TOTAL_IN_FLIGHT_BYTES: usize = 1 << 30;

/// Budgets shared by every connection of every listener, so that the daemon's memory stays
/// bounded whatever the number of clients.
#[derive(Debug, Clone)]
pub struct Limits {
    connections: Arc<tokio::sync::Semaphore>,
    pub(crate) bytes: Arc<tokio::sync::Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            bytes: Arc::new(tokio::sync::Semaphore::new(MAX_TOTAL_IN_FLIGHT_BYTES)),
        }
    }
}

/// Binds the Unix socket. A socket file left by a dead daemon is replaced; one that answers
/// belongs to a running server and is an error.
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create runtime directory", dir, e))?;
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(Error::Busy(format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            )));
        }
        // Only a socket nobody listens on is stale (ECONNREFUSED); a live server whose backlog
        // is full (EAGAIN) or any other answer means the path is not ours to replace.
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)
                    .map_err(|e| Error::io("remove stale socket", path, e))?;
            }
            _ => {
                return Err(Error::Busy(format!(
                    "{} is in use by a running server (another hlfsd?)",
                    path.display()
                )))
            }
        }
    }
    UnixListener::bind(path).map_err(|e| Error::io("listen on", path, e))
}

/// Binds the TCP listener.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io("listen on", PathBuf::from(addr.to_string()), e))
}

/// A bound listener of either kind.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Accepts connections until shutdown, then waits for open connections to finish their
/// in-flight requests (they stop reading new ones when shutdown is signalled).
pub async fn serve(
    listener: Listener,
    mgr: Arc<Manager>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accept(&listener) => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many connections ({MAX_CONNECTIONS}); refusing");
                        continue;
                    };
                    let mgr = mgr.clone();
                    let sd = shutdown.clone();
                    let bytes = limits.bytes.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        tracing::debug!(%peer, "NBD connection");
                        match stream {
                            Stream::Unix(s) => {
                                let (r, w) = s.into_split();
                                connection(r, w, &peer, mgr, bytes, sd).await
                            }
                            Stream::Tcp(s) => {
                                let (r, w) = s.into_split();
                                connection(r, w, &peer, mgr, bytes, sd).await
                            }
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Stream, String)> {
    match l {
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let peer = match s.peer_cred() {
                Ok(c) => format!("unix pid {} uid {}", c.pid().unwrap_or(0), c.uid()),
                Err(_) => "unix".to_string(),
            };
            Ok((Stream::Unix(s), peer))
        }
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            // Replies are written whole; do not let Nagle delay the small ones.
            s.set_nodelay(true)?;
            Ok((Stream::Tcp(s), a.to_string()))
        }
    }
}

/// Joins the two halves so negotiation can use one stream.
struct Duplex<R, W> {
    r: R,
    w: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Duplex<R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.r).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Duplex<R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.w).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.w).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.w).poll_shutdown(cx)
    }
}

async fn connection<R, W>(
    r: R,
    w: W,
    peer: &str,
    mgr: Arc<Manager>,
    global_bytes: Arc<tokio::sync::Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut io = Duplex { r, w };
    let outcome = tokio::select! {
        o = tokio::time::timeout(NEGOTIATION_TIMEOUT, handshake::negotiate(&mut io, &mgr)) => o,
        _ = shutdown.changed() => return,
    };
    let neg = match outcome {
        Ok(Ok(Outcome::Transmission(n))) => n,
        Ok(Ok(Outcome::Closed)) => return,
        Ok(Err(e)) => {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                tracing::info!(peer, error = %e, "negotiation failed");
            }
            return;
        }
        Err(_) => {
            tracing::info!(peer, "negotiation timed out");
            return;
        }
    };
    tracing::info!(peer, export = %neg.export.name, structured = neg.structured, "client attached");
    let name = neg.export.name.clone();
    let Duplex { r, w } = io;
    if let Err(e) = transmission::serve(r, w, neg, global_bytes, shutdown).await {
        tracing::info!(peer, export = %name, error = %e, "connection ended with an error");
    } else {
        tracing::info!(peer, export = %name, "client detached");
    }
}
