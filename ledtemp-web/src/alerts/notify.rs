//! The notifier trait, the log notifier, and the delivery policy (daily cap, retries, counters)
//! around any notifier.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AlertError, Notification, NotificationKind, TwilioSms, Webhook};

/// The default [`DeliveryPolicy::daily_cap`].
pub const DEFAULT_DAILY_CAP: u32 = 50;

/// The most of a response body the HTTP notifiers read, in bytes; the rest is ignored.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Connect and whole-request timeout of the HTTP notifiers.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

const MS_PER_DAY: i64 = 86_400_000;

/// Sends one notification somewhere.
///
/// One attempt per call: retries, caps and counters are the [`Delivery`] wrapper's job. Dropping
/// the future cancels the attempt (the service may still have received it).
///
/// ```
/// use ledtemp_web::alerts::{AlertError, Notification, Notifier, Sent};
///
/// /// Prints to standard error.
/// struct Stderr;
///
/// impl Notifier for Stderr {
///     async fn send(&self, notification: &Notification) -> Result<Sent, AlertError> {
///         eprintln!("{}", notification.text);
///         Ok(Sent::default())
///     }
/// }
/// ```
pub trait Notifier: Send + Sync {
    /// Sends `notification` once.
    fn send(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = Result<Sent, AlertError>> + Send;
}

impl<T: Notifier> Notifier for &T {
    fn send(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = Result<Sent, AlertError>> + Send {
        T::send(self, notification)
    }
}

impl<T: Notifier> Notifier for std::sync::Arc<T> {
    fn send(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = Result<Sent, AlertError>> + Send {
        T::send(self, notification)
    }
}

/// A notification the service accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sent {
    /// The service's id for it (Twilio's message SID, `SM...`), when it gave one.
    pub id: Option<String>,
}

/// Waits between retries; tests give a fake one that returns at once.
pub trait Sleeper: Send + Sync {
    /// Waits for `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// Sleeps with tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// Writes notifications to the log (`tracing`, target `ledtemp_web::alerts`): firings and LED
/// changes at WARN, resolutions at INFO. Never fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    async fn send(&self, n: &Notification) -> Result<Sent, AlertError> {
        let subject = n.subject.as_deref().unwrap_or("");
        match n.kind {
            NotificationKind::Resolved => tracing::info!(
                target: "ledtemp_web::alerts",
                rule = %n.rule, device = %n.device, subject, alert = n.alert_id,
                "{}", n.text
            ),
            NotificationKind::Firing | NotificationKind::LedChanged => tracing::warn!(
                target: "ledtemp_web::alerts",
                rule = %n.rule, device = %n.device, subject, alert = n.alert_id,
                "{}", n.text
            ),
        }
        Ok(Sent::default())
    }
}

/// Any of the notifiers this crate has, for a list built from the configuration.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyNotifier {
    /// SMS through Twilio.
    Twilio(TwilioSms),
    /// A JSON webhook.
    Webhook(Webhook),
    /// The log.
    Log(LogNotifier),
}

impl Notifier for AnyNotifier {
    async fn send(&self, notification: &Notification) -> Result<Sent, AlertError> {
        match self {
            AnyNotifier::Twilio(n) => n.send(notification).await,
            AnyNotifier::Webhook(n) => n.send(notification).await,
            AnyNotifier::Log(n) => n.send(notification).await,
        }
    }
}

/// How a [`Delivery`] treats its notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// At most this many notifications per UTC day go to the notifier (each counts once,
    /// however many attempts it takes, and whether or not it succeeds); `None` for no cap.
    pub daily_cap: Option<u32>,
    /// Attempts per notification, at least 1.
    pub max_attempts: u32,
    /// The wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. A `Retry-After` longer than this ends the delivery
    /// as failed rather than hold the queue.
    pub max_backoff: Duration,
}

