//! Serving a router to clients that may be slow, idle or hostile: at most
//! [`Limits::max_connections`] connections at once, so a flood cannot take the file handles
//! the stores need (at the cap, a connection between requests is closed to make room for a
//! new one, and only when every one has a request under way is the new one closed as it is
//! accepted), a request's head must
//! arrive within [`Limits::header_timeout`] of its first byte (slowloris), and a connection
//! with no request under way is closed after [`Limits::idle_timeout`], as is one whose
//! request takes longer than that to be read and answered, or moves no byte for that long.
//! A listener from [`bind`] queues a burst of connections in the kernel rather than drop them.
//!
//! hyper's own header timeout also runs while a keep-alive connection waits for its next
//! request, which would make the idle timeout as short as the header timeout; so both are
//! kept here, by a watchdog per connection that sees its bytes and its requests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt;

/// What one server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; beyond it, one between requests makes room, or the new one
    /// is closed as soon as accepted.
    pub max_connections: usize,
    /// From a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// How long a connection may wait, between requests, for the next one.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts of what the limits did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because a request's head came too slowly.
    pub header_timeouts: AtomicU64,
    /// Connections closed after waiting idle for `idle_timeout`.
    pub idle_closed: AtomicU64,
    /// Connections between requests closed at the cap to make room for a new one.
    pub evicted: AtomicU64,
}

/// Connections the kernel holds for [`serve`] before it accepts them. A burst beyond the
/// queue has its SYNs dropped, and each client so dropped waits a whole second to try
/// again; tokio's `TcpListener::bind` asks for 128, which a flood of a thousand connections
/// overflows, delaying the clients that arrive with it. Linux caps it at
/// `net.core.somaxconn` (4096 by default).
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Listens on `address` (host:port, names resolved; the first address that binds wins)
/// with an accept queue of [`ACCEPT_BACKLOG`].
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host(address).await? {
        match listen(address) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolved to nothing")
    }))
}

fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As std and tokio do off Windows (where it would let another process take the port):
    // a restarted service rebinds a port still in TIME_WAIT.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then accepts no
