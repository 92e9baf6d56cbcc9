//! The connections the server accepts: bounded in all and per client address, with Nagle's
//! algorithm off, and an accept loop that does not spin when the process runs out of files.
//!
//! Without bounds anybody who can reach the port can open connections until the process has no
//! file descriptors left (20,000 idle TCP connections need no account): then every Delta read
//! and audit append fails for every user, and the accept loop retries its failing `accept` as
//! fast as it can. A connection past a bound is answered (plaintext gRPC clients get
//! RESOURCE_EXHAUSTED naming the setting) and closed.
//!
//! Bounds alone would let connections that never log in hold every slot (18 addresses x 256
//! idle sockets locked everybody out, attacker round 11). So a connection must make an
//! authenticated call within `[server] login_timeout_secs` or it is closed, and when the server is full the
//! oldest connection that has not logged in yet is closed to make room for a new one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long the accept loop waits after a failed `accept` (no file descriptors left, say)
/// before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Refusals answered at once; past this, connections over a bound are closed without a word
/// (a flood must not turn into a flood of answering tasks).
const REFUSALS_ANSWERED: usize = 64;

/// How many connections may be held: in all, and from one client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBounds {
    /// `[server] max_connections`.
    pub total: usize,
    /// `[server] max_connections_per_client`.
    pub per_client: usize,
    /// `[server] login_timeout_secs`: how long a connection may go without an authenticated
    /// call (a live bearer token seen by the gate) before it is closed; a client logs in and
    /// calls at once.
    pub login_within: Duration,
    /// Connections logged in as one user ([`MAX_CONNECTIONS_PER_USER`]): one account must not
    /// hold every slot (attacker round 12 held 4,096 with one login).
    pub per_user: usize,
}

/// Connections one user may hold logged in.
pub const MAX_CONNECTIONS_PER_USER: usize = 128;

/// Logged-in connections by user.
#[derive(Debug, Default)]
struct Users {
    most: usize,
    held: Mutex<HashMap<String, usize>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Counts the connections held, and refuses those past the bounds.
pub struct ConnectionLimits {
    bounds: ConnectionBounds,
    held: Arc<Mutex<Held>>,
    answering: Arc<Semaphore>,
    /// Connections not yet logged in, oldest first (the first to close when the server is full).
    anonymous: Mutex<VecDeque<Weak<ConnState>>>,
    users: Arc<Users>,
}

/// What the server knows of one connection while it lives.
#[derive(Debug)]
pub struct ConnState {
    authenticated: AtomicBool,
    evicted: AtomicBool,
    /// Wakes the connection's reader to close it.
    waker: AtomicWaker,
    /// The user it logged in as (the first), counted in `users` until it closes.
    user: Mutex<Option<String>>,
    users: Arc<Users>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        let Some(user) = self.user.get_mut().ok().and_then(|u| u.take()) else {
            return;
        };
        let mut held = self.users.held.lock().expect("user connections");
        if let Some(n) = held.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&user);
            }
        }
    }
}

impl ConnState {
    fn new(users: &Arc<Users>) -> Self {
        Self {
            authenticated: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            user: Mutex::new(None),
            users: users.clone(),
        }
    }

    /// An authenticated call of `user` came over this connection: it may stay, unless `user`
    /// already holds [`ConnectionBounds::per_user`] connections (then the call is refused and
    /// the connection stays not logged in).
    pub fn authenticated(&self, user: &str) -> Result<(), String> {
        if self.authenticated.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut mine = self.user.lock().expect("connection user");
        if mine.is_none() {
            let mut held = self.users.held.lock().expect("user connections");
            let n = held.entry(user.to_string()).or_default();
            if *n >= self.users.most {
                return Err(format!(
                    "too many connections: {user} holds {} logged in; close idle ones",
                    self.users.most
                ));
            }
            *n += 1;
            *mine = Some(user.to_string());
        }
        self.authenticated.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn evict(&self) -> bool {
        if self.authenticated.load(Ordering::Relaxed) || self.evicted.swap(true, Ordering::Relaxed)
        {
            return false;
        }
        self.waker.wake();
        true
    }
}

/// The connection a request came over: its TCP details and its [`ConnState`] (tonic's
/// `ConnectInfo` of a [`Limited`] connection, in every request's extensions).
#[derive(Debug, Clone)]
pub struct Conn {
    /// The TCP connection's addresses.
    pub tcp: TcpConnectInfo,
    /// Its state.
    pub state: Arc<ConnState>,
}

/// The connection of a request with these extensions (plaintext or TLS).
pub fn conn_of(extensions: &http::Extensions) -> Option<&Conn> {
    extensions.get::<Conn>().or_else(|| {
        extensions
            .get::<tonic::transport::server::TlsConnectInfo<Conn>>()
            .map(|t| t.get_ref())
    })
}

/// The client address of a tonic request.
pub fn peer<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    conn_of(request.extensions()).and_then(|c| c.tcp.remote_addr())
}