impl Default for DeliveryPolicy {
    /// A cap of [`DEFAULT_DAILY_CAP`], 4 attempts, waits of 2 s, 4 s, 8 s (at most 60 s).
    fn default() -> Self {
        DeliveryPolicy {
            daily_cap: Some(DEFAULT_DAILY_CAP),
            max_attempts: 4,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Counters of one [`Delivery`], for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounters {
    /// Notifications the service accepted.
    pub sent: u64,
    /// Notifications given up on (refused, or retries exhausted).
    pub failed: u64,
    /// Retries (attempts after the first).
    pub retried: u64,
    /// Notifications dropped by the daily cap.
    pub capped: u64,
}

/// How much of the daily cap is used: persist it to keep the cap across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapState {
    /// The UTC day: days since the Unix epoch.
    pub day: i64,
    /// Notifications counted against that day's cap.
    pub count: u32,
}

/// One notifier with a [`DeliveryPolicy`]. Share it (`Arc`) between tasks: every method takes
/// `&self`.
#[derive(Debug)]
pub struct Delivery<N, S = TokioSleeper> {
    notifier: N,
    policy: DeliveryPolicy,
    sleeper: S,
    cap: Mutex<CapState>,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    capped: AtomicU64,
}

impl<N: Notifier, S: Sleeper> Delivery<N, S> {
    /// `notifier` under `policy`, waiting between retries with `sleeper`.
    pub fn new(notifier: N, policy: DeliveryPolicy, sleeper: S) -> Self {
        Delivery {
            notifier,
            policy,
            sleeper,
            cap: Mutex::new(CapState::default()),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            capped: AtomicU64::new(0),
        }
    }

    /// The notifier.
    pub fn notifier(&self) -> &N {
        &self.notifier
    }

    /// The policy.
    pub fn policy(&self) -> DeliveryPolicy {
        self.policy
    }

    /// Sends `notification` at `now_ms` (milliseconds since the Unix epoch, which picks the UTC
    /// day of the cap), retrying as the policy says. Failures are logged at WARN (without
    /// secrets) and counted.
    ///
    /// # Errors
    /// [`AlertError::Capped`] when the day's cap is used up; otherwise the last attempt's error.
    pub async fn deliver(
        &self,
        now_ms: i64,
        notification: &Notification,
    ) -> Result<Sent, AlertError> {
        if let Err(error) = self.take_cap_slot(now_ms) {
            self.capped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(alert = notification.alert_id, "{error}");
            return Err(error);
        }
        let mut backoff = self.policy.initial_backoff;
        let mut attempt = 1;
        loop {
            let error = match self.notifier.send(notification).await {
                Ok(sent) => {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(sent);
                }
                Err(error) => error,
            };
            // Honour the service's Retry-After: never sooner than it asked.
            let wait = error.retry_after().unwrap_or(backoff);
            if !error.is_retryable()
                || attempt >= self.policy.max_attempts
                || wait > self.policy.max_backoff
            {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    alert = notification.alert_id,
                    attempt,
                    "notification failed: {error}"
                );
                return Err(error);
            }
            tracing::debug!(alert = notification.alert_id, attempt, ?wait, "retrying: {error}");
            self.retried.fetch_add(1, Ordering::Relaxed);
            self.sleeper.sleep(wait).await;
            attempt += 1;
            backoff = backoff.saturating_mul(2).min(self.policy.max_backoff);
        }
    }

    fn take_cap_slot(&self, now_ms: i64) -> Result<(), AlertError> {
        let mut cap = self.cap.lock().unwrap_or_else(PoisonError::into_inner);
        let day = now_ms.div_euclid(MS_PER_DAY);
        if cap.day != day {
            *cap = CapState { day, count: 0 };
        }
        if let Some(limit) = self.policy.daily_cap
            && cap.count >= limit
        {
            return Err(AlertError::Capped { cap: limit });
        }
        cap.count = cap.count.saturating_add(1);
        Ok(())
    }

    /// The counters so far.
    pub fn counters(&self) -> DeliveryCounters {
        DeliveryCounters {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            capped: self.capped.load(Ordering::Relaxed),
        }
    }

    /// How much of the daily cap is used.
    pub fn cap_state(&self) -> CapState {
        *self.cap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Goes on from a persisted [`CapState`] (a different day's state is simply replaced at the
    /// next delivery).
    pub fn restore_cap_state(&self, state: CapState) {
        *self.cap.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// What an HTTP service answered.
pub(super) struct HttpAnswer {
    pub(super) status: u16,
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Vec<u8>,
}

/// The HTTP client of the notifiers: timeouts, no redirects (credentials must not follow one
/// to another host).
pub(super) fn http_client() -> Result<reqwest::Client, AlertError> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| AlertError::Notifier(format!("HTTP client: {}", error.without_url())))
}

/// Sends `request` and reads at most [`MAX_RESPONSE_BODY`] bytes of the answer.
pub(super) async fn exchange(request: reqwest::RequestBuilder) -> Result<HttpAnswer, AlertError> {
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BODY.saturating_sub(body.len());
                body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
                if body.len() >= MAX_RESPONSE_BODY {
                    break;
                }
            }
            Ok(None) => break,
            // The status is what matters; a body cut short only loses detail.
            Err(_) => break,
        }
    }
    Ok(HttpAnswer { status, retry_after, body })
}

