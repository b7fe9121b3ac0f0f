//! Alerts: rules that decide when something is wrong, and notifiers that say so (Twilio SMS, a
//! JSON webhook, the log) without flooding a phone or a bill.
//!
//! # Rules
//!
//! A [`Rule`] has an id, a [`Condition`] and a cooldown:
//!
//! - [`Condition::TemperatureAbove`] / [`Condition::TemperatureBelow`]: a [`Threshold`] on one
//!   device, for one sensor or each of its sensors (each sensor is then its own alert). It fires
//!   at a reading at or above the threshold (at or below, for "below") once the condition has
//!   been seen to hold for the minimum duration, and resolves only when a reading goes back past
//!   the threshold by the hysteresis (below `threshold - hysteresis`, or above
//!   `threshold + hysteresis`), so a value that hovers around the threshold does not flap.
//! - [`Condition::Offline`]: no frame from the device for `after`, or its sealed Last Will
//!   arrived. Any later frame from it resolves the alert.
//! - [`Condition::LedChange`]: an LED changed state; a one-off notice without a lifecycle.
//!
//! # Lifecycle
//!
//! An alert is about one [`AlertKey`] (rule, device, sensor or LED) and goes
//! [`AlertState::Pending`] (condition seen, minimum duration not yet over; it is dropped
//! silently if the condition clears) -> [`AlertState::Firing`] (notified once: readings that
//! keep the condition true send nothing more) -> [`AlertState::Resolved`] (notified if the
//! firing was, and the rule says so), with the time of each step in the [`Alert`].
//! After a firing was notified, a new firing of the same key within the rule's cooldown still
//! fires (it shows as firing) but is not sent, nor is its resolution; it is counted in
//! [`EngineCounters::suppressed`].
//!
//! The [`Engine`] is sans-IO: it never reads a clock. It takes the server's model of a verified
//! frame (a [`DeviceUpdate`](crate::DeviceUpdate), which carries its receive time, with the
//! device's state before it), [`Engine::handle_tick`] advances time for offline rules (asking
//! the device states when each device was last heard from, through [`LastSeen`]) and
//! [`Engine::poll_timeout`] says when that is next needed; notifications come out of
//! [`Engine::poll_notification`] and stay in the state until [`Engine::confirm_sent`] (an
//! outbox). [`Engine::export`] gives the whole state as plain serde data, and
//! [`Engine::restore`] goes on from it: after a restart a firing alert stays firing and is not
//! sent again, cooldowns still hold, and a notification never confirmed is sent (again).
//!
//! # Delivery
//!
//! A [`Notifier`] sends one [`Notification`]: [`TwilioSms`], [`Webhook`], [`LogNotifier`], or
//! any of them as an [`AnyNotifier`]. A [`Delivery`] wraps one notifier with a
//! [`DeliveryPolicy`]:
//!
//! - a daily cap: at most `daily_cap` notifications per UTC day go to the notifier; the rest
//!   are dropped and counted as `capped`;
//! - retries with exponential backoff on HTTP 429 (never sooner than its `Retry-After`), on 5xx
//!   and when the service could not be reached; no retry on any other 4xx (a bad number, bad
//!   credentials): those are [`AlertError::Refused`], with Twilio's error body as a
//!   [`TwilioError`];
//! - counters of sent, failed, retried and capped notifications ([`DeliveryCounters`]).
//!
//! The sleeping between retries goes through a [`Sleeper`], so tests use a fake one.
//! Credentials are [`Secret`]s: they never appear in `Debug` output, errors or logs.
//!
//! # Example
//!
//! The engine alone: a kitchen that must be hot for a minute before anyone is woken up.
//!
//! ```
//! use std::time::Duration;
//! use ledtemp_core::{DeviceId, Message, MilliCelsius, SensorName, TemperatureReading, Uptime};
//! use ledtemp_web::alerts::{Condition, Engine, NotificationKind, Rule, Threshold};
//! use ledtemp_web::{DeviceState, DeviceUpdate, UnixMillis};
//!
//! let hot = Threshold::new("kitchen-pi", 30_000) // 30 °C
//!     .sensor("room")
//!     .hysteresis(2_000) // resolved below 28 °C
//!     .min_duration(Duration::from_secs(60));
//! let rule = Rule::new("kitchen-hot", Condition::TemperatureAbove(hot))
//!     .with_cooldown(Duration::from_secs(3600));
//! let mut engine = Engine::new(vec![rule])?;
//!
//! let t0 = 1_700_000_000_000; // milliseconds since the Unix epoch
//! let kitchen = DeviceId::new("kitchen-pi")?;
//! let room = |milli_celsius, at_ms| {
//!     let reading = Message::Temperature(TemperatureReading {
//!         sensor: SensorName::new("room").unwrap(),
//!         temperature: MilliCelsius(milli_celsius),
//!         uptime: Uptime(0),
//!     });
//!     DeviceUpdate::from_message(kitchen.clone(), UnixMillis(at_ms), &reading).unwrap()
//! };
//! let before = DeviceState::default(); // the device's state before each update
//! engine.handle(&room(31_000, t0), &before);
//! assert!(engine.poll_notification().is_none()); // pending: not a minute yet
//! engine.handle(&room(31_500, t0 + 60_000), &before);
//! let alert = engine.poll_notification().unwrap();
//! assert_eq!(alert.kind, NotificationKind::Firing);
//! assert!(alert.text.starts_with("ALERT kitchen-pi/room 31.5 °C, at or above 30.0 °C"));
//! engine.confirm_sent(&alert); // every notifier has it: it leaves the stored outbox
//!
//! engine.handle(&room(29_000, t0 + 120_000), &before); // inside the hysteresis: still firing
//! assert!(engine.poll_notification().is_none());
//!
//! // A restart: the state goes to the database and comes back; nothing is sent again.
//! let saved = serde_json::to_string(&engine.export())?;
//! let rules = engine.rules().to_vec();
//! let mut engine = Engine::restore(rules, serde_json::from_str(&saved)?, t0 + 180_000)?;
//! engine.handle(&room(31_000, t0 + 180_000), &before);
//! assert!(engine.poll_notification().is_none());
//!
//! engine.handle(&room(27_900, t0 + 240_000), &before);
//! assert_eq!(engine.poll_notification().unwrap().kind, NotificationKind::Resolved);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

