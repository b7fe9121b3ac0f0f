//! Login sessions, kept on the server: a random 256-bit id in the cookie, and here only its
//! SHA-256 (so neither a look-up's timing nor a memory dump gives out a usable id), with the
//! session's CSRF token and its idle and absolute expiry. Sans-IO: every method takes `now`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Bytes of a session id, of a CSRF token and of an API token: 256 bits.
pub(crate) const SECRET_LEN: usize = 32;

/// A fresh random secret, hex-encoded (64 characters); `None` if the system's random source
/// failed, which callers treat as a server error.
pub(crate) fn random_secret() -> Option<String> {
    let mut bytes = [0u8; SECRET_LEN];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// The SHA-256 of a presented secret: what sessions are keyed by and API token hashes are.
pub(crate) fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Which session a request belongs to: the SHA-256 of its cookie's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key of the session whose cookie carries `id`.
    pub(crate) fn of(id: &str) -> SessionKey {
        SessionKey(sha256(id))
    }

    /// The first 8 hex digits of the key (a hash of the cookie): names the session in logs
    /// without revealing its cookie.
    pub(crate) fn short_id(&self) -> String {
        hex::encode(self.0.get(..4).unwrap_or_default())
    }
}

#[derive(Debug)]
struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Lifetimes and the cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// A session unused this long is gone.
    pub(crate) idle: Duration,
    /// A session is gone this long after the login, used or not.
    pub(crate) absolute: Duration,
    /// Most sessions at once; a login beyond it ends the least recently used one.
    pub(crate) max: usize,
}

/// The open sessions.
#[derive(Debug)]
pub(crate) struct SessionStore {
    limits: SessionLimits,
    sessions: HashMap<SessionKey, Session>,
}

/// A session just opened: the id for the cookie and the CSRF token for the page.
pub(crate) struct NewSession {
    pub(crate) id: String,
    pub(crate) csrf: String,
}

impl SessionStore {
    pub(crate) fn new(limits: SessionLimits) -> SessionStore {
        SessionStore { limits, sessions: HashMap::new() }
    }

    fn live(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.last_used) < self.limits.idle
            && now.saturating_duration_since(session.created) < self.limits.absolute
    }

    /// Opens a session. At the cap, expired sessions are dropped first, then the least
    /// recently used one. `None` if the random source failed.
    pub(crate) fn open(&mut self, now: Instant) -> Option<NewSession> {
        let id = random_secret()?;
        let csrf = random_secret()?;
        if self.sessions.len() >= self.limits.max {
            let limits = self.limits;
            self.sessions.retain(|_, s| {
                now.saturating_duration_since(s.last_used) < limits.idle
                    && now.saturating_duration_since(s.created) < limits.absolute
            });
        }
        if self.sessions.len() >= self.limits.max {
            let oldest = self.sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions.insert(
            SessionKey::of(&id),
            Session { csrf: csrf.clone(), created: now, last_used: now },
        );
        Some(NewSession { id, csrf })
    }

    /// The session's CSRF token if it is open, marking it used; an expired session is removed.
    pub(crate) fn touch(&mut self, key: &SessionKey, now: Instant) -> Option<String> {
        let session = self.sessions.get(key)?;
        if !self.live(session, now) {
            self.sessions.remove(key);
            return None;
        }
        let session = self.sessions.get_mut(key)?;
        session.last_used = now;
        Some(session.csrf.clone())
    }

    /// Whether the session is open, without marking it used (for long-lived event streams).
    pub(crate) fn is_open(&self, key: &SessionKey, now: Instant) -> bool {
        self.sessions.get(key).is_some_and(|session| self.live(session, now))
    }

    /// Ends the session (logout). Ending an unknown session does nothing.
    pub(crate) fn close(&mut self, key: &SessionKey) {
        self.sessions.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SessionLimits =
        SessionLimits { idle: Duration::from_secs(60), absolute: Duration::from_secs(300), max: 3 };

    #[test]
    fn ids_are_random_256_bit_hex_and_only_their_hash_is_kept() {
        let mut store = SessionStore::new(LIMITS);
        let now = Instant::now();
        let a = store.open(now).unwrap();
        let b = store.open(now).unwrap();
        assert_eq!(a.id.len(), 64);
        assert!(a.id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
        assert_ne!(a.id, a.csrf);
        // Keyed by the id's hash, never by the id.
        assert!(store.sessions.contains_key(&SessionKey(sha256(&a.id))));
        assert_eq!(store.touch(&SessionKey::of(&a.id), now), Some(a.csrf));
        assert_eq!(store.touch(&SessionKey::of("not-a-session"), now), None);
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let mut store = SessionStore::new(LIMITS);
        let t0 = Instant::now();
        let idle = SessionKey::of(&store.open(t0).unwrap().id);
        let busy = SessionKey::of(&store.open(t0).unwrap().id);
        // Used every 50 s: the busy one stays, the idle one expires after 60 s.
        for step in 1..=5u64 {
            let now = t0 + Duration::from_secs(50 * step);
            assert!(store.touch(&busy, now).is_some(), "step {step}");
        }
        assert!(!store.is_open(&idle, t0 + Duration::from_secs(60)));
        assert!(store.touch(&idle, t0 + Duration::from_secs(61)).is_none());
        // Used all along, it still ends 300 s after the login.
        assert!(!store.is_open(&busy, t0 + Duration::from_secs(300)));
        assert!(store.touch(&busy, t0 + Duration::from_secs(300)).is_none());
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn logout_closes_and_the_cap_evicts_the_least_recently_used() {
        let mut store = SessionStore::new(LIMITS);
        let t0 = Instant::now();
        let keys: Vec<_> = (0..3u64)
            .map(|i| SessionKey::of(&store.open(t0 + Duration::from_secs(i)).unwrap().id))
            .collect();
        store.touch(&keys[0], t0 + Duration::from_secs(10));
        let fourth = SessionKey::of(&store.open(t0 + Duration::from_secs(11)).unwrap().id);
        assert_eq!(store.len(), 3);
        assert!(!store.is_open(&keys[1], t0 + Duration::from_secs(12)), "least recently used");
        for key in [keys[0], keys[2], fourth] {
            assert!(store.is_open(&key, t0 + Duration::from_secs(12)));
        }
        store.close(&keys[0]);
        assert!(!store.is_open(&keys[0], t0 + Duration::from_secs(12)));
        assert!(store.touch(&keys[0], t0 + Duration::from_secs(12)).is_none());
    }
}
