//! The rate limit on failed logins: per client address and overall, in fixed one-minute windows,
//! with a bounded number of tracked addresses. Sans-IO: every method takes `now`.
//!
//! A fixed window per key is a few lines and enough here: the point is to make password guessing
//! slow (5 guesses a minute from one address, 60 from everyone), not to shape traffic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed logins one client address may make per window.
pub(crate) const FAILURES_PER_ADDRESS: u32 = 5;
/// Failed logins all clients together may make per window; past it every login waits.
pub(crate) const FAILURES_OVERALL: u32 = 60;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses tracked at once (about 64 bytes each).
pub(crate) const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl Window {
    fn current(self, now: Instant) -> Option<Window> {
        (now.saturating_duration_since(self.start) < WINDOW).then_some(self)
    }

    fn retry_after(self, now: Instant) -> Duration {
        WINDOW.saturating_sub(now.saturating_duration_since(self.start))
    }
}

/// Where a login attempt comes from, as the limiter counts it: an IPv4 address, or the /64
/// network of an IPv6 address (one host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpAddr);

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

/// Failed logins, per client and overall.
#[derive(Debug, Default)]
pub(crate) struct LoginLimiter {
    clients: HashMap<ClientKey, Window>,
    overall: Option<Window>,
}

impl LoginLimiter {
    /// `Err(retry_after)` if a login from `client` must not even be tried now: the client or
    /// everyone together used up the window's failures.
    pub(crate) fn check(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        let exhausted = |window: Option<Window>, limit: u32| {
            window
                .and_then(|w| w.current(now))
                .filter(|w| w.failures >= limit)
                .map(|w| w.retry_after(now).max(Duration::from_secs(1)))
        };
        let client = exhausted(self.clients.get(&client).copied(), FAILURES_PER_ADDRESS);
        match client.max(exhausted(self.overall, FAILURES_OVERALL)) {
            Some(retry_after) => Err(retry_after),
            None => Ok(()),
        }
    }

    /// Forgets the client's failures after it logged in.
    pub(crate) fn succeeded(&mut self, client: ClientKey) {
        self.clients.remove(&client);
    }

    /// Counts a failed login from `client`.
    pub(crate) fn failed(&mut self, client: ClientKey, now: Instant) {
        let bump = |window: Option<Window>| match window.and_then(|w| w.current(now)) {
            Some(w) => Window { start: w.start, failures: w.failures.saturating_add(1) },
            None => Window { start: now, failures: 1 },
        };
        self.overall = Some(bump(self.overall));
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_TRACKED {
            self.clients.retain(|_, w| w.current(now).is_some());
            if self.clients.len() >= MAX_TRACKED {
                // Still full of live windows: this client is held by the overall limit only.
                return;
            }
        }
        let window = bump(self.clients.get(&client).copied());
        self.clients.insert(client, window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> ClientKey {
        ClientKey::of(text.parse().unwrap())
    }

    #[test]
    fn five_failures_a_minute_per_address_then_wait_for_the_window() {
        let mut limiter = LoginLimiter::default();
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for i in 0..FAILURES_PER_ADDRESS {
            assert_eq!(limiter.check(a, t0), Ok(()), "attempt {i}");
            limiter.failed(a, t0 + Duration::from_secs(u64::from(i)));
        }
        assert_eq!(limiter.check(a, t0 + Duration::from_secs(10)), Err(Duration::from_secs(50)));
        assert_eq!(limiter.check(b, t0 + Duration::from_secs(10)), Ok(()), "another address");
        assert_eq!(limiter.check(a, t0 + WINDOW), Ok(()), "a new window");
        limiter.failed(b, t0);
        limiter.succeeded(b);
        assert!(!limiter.clients.contains_key(&b));
    }

    #[test]
    fn the_overall_limit_holds_many_addresses_and_memory_is_bounded() {
        let mut limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..FAILURES_OVERALL {
            let client = ClientKey::of(std::net::Ipv4Addr::from(0x0a00_0000 + i).into());
            assert_eq!(limiter.check(client, t0), Ok(()));
            limiter.failed(client, t0);
        }
        assert_eq!(limiter.check(ip("198.51.100.7"), t0), Err(WINDOW));
        for i in 0..(MAX_TRACKED as u32 + 100) {
            limiter.failed(ClientKey::of(std::net::Ipv4Addr::from(i).into()), t0);
        }
        assert!(limiter.clients.len() <= MAX_TRACKED);
        // Expired windows make room again.
        limiter.failed(ip("203.0.113.9"), t0 + WINDOW);
        assert_eq!(limiter.clients.len(), 1);
    }

    #[test]
    fn an_ipv6_client_is_its_64_network() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::2"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
    }
}
