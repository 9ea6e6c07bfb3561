//! Serving the API on one listener, with bounds: at most `max_connections` at once (the rest are
//! closed as soon as they are accepted, and counted), a deadline for each request's headers (which
//! is also how long an idle keep-alive connection may stay), and a bounded drain at shutdown.
//! Bodies get their own deadline in the router (`http::read_body_in_time`).
//!
//! `axum::serve` has none of these: 1,100 idle TCP connections took every file descriptor, and the
//! Unix socket and the backups failed with "Too many open files". hyper's own HTTP/1 server does
//! the protocol and the header timeout (`header_read_timeout`, which covers idle keep-alive
//! connections too); this module only decides which connections it gets. Each listener has its
//! own limit, so a flood on the TCP listener never takes the Unix socket's places.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

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
/// Per-connection read buffer cap (hyper's default is ~400 KiB): bounds memory at the limit.
const MAX_BUF: usize = 64 << 10;

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
    let mut last_warning: Option<Instant> = None;
    loop {
        // `accept` retries errors itself (EMFILE: logged, then a pause of a second).
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            // Closing at once frees the descriptor and tells the peer; waiting would leave it
            // in our accept queue holding kernel memory, as the flood wants.
            drop(io);
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    listener = stats.name,
                    limit = limits.max_connections,
                    "API connection limit reached; closing new connections until some end"
                );
                last_warning = Some(Instant::now());
            }
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let service = TowerToHyperService::new(router.clone());
        let (stats, mut stop) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_BUF);
            let conn = http.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(place);
        });
    }
    drop(listener);
    // Every connection task ends within DRAIN of the stop; wait for their places to come back.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), places.acquire_many(all)).await;
}