mod config;
mod driver;
mod notify;
mod rules;
mod twilio;
mod webhook;

pub(crate) use config::AlertSection;
pub use config::{AlertsConfig, NotifierKind, NotifierSettings};
pub use driver::{ALERT_QUEUE, AlertBoard, AlertsSnapshot, NotifierStatus};
pub(crate) use driver::{AlertRunner, DeliveryQueue, run_alert_deliveries};

pub use notify::{
    AnyNotifier, CapState, DEFAULT_DAILY_CAP, Delivery, DeliveryCounters, DeliveryPolicy,
    LogNotifier, MAX_RESPONSE_BODY, Notifier, Sent, Sleeper, TokioSleeper,
};
pub use rules::{
    Alert, AlertKey, AlertState, Condition, Engine, EngineCounters, EngineState, LastSeen,
    MAX_RECENT, MAX_RULE_ID_LEN, MAX_TRACKED, Notification, NotificationKind, Rule, Threshold,
};
pub use twilio::{
    MAX_SMS_BODY, TWILIO_BASE_URL, TwilioAuth, TwilioConfig, TwilioError, TwilioSender, TwilioSms,
    sms_body,
};
pub use webhook::{Webhook, WebhookConfig};

/// Everything that can go wrong in alerting.
#[derive(Debug)]
#[non_exhaustive]
pub enum AlertError {
    /// A rule is invalid; the message names the rule and the setting.
    Rule(String),
    /// A notifier's settings are invalid; the message names the setting (never its secret).
    Notifier(String),
    /// Persisted alert state cannot be used; the message says why.
    State(String),
    /// The service answered with an error status. Retried only for 429 and 5xx.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The service's `Retry-After`, in seconds, when it sent one.
        retry_after: Option<Duration>,
        /// Twilio's error body, when the service is Twilio and the body parsed.
        twilio: Option<TwilioError>,
    },
    /// The exchange failed without an answer. `retryable` when the request cannot have reached
    /// the service (the connection failed), so sending it again cannot send it twice.
    Transport {
        /// What failed (no URL: a webhook URL may hold a token).
        message: String,
        /// Whether it is retried.
        retryable: bool,
    },
    /// The notifier's daily cap was reached; the notification was dropped.
    Capped {
        /// The cap.
        cap: u32,
    },
}

