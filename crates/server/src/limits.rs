//! Flood protection: request rates per client address and per company
//! (token buckets, GCRA from `governor`), a stricter rate for sign-in, a cap
//! on requests in flight, and a time limit per request. Over a limit the
//! answer is 429 (or 503 when the server is full) with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use strongroom_proto::ErrorCode;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::extract::{PeerAddr, TrustedProxies};

/// Limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub per_ip_per_second: u32,
    pub per_company_per_second: u32,
    pub logins_per_ip_per_minute: u32,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

pub struct Limits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_company: DefaultKeyedRateLimiter<i64>,
    logins: DefaultKeyedRateLimiter<IpAddr>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    clock: DefaultClock,
    blocks: Arc<crate::detection::Blocks>,
    now: strongroom_core::clock::SharedClock,
}

/// Distinct addresses tracked before idle buckets are pruned early. Buckets
/// refill within seconds, so pruning keeps the map near the number of
/// addresses active right now.
const PRUNE_ABOVE: usize = 100_000;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub fn new(
        s: LimitSettings,
        blocks: Arc<crate::detection::Blocks>,
        now: strongroom_core::clock::SharedClock,
    ) -> Limits {
        // A burst of twice the rate absorbs a page that loads in parallel.
        let per_second = |n: u32| Quota::per_second(nz(n)).allow_burst(nz(n.saturating_mul(2)));
        Limits {
            per_ip: RateLimiter::keyed(per_second(s.per_ip_per_second)),
            per_company: RateLimiter::keyed(per_second(s.per_company_per_second)),
            logins: RateLimiter::keyed(
                Quota::per_minute(nz(s.logins_per_ip_per_minute))
                    .allow_burst(nz(s.logins_per_ip_per_minute)),
            ),
            in_flight: Arc::new(Semaphore::new(s.max_in_flight.max(1))),
            timeout: s.request_timeout,
            clock: DefaultClock::default(),
            blocks,
            now,
        }
    }

    fn refuse(&self, wait: Duration, what: &str) -> ApiError {
        let secs = wait.as_secs().max(1) as u32;
        ApiError::limited(
            ErrorCode::RateLimited,
            format!("too many requests {what}; retry after {secs} s"),
            secs,
        )
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.per_ip.len() > PRUNE_ABOVE {
            self.per_ip.retain_recent();
        }
        self.per_ip
            .check_key(&ip)
            .map_err(|n| self.refuse(n.wait_time_from(self.clock.now()), "from this address"))
    }

    pub fn check_login(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.logins.len() > PRUNE_ABOVE {
            self.logins.retain_recent();
        }
        self.logins.check_key(&ip).map_err(|n| {
            self.refuse(
                n.wait_time_from(self.clock.now()),
                "to sign in from this address",
            )
        })
    }

    pub fn check_company(&self, company: i64) -> Result<(), ApiError> {
        self.per_company
            .check_key(&company)
            .map_err(|n| self.refuse(n.wait_time_from(self.clock.now()), "for this company"))
    }

    /// Drops the buckets of idle addresses (run periodically).
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.logins.retain_recent();
        self.per_company.retain_recent();
        self.per_ip.shrink_to_fit();
        self.logins.shrink_to_fit();
    }
}

/// The outer layer: a slot among the requests in flight, the per-address
/// rate (and the sign-in rate), and the time limit.
pub async fn flood_guard(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let Ok(_slot) = limits.in_flight.clone().try_acquire_owned() else {
        return ApiError::busy(
            "the server is at its limit of requests in flight; retry shortly",
            1,
        )
        .into_response();
    };
    if let Some(peer) = req.extensions().get::<PeerAddr>().map(|p| p.0.ip()) {
        let trusted = req
            .extensions()
            .get::<TrustedProxies>()
            .cloned()
            .unwrap_or_default();
        let ip = trusted.client_ip(peer, req.headers());
        // Addresses the operator (or a detector on the server's own chain)
        // blocked for the whole server.
        if limits
            .blocks
            .is_blocked(strongroom_core::audit::SERVER_CHAIN, ip, limits.now.now())
        {
            return ApiError::new(
                ErrorCode::Forbidden,
                "access from your address is blocked; contact the operator",
            )
            .into_response();
        }
        if let Err(e) = limits.check_ip(ip) {
            return e.into_response();
        }
        // Both sign-in steps share the per-address sign-in rate, so codes
        // cannot be guessed faster than passwords.
        if req.uri().path().starts_with("/api/v1/auth/login") {
            if let Err(e) = limits.check_login(ip) {
                return e.into_response();
            }
        }
    }
    match tokio::time::timeout(limits.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::busy(
            "the request took too long (a slow upload, or a busy server) and was stopped; retry",
            1,
        )
        .into_response(),
    }
}
