//! The connections of `segq serve`: what a client may hold before its
//! request is authenticated is bounded in time, in number and in memory.
//!
//! - **Header read timeout**: a connection sends a request's headers within
//!   [`Limits::header_read_timeout`] of its accept (or of the first byte of
//!   a request that follows another), or it is closed.
//! - **Idle timeout**: a kept-alive connection waits at most
//!   [`Limits::idle_timeout`] for its next request.
//! - **Body read timeout and minimum rate**: a request body's next part
//!   arrives within [`Limits::body_read_timeout`], and once that grace has
//!   passed the body keeps an average of [`Limits::min_body_bytes_per_sec`];
//!   otherwise the request is answered 408 and the connection closed.
//! - **Connection limit**: at most [`Limits::max_connections`] are open.
//!   Past it the server stops accepting (new connections wait in the
//!   kernel's queue) and closes the connection that has waited longest for
//!   its next request, or that reads an unauthenticated body, to make room;
//!   when none does, the new connection waits for a slot.
//! - **Body buffering**: the partner endpoints read their body before its
//!   credentials; what they hold, all requests together, is bounded by
//!   [`BodyBudget`] (nothing is reserved from a declared `Content-Length`).
//!
//! The watchdog of each connection (its task, beside hyper's connection
//! future) enforces the first two and the eviction; [`TimedBody`] the
//! third. `GET /metrics` shows the open connections, the buffered body
//! bytes and the connections closed by each limit.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::engine::Config;

/// The connection limits (see the module's documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest wait for a request's headers.
    pub header_read_timeout: Duration,
    /// The longest wait for the next part of a request's body.
    pub body_read_timeout: Duration,
    /// 0 for no minimum.
    pub min_body_bytes_per_sec: u64,
    /// The longest a connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
    /// The partner request body bytes held at once, over every request.
    pub max_buffered_body_bytes: usize,
}

impl Limits {
    /// The configuration's limits.
    pub fn from_config(c: &Config) -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(c.body_read_timeout_secs),
            min_body_bytes_per_sec: c.min_body_bytes_per_sec,
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            max_connections: c.max_connections,
            max_buffered_body_bytes: c.max_buffered_body_bytes,
        }
    }
}

/// Why the server closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    HeaderTimeout,
    IdleTimeout,
    BodyTimeout,
    Evicted,
}

impl Closed {
    pub const ALL: [Closed; 4] = [
        Closed::HeaderTimeout,
        Closed::IdleTimeout,
        Closed::BodyTimeout,
        Closed::Evicted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::BodyTimeout => "body_timeout",
            Closed::Evicted => "evicted",
        }
    }
}

/// The gauges and counters of the connection layer, and the body budget.
#[derive(Debug)]
pub(crate) struct ConnStats {
    open: AtomicUsize,
    closed: [AtomicU64; 4],
    pub budget: BodyBudget,
}

impl ConnStats {
    pub fn new(max_buffered_body_bytes: usize) -> Self {
        ConnStats {
            open: AtomicUsize::new(0),
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
            budget: BodyBudget::new(max_buffered_body_bytes),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    pub fn closed(&self, why: Closed) -> u64 {
        self.closed[why as usize].load(Relaxed)
    }

    pub fn record_closed(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Relaxed);
    }
}

/// Request body bytes the partner endpoints may hold at once, shared by
/// every request: a body takes its bytes as they arrive and gives them
/// back when its request is done; a body that would pass the budget waits.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    total: usize,
    sem: Arc<Semaphore>,
}

/// Bytes taken from the [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct BodyPermit(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            total,
            sem: Arc::new(Semaphore::new(total)),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.total - self.sem.available_permits()
    }

    pub fn empty_permit(&self) -> BodyPermit {
        BodyPermit(None)
    }

    /// Adds `n` bytes to `permit`, waiting while the budget is spent.
    pub async fn take(&self, permit: &mut BodyPermit, n: usize) {
        let mut left = n;
        while left > 0 {
            let step = left.min(u32::MAX as usize).min(self.total);
            let Ok(p) = self.sem.clone().acquire_many_owned(step as u32).await else {
                // Never closed.
                return;
            };
            match &mut permit.0 {
                Some(held) => held.merge(p),
                None => permit.0 = Some(p),
            }
            left -= step;
        }
    }
}

/// A body that did not arrive in time (see [`TimedBody`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(crate) struct BodyTimeout;

/// Whether a body error is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body with a read timeout and a minimum average rate. The
/// clock starts when the handler first reads it.
pub(crate) struct TimedBody {
    inner: Body,
    timeout: Duration,
    min_rate: u64,
    started: Option<Instant>,
    last: Instant,
    received: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    conn: Option<Arc<ConnState>>,
}