/// more connections, lets every open one finish the request it is on, and returns when all
/// are closed (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    counts: Arc<ConnectionCounts>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Mutex::new(OpenConnections::default()));
    let arrivals = Arc::new(Semaphore::new(MAX_WAITING_ARRIVALS));
    let (stopping, stop) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let mut last_refusal_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file handles, most likely: wait a little rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // At the cap, a connection between requests (idle, or on a slow head) makes room:
        // it loses nothing, and a client with a request to make gets served. The newcomer
        // waits for that room in its own task, so a queue of them is taken in at once. When
        // that queue is full, accepting pauses and later newcomers wait in the kernel's
        // backlog instead of being refused: a burst of idle connections must not crowd out
        // a client that has a request to make. While newcomers wait, the next one queues
        // behind them rather than take a place that an eviction freed for one of them.
        let waiting = arrivals.available_permits() < MAX_WAITING_ARRIVALS;
        let mut immediate = if waiting { None } else { permits.clone().try_acquire_owned().ok() };
        let mut arrival = None;
        if immediate.is_none() {
            let slot = tokio::select! {
                () = &mut shutdown => break,
                slot = arrivals.clone().acquire_owned() => slot.ok(),
            };
            if evict_one(&open) {
                arrival = slot;
            } else {
                // Every connection busy; a place may still have come free since.
                immediate = permits.clone().try_acquire_owned().ok();
            }
        }
        if immediate.is_none() && arrival.is_none() {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            if last_refusal_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                last_refusal_logged = Some(Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached with every connection busy; closing new ones"
                );
            }
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let counts = counts.clone();
        let stop = stop.clone();
        let open = open.clone();
        let permits = permits.clone();
        connections.spawn(async move {
            let permit = match immediate {
                Some(permit) => permit,
                None => {
                    let room = tokio::time::timeout(EVICTION_WAIT, permits.acquire_owned()).await;
                    drop(arrival);
                    match room {
                        Ok(Ok(permit)) => permit,
                        _ => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            };
            let (activity, evict) = (Arc::new(Activity::new()), Arc::new(Notify::new()));
            let id = locked(&open).add(activity.clone(), evict.clone());
            counts.open.fetch_add(1, Ordering::Relaxed);
            let watched = Watched { activity, evict, stop };
            connection(stream, router, limits, &counts, watched).await;
            locked(&open).by_id.remove(&id);
            counts.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
}

/// How long a newcomer waits for an evicted connection to give up its place.
const EVICTION_WAIT: Duration = Duration::from_millis(200);
/// Newcomers waiting for room at once; beyond, accepting pauses (each holds a handle).
const MAX_WAITING_ARRIVALS: usize = 64;

/// The open connections, so that at the cap one between requests can be asked to leave.
#[derive(Default)]
struct OpenConnections {
    next: u64,
    by_id: HashMap<u64, (Arc<Activity>, Arc<Notify>)>,
}

impl OpenConnections {
    fn add(&mut self, activity: Arc<Activity>, evict: Arc<Notify>) -> u64 {
        self.next += 1;
        self.by_id.insert(self.next, (activity, evict));
        self.next
    }
}

fn locked(open: &Mutex<OpenConnections>) -> std::sync::MutexGuard<'_, OpenConnections> {
    // The map holds no invariant a panic could break halfway.
    open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Asks the connection quiet for longest among those with no request under way to close;
/// false when every one is busy. The quietest is the least likely to start a request before
/// it goes (which would spare it and leave the newcomer without room): a client holding a
/// connection open doing nothing, rather than a busy client between two requests.
fn evict_one(open: &Mutex<OpenConnections>) -> bool {
    let open = locked(open);
    let quiet_since = |activity: &Activity| {
        activity.opened + Duration::from_millis(activity.last_io.load(Ordering::Relaxed))
    };
    let quietest = open
        .by_id
        .values()
        .filter(|(activity, _)| {
            activity.in_flight.load(Ordering::Relaxed) == 0
                && !activity.leaving.load(Ordering::Relaxed)
        })
        .min_by_key(|(activity, _)| quiet_since(activity));
    match quietest {
        Some((activity, evict)) => {
            activity.leaving.store(true, Ordering::Relaxed);
            evict.notify_one();
            true
        }
        None => false,
    }
}

/// What one connection's task is told from outside: its activity, to be judged by, and the
/// requests to leave (eviction at the cap, the server stopping).
struct Watched {
    activity: Arc<Activity>,
    evict: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

/// What the watchdog of one connection sees: milliseconds since the connection opened.
struct Activity {
    /// When the connection opened; the times below count from it.
    opened: Instant,
    /// When the head now arriving began (the connection's opening, for its first request);
    /// 0 when none is arriving.
    head_started: AtomicU64,
    /// When the last request was answered, or the connection opened.
    idle_since: AtomicU64,
    /// When bytes last moved either way.
    last_io: AtomicU64,
    /// When the oldest request being answered arrived.
    request_started: AtomicU64,
    /// Requests being read or answered, until their answer's last byte is written.
    in_flight: AtomicUsize,
    /// Asked to make room; not chosen again while it goes.
    leaving: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            // A client that connects and sends nothing is a slow head, not an idle client.
            head_started: AtomicU64::new(1),
            idle_since: AtomicU64::new(1),
            last_io: AtomicU64::new(1),
            request_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            leaving: AtomicBool::new(false),
        }
    }
}

/// What the watchdog decided.
enum Verdict {
    Fine,
    /// Close now, counting why.
    Cut,
    /// Close once the request under way, if any, is answered.
    Close,
}

fn judge(activity: &Activity, limits: &Limits, counts: &ConnectionCounts, now: u64) -> Verdict {
    let over = |since: u64, limit: Duration| now.saturating_sub(since) > millis(limit);
    if activity.in_flight.load(Ordering::Relaxed) > 0 {
        // A request whose body trickles in, or whose answer the client does not read, holds
        // the connection no longer than an idle one may.
        let started = activity.request_started.load(Ordering::Relaxed);
        let stalled = over(activity.last_io.load(Ordering::Relaxed), limits.idle_timeout);
        if stalled || over(started, limits.idle_timeout) {
            counts.idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("closing a connection whose request took longer than the idle timeout");
            return Verdict::Cut;
        }
        return Verdict::Fine;
    }
    let head_started = activity.head_started.load(Ordering::Relaxed);
    if head_started > 0 {
        if over(head_started, limits.header_timeout) {
            counts.header_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("closing a connection whose request head came too slowly");
            return Verdict::Cut;
        }
        return Verdict::Fine;
    }
    if over(activity.idle_since.load(Ordering::Relaxed), limits.idle_timeout) {
        counts.idle_closed.fetch_add(1, Ordering::Relaxed);
        return Verdict::Close;
    }
    Verdict::Fine
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    counts: &ConnectionCounts,
    watched: Watched,
) {
    let Watched { activity, evict, mut stop } = watched;
    let opened = activity.opened;
    let io = TokioIo::new(Counted { inner: stream, activity: activity.clone(), opened });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            // The head is complete: this is a request now, not a slow client.
            let now = millis(opened.elapsed());
            activity.head_started.store(0, Ordering::Relaxed);
            if activity.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
                activity.request_started.store(now, Ordering::Relaxed);
            }
            let answered = Answered { activity: activity.clone(), opened };
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                // Answered once the answer's last byte is written, not when the handler ends.
                response.map(|response| response.map(|body| Guarded { body, _answered: answered }))
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The watchdog below keeps the header timeout; hyper's would also cut idle
        // keep-alive connections short.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(served);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stopping = false;
    // When a graceful close began: a client that does not let it finish is cut.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut served => return,
            () = evict.notified() => {
                // Only if still between requests: one may have begun since it was chosen.
                if activity.in_flight.load(Ordering::Relaxed) == 0 {
                    counts.evicted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                activity.leaving.store(false, Ordering::Relaxed);
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                // Between requests (idle, or a head still arriving) there is nothing to finish.
                if activity.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                if changed.is_ok() {
                    served.as_mut().graceful_shutdown();
                }
            }
            _ = tick.tick() => {
                if closing.is_some_and(|since| since.elapsed() > limits.header_timeout) {
                    return;
                }
                match judge(&activity, &limits, counts, millis(opened.elapsed())) {
                    Verdict::Fine => {}
                    Verdict::Cut => return,
                    Verdict::Close if closing.is_none() => {
                        closing = Some(Instant::now());
                        served.as_mut().graceful_shutdown();
                    }
                    Verdict::Close => {}
                }
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Marks a request answered when dropped: with its answer's body, once hyper has written
/// it all, or earlier if the connection fails.
struct Answered {
    activity: Arc<Activity>,
    opened: Instant,
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.activity.idle_since.store(millis(self.opened.elapsed()), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, carrying its request's [`Answered`] until it is dropped.
struct Guarded {
    body: axum::body::Body,
    _answered: Answered,
}

impl hyper::body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's stream, noting when bytes move and when a new request head begins.
struct Counted {
    inner: TcpStream,
    activity: Arc<Activity>,
    opened: Instant,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = millis(self.opened.elapsed());
            self.activity.last_io.store(now, Ordering::Relaxed);
            if self.activity.in_flight.load(Ordering::Relaxed) == 0
                && self.activity.head_started.load(Ordering::Relaxed) == 0
            {
                self.activity.head_started.store(now, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_io.store(millis(self.opened.elapsed()), Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_io.store(millis(self.opened.elapsed()), Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How long a read may take, beyond the `wait_ms` it asked to wait for a view.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeout(pub Duration);

/// How long a `GET` or `HEAD` may take: [`ReadTimeout`] plus the `wait_ms` it asked for (at
/// most 30 s). A read not answered by then gets 503 with `Retry-After`
/// ([`crate::EveryRequest`]). Commands are not cut short: one stopped mid-append could be
/// written and answered as failed; the store's own timeouts bound them.
pub(crate) fn read_bound(limit: ReadTimeout, request: &axum::extract::Request) -> Duration {
    let asked = request
        .uri()
        .query()
        .and_then(|query| {
            query.split('&').find_map(|pair| pair.strip_prefix("wait_ms=")?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        .min(crate::wait::MAX_WAIT_MS);
    limit.0 + Duration::from_millis(asked)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a bare route, to test the middleware alone
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;

    fn slow_router() -> Router {
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        };
        let around = crate::EveryRequest {
            metrics: crate::HttpMetrics::new(),
            shutdown: crate::Shutdown::new(),
            read_timeout: ReadTimeout(Duration::from_millis(100)),
        };
        Router::new().route("/slow", get(slow).post(slow)).layer(around)
    }

    async fn status(method: &str, uri: &str) -> StatusCode {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        slow_router().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_read_past_its_timeout_is_503_but_a_wait_it_asked_for_and_commands_are_not() {
        assert_eq!(status("GET", "/slow").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status("GET", "/slow?wait_ms=1000").await, StatusCode::OK);
        assert_eq!(status("POST", "/slow").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_to_be_accepted_rather_than_being_dropped() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Nothing accepts, so every connection waits in the kernel's queue. Past the queue's
        // end a connection gets no answer and would wait a second to try again; 600 is far
        // past tokio's default of 128 and within a 1024 file-handle limit. The kernel caps
        // the queue at net.core.somaxconn, which older kernels set to 128.
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        if cap < 600 {
            eprintln!("net.core.somaxconn is {cap}: queueing only that many connections");
        }
        let mut held = Vec::new();
        for n in 0..600.min(cap) {
            let connect = TcpStream::connect(address);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(stream)) => held.push(stream),
                other => panic!("connection {n} was not queued: {other:?}"),
            }
        }
    }
}