/// Why a connection is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds `[server] max_connections` already.
    Total(usize),
    /// The client's address holds `[server] max_connections_per_client` already.
    PerClient(IpAddr, usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(
                f,
                "too many connections: the server holds {n} (server.max_connections); \
                 try again shortly"
            ),
            Refusal::PerClient(ip, n) => write!(
                f,
                "too many connections from {ip}: it holds {n} \
                 (server.max_connections_per_client); close idle ones"
            ),
        }
    }
}

impl ConnectionLimits {
    /// Limits with these bounds.
    pub fn new(bounds: ConnectionBounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            held: Arc::default(),
            answering: Arc::new(Semaphore::new(REFUSALS_ANSWERED)),
            anonymous: Mutex::new(VecDeque::new()),
            users: Arc::new(Users {
                most: bounds.per_user,
                held: Mutex::default(),
            }),
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.held.lock().expect("connection count").total
    }

    /// Takes one connection from `peer`, or says which bound it passes. A full server closes
    /// its oldest connection that has not logged in to make room (briefly holding one more).
    fn take(&self, peer: IpAddr) -> Result<Hold, Refusal> {
        let mut held = self.held.lock().expect("connection count");
        // The client's own bound first: nobody is evicted for a connection refused anyway.
        let own = held.per_client.get(&peer).copied().unwrap_or(0);
        if own >= self.bounds.per_client {
            return Err(Refusal::PerClient(peer, self.bounds.per_client));
        }
        if held.total >= self.bounds.total && !self.evict_oldest_anonymous() {
            return Err(Refusal::Total(self.bounds.total));
        }
        held.total += 1;
        held.per_client.insert(peer, own + 1);
        Ok(Hold {
            held: self.held.clone(),
            peer,
        })
    }

    /// Closes the oldest live connection that has not logged in; false when there is none.
    fn evict_oldest_anonymous(&self) -> bool {
        let mut anonymous = self.anonymous.lock().expect("anonymous connections");
        while let Some(oldest) = anonymous.pop_front() {
            if let Some(state) = oldest.upgrade() {
                if state.evict() {
                    return true;
                }
            }
        }
        false
    }

    /// Keeps `state` among the connections not yet logged in (dropping the entries of those
    /// gone or logged in when the list has grown past the bound).
    fn track(&self, state: &Arc<ConnState>) {
        let mut anonymous = self.anonymous.lock().expect("anonymous connections");
        if anonymous.len() >= self.bounds.total {
            anonymous.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| !s.authenticated.load(Ordering::Relaxed))
            });
        }
        anonymous.push_back(Arc::downgrade(state));
    }

    /// The accepted connections of `listener` within the bounds. Connections past them are
    /// refused on the way (see the module's doc).
    pub fn accept(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl tokio_stream::Stream<Item = io::Result<Limited>> + Send {
        futures::stream::unfold((self, listener), |(limits, listener)| async move {
            loop {
                let (conn, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and the like: retrying at once would spin a core.
                        tracing::warn!("cannot accept a connection: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // tonic sets TCP_NODELAY only on listeners it binds itself; without it every
                // small response waits for the client's delayed ACK (about 40 ms).
                if let Err(e) = conn.set_nodelay(true) {
                    tracing::debug!("accept: {e}");
                    continue;
                }
                match limits.take(peer.ip()) {
                    Ok(hold) => {
                        let state = Arc::new(ConnState::new(&limits.users));
                        limits.track(&state);
                        let conn = Limited {
                            io: conn,
                            _hold: hold,
                            state,
                            login_by: Some(Box::pin(tokio::time::sleep(
                                limits.bounds.login_within,
                            ))),
                            login_within: limits.bounds.login_within,
                        };
                        return Some((Ok(conn), (limits, listener)));
                    }
                    Err(refusal) => limits.refuse(conn, peer, refusal),
                }
            }
        })
    }

    fn refuse(&self, conn: TcpStream, peer: SocketAddr, refusal: Refusal) {
        tracing::debug!(%peer, "{refusal}");
        crate::metrics::metrics().connection_refused();
        let Ok(permit) = self.answering.clone().try_acquire_owned() else {
            return; // dropped: closed
        };
        tokio::spawn(async move {
            crate::plaintext::answer_plaintext(conn, 8, &refusal.to_string()).await;
            drop(permit);
        });
    }
}

/// One held connection: released when the connection is dropped.
#[derive(Debug)]
struct Hold {
    held: Arc<Mutex<Held>>,
    peer: IpAddr,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("connection count");
        held.total -= 1;
        if let Some(n) = held.per_client.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.per_client.remove(&self.peer);
            }
        }
    }
}

/// A TCP connection counted against the bounds while it lives, closed when it has not logged
/// in within [`ConnectionBounds::login_within`] or is evicted for a newer one.
pub struct Limited {
    io: TcpStream,
    _hold: Hold,
    state: Arc<ConnState>,
    /// Until the first authenticated call.
    login_by: Option<Pin<Box<tokio::time::Sleep>>>,
    login_within: Duration,
}