fn transport(error: reqwest::Error) -> AlertError {
    // Only a failed connection is known not to have delivered the request; a timeout or a reset
    // afterwards may have, and an SMS sent twice costs twice.
    let retryable = error.is_connect();
    AlertError::Transport { message: error_chain(&error.without_url()), retryable }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Answers from a script, one entry per attempt.
    struct Scripted {
        answers: Mutex<Vec<Result<Sent, AlertError>>>,
        calls: AtomicUsize,
    }

    impl Notifier for Scripted {
        async fn send(&self, _: &Notification) -> Result<Sent, AlertError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.answers.lock().unwrap().remove(0)
        }
    }

    #[derive(Default, Clone)]
    struct FakeSleeper(Arc<Mutex<Vec<Duration>>>);

    impl Sleeper for FakeSleeper {
        async fn sleep(&self, duration: Duration) {
            self.0.lock().unwrap().push(duration);
        }
    }

    fn note() -> Notification {
        Notification {
            alert_id: 1,
            rule: "r".into(),
            device: "d".into(),
            subject: None,
            kind: NotificationKind::Firing,
            at_ms: 0,
            milli_celsius: None,
            led_on: None,
            text: "t".into(),
        }
    }

    fn server_error() -> Result<Sent, AlertError> {
        Err(AlertError::Refused { status: 503, retry_after: None, twilio: None })
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_then_gives_up() {
        let notifier = Scripted {
            answers: Mutex::new((0..5).map(|_| server_error()).collect()),
            calls: AtomicUsize::new(0),
        };
        let sleeper = FakeSleeper::default();
        let policy = DeliveryPolicy {
            daily_cap: None,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
        };
        let delivery = Delivery::new(notifier, policy, sleeper.clone());
        let error = block_on(delivery.deliver(0, &note())).unwrap_err();
        assert!(matches!(error, AlertError::Refused { status: 503, .. }));
        let secs: Vec<_> = sleeper.0.lock().unwrap().iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 5, 5]);
        assert_eq!(delivery.notifier().calls.load(Ordering::Relaxed), 5);
        let counters = delivery.counters();
        assert_eq!((counters.sent, counters.failed, counters.retried), (0, 1, 4));
    }

    #[test]
    fn a_retry_after_beyond_the_maximum_backoff_fails_at_once() {
        let notifier = Scripted {
            answers: Mutex::new(vec![Err(AlertError::Refused {
                status: 429,
                retry_after: Some(Duration::from_secs(3600)),
                twilio: None,
            })]),
            calls: AtomicUsize::new(0),
        };
        let sleeper = FakeSleeper::default();
        let delivery = Delivery::new(notifier, DeliveryPolicy::default(), sleeper.clone());
        assert!(block_on(delivery.deliver(0, &note())).is_err());
        assert!(sleeper.0.lock().unwrap().is_empty());
        assert_eq!(delivery.counters().failed, 1);
    }

    #[test]
    fn the_cap_follows_the_utc_day_and_its_state_can_be_restored() {
        let notifier = Scripted {
            answers: Mutex::new((0..4).map(|_| Ok(Sent::default())).collect()),
            calls: AtomicUsize::new(0),
        };
        let policy = DeliveryPolicy { daily_cap: Some(1), ..DeliveryPolicy::default() };
        let delivery = Delivery::new(notifier, policy, FakeSleeper::default());
        let day = 19_000 * MS_PER_DAY;
        delivery.restore_cap_state(CapState { day: 19_000, count: 1 });
        assert!(matches!(
            block_on(delivery.deliver(day + 5, &note())),
            Err(AlertError::Capped { cap: 1 })
        ));
        assert!(block_on(delivery.deliver(day + MS_PER_DAY, &note())).is_ok());
        assert_eq!(delivery.cap_state(), CapState { day: 19_001, count: 1 });
        // Before the epoch, days still start at midnight UTC.
        assert!(block_on(delivery.deliver(-1, &note())).is_ok());
        assert_eq!(delivery.cap_state().day, -1);
    }
}
