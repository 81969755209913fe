//! Connection caps: how many long-lived connections (WebSockets on `/ws` and
//! `/yjs`, SSE streams) may be open at once, in all and per client IP.
//!
//! Over a cap, the request is answered `503 too_many_connections` with
//! `Retry-After`, before any upgrade: nothing is allocated for it, and the
//! connections already open are not touched. (The alternative, accepting the
//! WebSocket and closing it with 1013, costs an upgrade and two tasks per
//! refusal, exactly when the server is busiest.) Short REST requests are not
//! counted.
//!
//! Each admitted connection holds a [`ConnectionPermit`]; dropping it (when
//! the socket task or the SSE body ends) gives the slot back. The client IP
//! comes from the listener (`ConnectInfo<SocketAddr>`, see
//! [`crate::server::run`]), or, when that peer is one of `--trusted-proxies`,
//! from the proxy's forwarding headers (see [`super::client_ip`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use super::{ApiError, AppState, ConnState};

/// Seconds a refused client is asked to wait.
const RETRY_AFTER_SECS: u32 = 5;

/// Open connections, in all and by IP. See the module docs.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only IPs with at least one connection: bounded by `total`.
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl Refused {
    /// The cap's label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerIp => "per_ip",
        }
    }
}

impl ConnectionLimiter {
    /// Caps of `max_total` connections and `max_per_ip` from one IP (0: none).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits one more connection from `ip` (unknown: counted in the total
    /// only), or says which cap it hits.
    ///
    /// # Errors
    /// The cap that is full.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionPermit, Refused> {
        let mut counts = self.counts.lock();
        if self.max_total > 0 && counts.total >= self.max_total {
            return Err(Refused::Total);
        }
        if let Some(ip) = ip {
            let n = counts.per_ip.entry(ip).or_default();
            if self.max_per_ip > 0 && *n >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(ConnectionPermit(Arc::new(PermitInner {
            limiter: self.clone(),
            ip,
        })))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }

    fn release(&self, ip: Option<IpAddr>) {
        let mut counts = self.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = ip {
            if let Entry::Occupied(mut e) = counts.per_ip.entry(ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// One admitted connection; its slot is given back when the last clone drops.
#[derive(Debug, Clone)]
pub struct ConnectionPermit(Arc<PermitInner>);

impl ConnectionPermit {
    /// The client address it is counted under (`None`: unknown).
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.ip
    }
}

#[derive(Debug)]
struct PermitInner {
    limiter: Arc<ConnectionLimiter>,
    ip: Option<IpAddr>,
}

impl Drop for PermitInner {
    fn drop(&mut self) {
        self.limiter.release(self.ip);
    }
}

/// Middleware for the long-lived routes: admits the request under the caps
/// or answers 503. The permit goes into the request's extensions (WebSocket
/// handlers move it into their socket task) and into the response body (an
/// SSE stream holds it until it ends).
pub async fn limit(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| {
            super::client_ip::client_ip(addr.ip(), req.headers(), &app.config.trusted_proxies)
        });
    let permit = match app.conns.acquire(ip) {
        Ok(permit) => permit,
        Err(refused) => {
            crate::metrics::connection_refused(refused.label());
            let message = match refused {
                Refused::Total => format!(
                    "the server has {} connections open, its most; try again later",
                    app.conns.max_total
                ),
                Refused::PerIp => format!(
                    "{} connections from your address are open, the most allowed",
                    app.conns.max_per_ip
                ),
            };
            tracing::debug!(?ip, ?refused, "connection refused");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                message,
            )
            .retry_after(RETRY_AFTER_SECS)
            .into_response();
        }
    };
    req.extensions_mut().insert(permit.clone());
    let conn = req.extensions().get::<Arc<ConnState>>().cloned();
    let response = next.run(req).await;
    let is_stream = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        // An upgrade (its task holds the permit from the extensions) or an
        // error: leave the response as it is.
        return response;
    }
    // The connection carries an SSE stream while the body lives: if it
    // stalls, it is counted as an SSE stall (see `conn_io`).
    let carrying = conn.map(|c| c.sse_stream());
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(futures_util::StreamExt::map(
        body.into_data_stream(),
        move |chunk| {
            let _held = (&permit, &carrying);
            chunk
        },
    ));
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_in_all_and_per_ip_and_permits_give_slots_back() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = limiter.acquire(Some(a)).expect("a1");
        let a2 = limiter.acquire(Some(a)).expect("a2");
        assert_eq!(limiter.acquire(Some(a)).err(), Some(Refused::PerIp));
        let b1 = limiter.acquire(Some(b)).expect("b1");
        assert_eq!(limiter.acquire(Some(b)).err(), Some(Refused::Total));
        assert_eq!(limiter.open(), 3);
        let a1_clone = a1.clone();
        drop(a1);
        assert_eq!(limiter.open(), 3, "a clone still holds the slot");
        drop(a1_clone);
        assert_eq!(limiter.open(), 2);
        let _a3 = limiter.acquire(Some(a)).expect("a has room again");
        drop((a2, b1));
        assert_eq!(limiter.open(), 1);
        assert_eq!(limiter.counts.lock().per_ip.len(), 1);
    }
}
