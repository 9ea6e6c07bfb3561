//! Serving the API on one listener, with bounds: at most `max_connections` at once, a deadline for
//! each request's headers (which is also how long an idle keep-alive connection may stay), and a
//! bounded drain at shutdown. Bodies get their own deadline in the router
//! (`http::read_body_in_time`).
//!
//! A response that cannot be written for [`WRITE_STALL`] (the client stopped reading) ends its
//! connection (`tokio-io-timeout`'s write timeout on the socket).
//!
//! At the limit, a new connection takes the place of the connection that has been idle longest
//! (no request in progress, none for [`EVICTABLE_AFTER`]); only when every place is busy is it
//! closed on arrival. So a flood of idle connections churns through itself instead of locking
//! out the next real client, who sends its request as soon as it connects.
//!
//! `axum::serve` has none of these: 1,100 idle TCP connections took every file descriptor, and the
//! Unix socket and the backups failed with "Too many open files". hyper's own HTTP/1 server does
//! the protocol and the header timeout (`header_read_timeout`, which covers idle keep-alive
//! connections too); this module only decides which connections it gets. Each listener has its
//! own limit, so a flood on the TCP listener never takes the Unix socket's places.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;

use super::stopped;
use crate::metrics::ListenerStats;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is closed right after it is accepted.
    pub max_connections: usize,
    /// From the connection's start, or the end of its previous response, to a complete request
    /// head. A client that sends nothing, or headers byte by byte, is closed after this.
    pub header_timeout: Duration,
}

/// The Unix socket: local tools and operators, who may open many short connections.
pub const UNIX: Limits = Limits {
    max_connections: 256,
    header_timeout: Duration::from_secs(10),
};

/// The optional TCP listener: remote scrapers and clients with the token; fewer places and a
/// shorter patience, so a flood of idle peers is shed faster.
pub const TCP: Limits = Limits {
    max_connections: 64,
    header_timeout: Duration::from_secs(5),
};

/// At shutdown, how long open connections get to finish their request before they are dropped.
const DRAIN: Duration = Duration::from_secs(5);
/// A response write that makes no progress this long ends the connection: a client that asks for
/// an archive and never reads would otherwise hold its place for ever.
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// Per-connection read buffer cap (hyper's default is ~400 KiB): bounds memory at the limit.
const MAX_BUF: usize = 64 << 10;
/// A connection idle this long may be closed to make room for a new one. A real client sends its
/// request within moments of connecting, so its fresh connection is never the one taken.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(1);
/// How long a new connection waits for the place an evicted one frees.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// One open connection, as the accept loop sees it.
struct Slot {
    /// Requests in progress: from the request head to the end of the response body.
    in_flight: AtomicUsize,
    /// When it last became idle, in milliseconds since the listener started.
    idle_since: AtomicU64,
    /// Chosen to make room; told through `close`.
    evicted: AtomicBool,
    close: Notify,
}

/// The open connections of one listener.
struct Slots {
    epoch: Instant,
    open: Mutex<Vec<Arc<Slot>>>,
}

impl Slots {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            evicted: AtomicBool::new(false),
            close: Notify::new(),
        });
        self.lock().push(slot.clone());
        slot
    }

    fn remove(&self, slot: &Arc<Slot>) {
        self.lock().retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Tells the connection idle longest (at least [`EVICTABLE_AFTER`]) to close; whether one was.
    fn evict_idlest(&self) -> bool {
        let now = self.now_ms();
        let min_idle = u64::try_from(EVICTABLE_AFTER.as_millis()).unwrap_or(u64::MAX);
        let open = self.lock();
        let idlest = open
            .iter()
            .filter(|s| {
                s.in_flight.load(Ordering::Acquire) == 0 && !s.evicted.load(Ordering::Relaxed)
            })
            .map(|s| (s.idle_since.load(Ordering::Relaxed), s))
            .filter(|(since, _)| now.saturating_sub(*since) >= min_idle)
            .min_by_key(|(since, _)| *since);
        match idlest {
            Some((_, slot)) => {
                slot.evicted.store(true, Ordering::Relaxed);
                slot.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a request in progress on its slot until dropped (with the response body).
struct InFlight {
    slot: Arc<Slot>,
    slots: Arc<Slots>,
}

impl InFlight {
    fn start(slot: &Arc<Slot>, slots: &Arc<Slots>) -> InFlight {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            slot: slot.clone(),
            slots: slots.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.slot
            .idle_since
            .store(self.slots.now_ms(), Ordering::Relaxed);
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on `listener` until `stop` is set, then drains (bounded by [`DRAIN`]).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
{
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let slots = Arc::new(Slots {
        epoch: Instant::now(),
        open: Mutex::new(Vec::new()),
    });
    let mut last_warning: Option<Instant> = None;
    loop {
        // `accept` retries errors itself (EMFILE: logged, then a pause of a second).
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        let place = match places.clone().try_acquire_owned() {
            Ok(place) => Some(place),
            Err(_) if slots.evict_idlest() => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tokio::time::timeout(EVICTION_WAIT, places.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(place) = place else {
            // Every place is busy: closing at once frees the descriptor and tells the peer.
            drop(io);
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    listener = stats.name,
                    limit = limits.max_connections,
                    "API connection limit reached with every connection busy; closing new ones"
                );
                last_warning = Some(Instant::now());
            }
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let slot = slots.add();
        let service = {
            let (router, slot, slots) = (router.clone(), slot.clone(), slots.clone());
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let busy = InFlight::start(&slot, &slots);
                let response = router.clone().oneshot(req.map(Body::new));
                async move {
                    let response = response.await?;
                    // The request counts as in progress until its response body is dropped.
                    Ok::<_, Infallible>(response.map(|b| {
                        Body::new(b.map_frame(move |frame| {
                            let _ = &busy;
                            frame
                        }))
                    }))
                }
            })
        };
        let (stats, slots, mut stop) = (stats.clone(), slots.clone(), stop.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_BUF);
            // Only writes are timed here: reads are hyper's business (the header timeout), and a
            // request waiting for a backup (`?wait=true`) legitimately reads nothing for minutes.
            let mut io = tokio_io_timeout::TimeoutStream::new(io);
            io.set_write_timeout(Some(WRITE_STALL));
            let conn = http.serve_connection(TokioIo::new(Box::pin(io)), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = slot.close.notified() => {
                    // Chosen by `evict_idlest`. Nothing is in progress unless a request arrived
                    // since (requests run inside `conn`, which is not being polled now), so the
                    // connection is dropped, which closes it even with half a request head read;
                    // a request that did arrive is finished first, within DRAIN.
                    if slot.in_flight.load(Ordering::Acquire) > 0 {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(DRAIN, conn).await;
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
            slots.remove(&slot);
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(place);
        });
    }
    drop(listener);
    // Every connection task ends within DRAIN of the stop; wait for their places to come back.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), places.acquire_many(all)).await;
}