impl AlertError {
    /// Whether the delivery policy retries after this error.
    pub fn is_retryable(&self) -> bool {
        match self {
            AlertError::Refused { status, .. } => *status == 429 || (500..=599).contains(status),
            AlertError::Transport { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The service's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AlertError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for AlertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertError::Rule(message) => write!(f, "alert rule: {message}"),
            AlertError::Notifier(message) => write!(f, "notifier: {message}"),
            AlertError::State(message) => {
                write!(f, "alert state: {message}; upgrade, or start with empty alert state")
            }
            AlertError::Refused { status, twilio: Some(error), .. } => {
                write!(
                    f,
                    "Twilio refused the message: HTTP {status}, error {} ({}); see {}",
                    error.code, error.message, error.more_info
                )?;
                match (*status, error.code) {
                    (401, _) | (_, TwilioError::AUTHENTICATION_FAILED) => {
                        f.write_str(": check the account SID and the auth token or API key")
                    }
                    (_, TwilioError::INVALID_TO | TwilioError::TO_NOT_SMS_CAPABLE) => {
                        f.write_str(": check the `to` number (E.164, like +14155550100)")
                    }
                    _ => Ok(()),
                }
            }
            AlertError::Refused { status, retry_after, twilio: None } => {
                write!(f, "the service answered HTTP {status}")?;
                if let Some(after) = retry_after {
                    write!(f, " (retry after {} s)", after.as_secs())?;
                }
                Ok(())
            }
            AlertError::Transport { message, .. } => write!(f, "could not deliver: {message}"),
            AlertError::Capped { cap } => write!(
                f,
                "daily cap of {cap} notifications reached: dropped (raise the cap, or look at why \
                 so many alerts fire)"
            ),
        }
    }
}

impl std::error::Error for AlertError {}

/// A credential (auth token, API key secret, a webhook URL holding a token). Its `Debug` says
/// `Secret(<redacted>)`; it has no `Display`; the memory is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    /// The value of the environment variable `name`.
    ///
    /// # Errors
    /// [`AlertError::Notifier`] naming the variable when it is unset, empty or not UTF-8.
    pub fn from_env(name: &str) -> Result<Secret, AlertError> {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
            _ => Err(AlertError::Notifier(format!(
                "environment variable {name} is unset, empty or not UTF-8"
            ))),
        }
    }

    /// The contents of the file at `path`, without a trailing line break. Keep the file
    /// readable by its owner only.
    ///
    /// # Errors
    /// [`AlertError::Notifier`] naming the file when it cannot be read or is empty.
    pub fn from_file(path: &Path) -> Result<Secret, AlertError> {
        let contents = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
            AlertError::Notifier(format!("cannot read secret file {}: {error}", path.display()))
        })?);
        let value = contents.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(AlertError::Notifier(format!("secret file {} is empty", path.display())));
        }
        Ok(Secret::new(value))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn secret_from_file_drops_the_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "abc123");
        std::fs::write(&path, "\n").unwrap();
        let error = Secret::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");
        assert!(Secret::from_env("LEDTEMP_TEST_SURELY_UNSET_VARIABLE").is_err());
    }

    #[test]
    fn retry_classification() {
        let refused =
            |status| AlertError::Refused { status, retry_after: None, twilio: None }.is_retryable();
        assert!(refused(429) && refused(500) && refused(503));
        assert!(!refused(400) && !refused(401) && !refused(404));
        assert!(AlertError::Transport { message: String::new(), retryable: true }.is_retryable());
        assert!(!AlertError::Capped { cap: 1 }.is_retryable());
    }
}