impl TimedBody {
    pub fn new<B>(inner: B, limits: &Limits, conn: Option<Arc<ConnState>>) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        TimedBody {
            inner: Body::new(inner),
            timeout: limits.body_read_timeout,
            min_rate: limits.min_body_bytes_per_sec,
            started: None,
            last: Instant::now(),
            received: 0,
            sleep: None,
            conn,
        }
    }

    fn deadline(&self) -> Instant {
        let stall = self.last + self.timeout;
        match (self.started, self.min_rate) {
            (Some(start), rate) if rate > 0 => {
                let earned = Duration::from_secs_f64(self.received as f64 / rate as f64);
                stall.min(start + self.timeout + earned)
            }
            _ => stall,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.started.is_none() {
            let now = Instant::now();
            this.started = Some(now);
            this.last = now;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.last = Instant::now();
                }
                this.sleep = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(this.deadline());
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    if let Some(c) = &this.conn {
                        c.body_timed_out.store(true, Relaxed);
                    }
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the watchdog of one connection knows of it.
#[derive(Debug)]
pub(crate) struct ConnState {
    id: u64,
    opened: Instant,
    /// Requests begun and not finished (the response body sent).
    busy: AtomicUsize,
    /// Requests begun.
    served: AtomicU64,
    /// Milliseconds since `opened` when the last request finished (or 0).
    idle_since: AtomicU64,
    /// Bytes read from the socket, and their count when it went idle.
    bytes_read: AtomicU64,
    bytes_at_idle: AtomicU64,
    /// Milliseconds since `opened` of the first byte of the next request,
    /// or `NONE`.
    first_byte: AtomicU64,
    /// Milliseconds since `opened` when the handler began reading a body
    /// whose credentials are not checked yet, or `NONE`.
    unauthenticated_body: AtomicU64,
    body_timed_out: AtomicBool,
    evict: AtomicBool,
    wake: Notify,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn new(id: u64) -> Self {
        ConnState {
            id,
            opened: Instant::now(),
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_at_idle: AtomicU64::new(0),
            first_byte: AtomicU64::new(NONE),
            unauthenticated_body: AtomicU64::new(NONE),
            body_timed_out: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn begin(&self) {
        self.busy.fetch_add(1, Relaxed);
        self.served.fetch_add(1, Relaxed);
        self.first_byte.store(NONE, Relaxed);
    }

    fn end(&self) {
        if self.busy.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Relaxed);
            self.bytes_at_idle
                .store(self.bytes_read.load(Relaxed), Relaxed);
            self.first_byte.store(NONE, Relaxed);
            self.unauthenticated_body.store(NONE, Relaxed);
        }
        self.wake.notify_one();
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.bytes_read.fetch_add(n as u64, Relaxed);
        if self.busy.load(Relaxed) == 0 && self.first_byte.load(Relaxed) == NONE {
            self.first_byte.store(self.now_ms(), Relaxed);
        }
    }

    /// Marks (or unmarks) the reading of a body whose credentials are not
    /// checked yet: such a connection may be closed to make room.
    pub fn reading_unauthenticated_body(&self, on: bool) {
        let v = if on { self.now_ms() } else { NONE };
        self.unauthenticated_body.store(v, Relaxed);
    }

    /// When the watchdog closes the connection, and why; `None` while a
    /// request is being handled.
    fn deadline(&self, l: &Limits) -> Option<(Instant, Closed)> {
        if self.busy.load(Relaxed) > 0 {
            return None;
        }
        let first = self.first_byte.load(Relaxed);
        if first != NONE {
            return Some((
                self.at(first) + l.header_read_timeout,
                Closed::HeaderTimeout,
            ));
        }
        let idle = self.at(self.idle_since.load(Relaxed));
        if self.served.load(Relaxed) == 0 {
            Some((idle + l.header_read_timeout, Closed::HeaderTimeout))
        } else {
            Some((idle + l.idle_timeout, Closed::IdleTimeout))
        }
    }

    /// Since when the connection has waited for a request or read an
    /// unauthenticated body: eviction candidates, oldest first.
    fn waiting_since(&self) -> Option<u64> {
        if self.evict.load(Relaxed) {
            return None;
        }
        if self.busy.load(Relaxed) == 0 {
            let first = self.first_byte.load(Relaxed);
            return Some(if first != NONE {
                first
            } else {
                self.idle_since.load(Relaxed)
            });
        }
        let b = self.unauthenticated_body.load(Relaxed);
        (b != NONE).then_some(b)
    }
}

/// Ends a request when dropped (with the response body, or with the
/// handler's future if the connection goes first).
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that holds its request's [`RequestGuard`].
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that counts what it reads for its watchdog.
struct CountingStream {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.state.on_read(buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The open connections, for eviction.
#[derive(Default)]
struct Table {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Table {
    fn insert(&self) -> Arc<ConnState> {
        let state = Arc::new(ConnState::new(self.next.fetch_add(1, Relaxed)));
        self.lock().insert(state.id, state.clone());
        state
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection that has waited longest for a request (or
    /// read an unauthenticated body); false if none does.
    fn evict_one(&self) -> bool {
        let conns = self.lock();
        let victim = conns
            .values()
            .filter_map(|c| {
                c.waiting_since()
                    .map(|since| (c.opened + Duration::from_millis(since), c))
            })
            .min_by_key(|(at, _)| *at)
            .map(|(_, c)| c.clone());
        drop(conns);
        match victim {
            Some(c) => {
                c.evict.store(true, Relaxed);
                c.wake.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Accepts and serves connections on `listener` with `limits` until
/// `shutdown` resolves; then lets open requests finish and returns once
/// every connection is closed.
pub(crate) async fn run<F>(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let table = Arc::new(Table::default());
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    let http = Arc::new(http);

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.as_mut() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or a connection reset before it
                    // was accepted: make room and go on.
                    if matches!(e.raw_os_error(), Some(23 | 24)) {
                        table.evict_one();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                table.evict_one();
                tokio::select! {
                    () = shutdown.as_mut() => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = table.insert();
        stats.open.fetch_add(1, Relaxed);
        let io = hyper_util::rt::TokioIo::new(CountingStream {
            inner: stream,
            state: state.clone(),
        });
        let svc = service(app.clone(), limits.clone(), state.clone(), peer);
        let task = connection(
            http.clone(),
            io,
            svc,
            state.clone(),
            limits.clone(),
            stats.clone(),
            stop_rx.clone(),
        );
        let table = table.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            task.await;
            table.remove(state.id);
            stats.open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it ends.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<hyper::Response<GuardedBody>, std::convert::Infallible>> + Send>,
>;

/// The router behind the request bookkeeping: the body gets its timeouts,
/// the response body the guard that ends the request.
struct Service {
    app: Router,
    limits: Arc<Limits>,
    state: Arc<ConnState>,
    /// The connection's peer, given to every request as axum's
    /// `ConnectInfo<SocketAddr>` (the audit log's client address).
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service {
    type Response = hyper::Response<GuardedBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> ResponseFuture {
        use tower::ServiceExt;
        self.state.begin();
        let guard = RequestGuard(self.state.clone());
        let conn = self.state.clone();
        let mut req: Request =
            req.map(|b| Body::new(TimedBody::new(b, &self.limits, Some(conn.clone()))));
        req.extensions_mut().insert(ConnHandle(conn));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(async move {
            let resp: Response = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

fn service(app: Router, limits: Arc<Limits>, state: Arc<ConnState>, peer: SocketAddr) -> Service {
    Service {
        app,
        limits,
        state,
        peer,
    }
}

/// The connection a request came on (a request extension).
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(pub Arc<ConnState>);

/// Serves one connection, closing it when its watchdog says so.
async fn connection(
    http: Arc<hyper::server::conn::http1::Builder>,
    io: hyper_util::rt::TokioIo<CountingStream>,
    svc: Service,
    state: Arc<ConnState>,
    limits: Arc<Limits>,
    stats: Arc<ConnStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let conn = http.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    // One timer, armed for the next deadline only when it is earlier than
    // the one armed: a deadline that moved later (the next request of a
    // kept-alive connection) is found when the armed one passes, so a busy
    // connection touches the timer once per timeout, not once per request.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    let mut sleep = std::pin::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        if state.evict.load(Relaxed) {
            stats.record_closed(Closed::Evicted);
            return;
        }
        if let Some((at, _)) = state.deadline(&limits) {
            if armed.is_none_or(|a| at < a) {
                sleep.as_mut().reset(at.into());
                armed = Some(at);
            }
        }
        tokio::select! {
            _ = conn.as_mut() => {
                if state.body_timed_out.load(Relaxed) {
                    stats.record_closed(Closed::BodyTimeout);
                }
                return;
            }
            () = sleep.as_mut(), if armed.is_some() => {
                armed = None;
                // Still due (the state may have moved on meanwhile)?
                if let Some((at, why)) = state.deadline(&limits) {
                    if Instant::now() >= at {
                        stats.record_closed(why);
                        return;
                    }
                }
            }
            () = state.wake.notified() => {}
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