impl Limited {
    /// Why the connection must close now, if it must.
    fn must_close(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.login_by.as_ref()?;
        if self.state.authenticated.load(Ordering::Relaxed) {
            self.login_by = None;
            return None;
        }
        self.state.waker.register(cx.waker());
        if self.state.evicted.load(Ordering::Relaxed) {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room: no login on this connection yet",
            ));
        }
        let deadline = self.login_by.as_mut().expect("checked");
        if deadline.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no login within {} s", self.login_within.as_secs()),
            ));
        }
        None
    }
}

impl Limited {
    /// The TCP connection (to peek at it).
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }
}

impl Connected for Limited {
    // Read with [`peer`] and [`conn_of`] (tonic's `Request::remote_addr` knows only its own
    // types).
    type ConnectInfo = Conn;

    fn connect_info(&self) -> Conn {
        Conn {
            tcp: self.io.connect_info(),
            state: self.state.clone(),
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.must_close(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// `[server] max_connections` that the process's file limit can carry: at most half of the
/// open-file limit (the rest is for Delta files, the audit trail and spills), after raising
/// the soft limit to the hard one.
pub fn fitted_to_file_limit(bounds: ConnectionBounds) -> ConnectionBounds {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let files = limit.current.unwrap_or(u64::MAX);
    let most = usize::try_from(files / 2).unwrap_or(usize::MAX);
    if bounds.total > most {
        tracing::warn!(
            configured = bounds.total,
            open_file_limit = files,
            "server.max_connections lowered to {most}: half the process's open-file limit"
        );
    }
    ConnectionBounds {
        total: bounds.total.min(most),
        per_client: bounds.per_client.min(bounds.total.min(most)),
        login_within: bounds.login_within,
        per_user: bounds.per_user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(ConnectionBounds {
            total,
            per_client,
            login_within: Duration::from_secs(30),
            per_user: 2,
        })
    }

    #[test]
    fn a_client_is_held_to_its_share_and_others_still_connect() {
        let l = limits(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.take(a).unwrap();
        let _a2 = l.take(a).unwrap();
        assert_eq!(l.take(a).unwrap_err(), Refusal::PerClient(a, 2));
        let _b1 = l.take(b).unwrap();
        assert_eq!(l.take(b).unwrap_err(), Refusal::Total(3));
        drop(a1);
        assert_eq!(l.held(), 2);
        let _b2 = l.take(b).unwrap();
        assert!(l.take(a).is_err());
    }

    #[test]
    fn a_full_server_closes_its_oldest_connection_not_logged_in() {
        let l = limits(2, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = Arc::new(ConnState::new(&l.users));
        let second = Arc::new(ConnState::new(&l.users));
        let _h1 = l.take(a).unwrap();
        l.track(&first);
        let _h2 = l.take(a).unwrap();
        l.track(&second);
        // Full: the oldest that has not logged in goes, the newcomer is taken.
        let _h3 = l.take(b).unwrap();
        assert!(first.evicted.load(Ordering::Relaxed));
        assert!(!second.evicted.load(Ordering::Relaxed));
        // Logged-in connections are never closed for a newcomer.
        second.authenticated("u").unwrap();
        let third = Arc::new(ConnState::new(&l.users));
        third.authenticated("u").unwrap();
        l.track(&third);
        assert_eq!(l.take(b).unwrap_err(), Refusal::Total(2));
        assert!(!second.evicted.load(Ordering::Relaxed));
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_logged_in_connections() {
        let l = limits(10, 10);
        let a = Arc::new(ConnState::new(&l.users));
        let b = Arc::new(ConnState::new(&l.users));
        let c = Arc::new(ConnState::new(&l.users));
        a.authenticated("alice").unwrap();
        a.authenticated("alice").unwrap(); // counted once
        b.authenticated("alice").unwrap();
        assert!(c
            .authenticated("alice")
            .unwrap_err()
            .contains("alice holds 2"));
        c.authenticated("bob").unwrap();
        drop(a);
        let d = Arc::new(ConnState::new(&l.users));
        d.authenticated("alice").unwrap();
    }

    #[test]
    fn refusals_name_the_setting() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(Refusal::PerClient(ip, 5)
            .to_string()
            .contains("server.max_connections_per_client"));
        assert!(Refusal::Total(5)
            .to_string()
            .contains("server.max_connections)"));
    }

    #[test]
    fn released_connections_leave_nothing_held() {
        let l = limits(10, 10);
        let ip: IpAddr = "::1".parse().unwrap();
        let holds: Vec<_> = (0..10).map(|_| l.take(ip).unwrap()).collect();
        drop(holds);
        assert_eq!(l.held(), 0);
        assert!(l.held.lock().unwrap().per_client.is_empty());
    }
}
