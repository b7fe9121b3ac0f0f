//! The rules engine: sans-IO. Time comes in with every input; notifications come out through
//! [`Engine::poll_notification`]; [`Engine::poll_timeout`] says when to call
//! [`Engine::handle_tick`] next.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ledtemp_core::DeviceId;
use serde::{Deserialize, Serialize};

use super::AlertError;
use crate::model::{
    DeviceState, DeviceUpdate, LedPoint, Observation, Reading, UnixMillis, duration_ms,
};

/// How many resolved alerts and LED notices [`Engine::recent`] keeps (oldest dropped first).
pub const MAX_RECENT: usize = 100;

/// How many alert keys (rule, device, sensor or LED) the engine tracks at once, per table
/// (active alerts, cooldowns, LED states). Past it new keys are ignored and counted in
/// [`EngineCounters::untracked`]: names come from devices, and a device must not grow the
/// server's memory without bound.
pub const MAX_TRACKED: usize = 4096;

/// The longest rule id, in bytes.
pub const MAX_RULE_ID_LEN: usize = 64;

/// The version of [`EngineState`] this build writes.
const STATE_VERSION: u32 = 1;

/// One alert rule: what to watch, and how often it may notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique, non-empty, at most [`MAX_RULE_ID_LEN`] bytes; names the rule in notifications
    /// and keys its persisted state (change it and the rule's state is forgotten).
    pub id: String,
    /// What it watches.
    pub condition: Condition,
    /// After a notification of an alert fired, a new firing of the same alert (same rule,
    /// device and sensor or LED) within this time is not sent: it is counted in
    /// [`EngineCounters::suppressed`], and its resolution is not sent either.
    pub cooldown: Duration,
    /// Whether a resolution is notified too (default true).
    pub notify_resolved: bool,
}

impl Rule {
    /// A rule with no cooldown that notifies resolutions.
    pub fn new(id: impl Into<String>, condition: Condition) -> Rule {
        Rule { id: id.into(), condition, cooldown: Duration::ZERO, notify_resolved: true }
    }

    /// The same rule with `cooldown`.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Rule {
        self.cooldown = cooldown;
        self
    }

    /// The same rule, notifying resolutions or not.
    pub fn with_notify_resolved(mut self, notify_resolved: bool) -> Rule {
        self.notify_resolved = notify_resolved;
        self
    }

    fn device(&self) -> &str {
        match &self.condition {
            Condition::TemperatureAbove(t) | Condition::TemperatureBelow(t) => &t.device,
            Condition::Offline { device, .. } | Condition::LedChange { device, .. } => device,
        }
    }

    /// Whether an alert `key` can belong to this rule (used on restore, after a rule changed).
    fn owns(&self, key: &AlertKey) -> bool {
        if key.rule != self.id || key.device != self.device() {
            return false;
        }
        match &self.condition {
            Condition::TemperatureAbove(t) | Condition::TemperatureBelow(t) => {
                key.subject.is_some()
                    && (t.sensor.is_none() || t.sensor.as_deref() == key.subject.as_deref())
            }
            Condition::Offline { .. } => key.subject.is_none(),
            Condition::LedChange { led, .. } => {
                key.subject.is_some() && (led.is_none() || led.as_deref() == key.subject.as_deref())
            }
        }
    }

    fn validate(&self) -> Result<(), AlertError> {
        let fail = |what: &str| Err(AlertError::Rule(format!("rule {:?}: {what}", self.id)));
        if self.id.is_empty() || self.id.len() > MAX_RULE_ID_LEN {
            return fail("the id must be 1 to 64 bytes");
        }
        if self.device().is_empty() {
            return fail("the device must not be empty");
        }
        if let Condition::Offline { after, .. } = &self.condition
            && after.is_zero()
        {
            return fail("`after` must be more than zero");
        }
        Ok(())
    }
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// A temperature at or above the threshold; resolved below threshold - hysteresis.
    TemperatureAbove(Threshold),
    /// A temperature at or below the threshold; resolved above threshold + hysteresis.
    TemperatureBelow(Threshold),
    /// No frame from `device` for `after`, or its sealed Last Will (offline status) arrived.
    /// Resolved by the next frame from it.
    Offline {
        /// The device.
        device: String,
        /// Silence that counts as offline; more than zero.
        after: Duration,
    },
    /// An LED of `device` changed state (any LED when `led` is `None`). A notice, without a
    /// lifecycle; the first state seen of an LED is not a change.
    LedChange {
        /// The device.
        device: String,
        /// The LED, or any.
        led: Option<String>,
    },
}

/// A temperature threshold on one device, for one sensor or each of its sensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    /// The device.
    pub device: String,
    /// The sensor; `None` watches each sensor of the device as a separate alert.
    pub sensor: Option<String>,
    /// The threshold, thousandths of a degree Celsius.
    pub milli_celsius: i32,
    /// How far back past the threshold a reading must go to resolve a firing alert,
    /// thousandths of a degree Celsius.
    pub hysteresis_milli_celsius: u32,
    /// How long the condition must be seen to hold before the alert fires: a reading still past
    /// the threshold at least this long after the first one fires it; a reading back inside the
    /// threshold before that cancels the pending alert. Zero fires on the first reading.
    pub min_duration: Duration,
}

impl Threshold {
    /// A threshold on each sensor of `device`, without hysteresis or minimum duration.
    pub fn new(device: impl Into<String>, milli_celsius: i32) -> Threshold {
        Threshold {
            device: device.into(),
            sensor: None,
            milli_celsius,
            hysteresis_milli_celsius: 0,
            min_duration: Duration::ZERO,
        }
    }

    /// The same threshold on one sensor only.
    pub fn sensor(mut self, sensor: impl Into<String>) -> Threshold {
        self.sensor = Some(sensor.into());
        self
    }

    /// The same threshold with `milli_celsius` of hysteresis.
    pub fn hysteresis(mut self, milli_celsius: u32) -> Threshold {
        self.hysteresis_milli_celsius = milli_celsius;
        self
    }

    /// The same threshold with a minimum duration.
    pub fn min_duration(mut self, min_duration: Duration) -> Threshold {
        self.min_duration = min_duration;
        self
    }

    fn applies_to(&self, device: &str, sensor: &str) -> bool {
        self.device == device && self.sensor.as_deref().is_none_or(|s| s == sensor)
    }
}

/// Where the engine asks when a device was last heard from (its offline countdowns): the
/// server's device states, which the engine does not keep a copy of.
pub trait LastSeen {
    /// When any accepted frame of `device` last arrived, milliseconds since the Unix epoch.
    fn last_seen(&self, device: &str) -> Option<i64>;
}

impl LastSeen for BTreeMap<DeviceId, DeviceState> {
    fn last_seen(&self, device: &str) -> Option<i64> {
        let device = DeviceId::new(device).ok()?;
        self.get(&device).and_then(|state| state.last_seen).map(UnixMillis::as_millis)
    }
}

/// What one alert is about: its rule, the device, and the sensor or LED (`None` for offline).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    /// The rule id.
    pub rule: String,
    /// The device.
    pub device: String,
    /// The sensor (temperature rules) or LED (LED rules); `None` for offline rules.
    pub subject: Option<String>,
}

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds, but not yet for the rule's minimum duration.
    Pending,
    /// The condition held long enough; it has been notified (or suppressed by the cooldown).
    Firing,
    /// The condition cleared after firing.
    Resolved,
    /// A one-off event without a lifecycle (an LED change).
    Notice,
}

/// One alert and its timestamps (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique within the engine's (persisted) life, increasing.
    pub id: u64,
    /// What it is about.
    pub key: AlertKey,
    /// Where it is in its lifecycle.
    pub state: AlertState,
    /// When the condition was first seen (for offline: the last frame, or when watching began).
    pub since_ms: i64,
    /// When it fired.
    pub fired_ms: Option<i64>,
    /// When it resolved.
    pub resolved_ms: Option<i64>,
    /// The last temperature seen for it, thousandths of a degree Celsius.
    pub milli_celsius: Option<i32>,
    /// The LED state, for LED notices.
    pub led_on: Option<bool>,
    /// Whether its firing was handed out as a notification (false: suppressed by the cooldown,
    /// or still pending).
    pub notified: bool,
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An alert fired.
    Firing,
    /// A notified alert resolved.
    Resolved,
    /// An LED changed state.
    LedChanged,
}

/// A message to send: the output of the engine, the input of every notifier. Its JSON form
/// (serde) is the webhook's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The [`Alert::id`] it is about.
    pub alert_id: u64,
    /// The rule id.
    pub rule: String,
    /// The device.
    pub device: String,
    /// The sensor or LED.
    pub subject: Option<String>,
    /// What happened.
    pub kind: NotificationKind,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The temperature, thousandths of a degree Celsius, for temperature rules.
    pub milli_celsius: Option<i32>,
    /// The LED state, for LED rules.
    pub led_on: Option<bool>,
    /// One line for a human (the SMS body).
    pub text: String,
}

/// Counts of what the engine decided, since its state was first created (they are persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounters {
    /// Alerts that fired (notified or suppressed).
    pub fired: u64,
    /// Alerts that resolved.
    pub resolved: u64,
    /// Firings and LED changes not notified because of the rule's cooldown.
    pub suppressed: u64,
    /// Notifications handed out.
    pub notifications: u64,
    /// Inputs ignored because [`MAX_TRACKED`] keys were already tracked.
    pub untracked: u64,
}

/// The engine's state as plain data: persist it (for example as JSON) after draining
/// [`Engine::poll_notification`], and give it to [`Engine::restore`] after a restart.
/// Its fields are private so its format can grow; it carries a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineState {
    version: u32,
    next_id: u64,
    active: Vec<Alert>,
    recent: Vec<Alert>,
    last_notified: Vec<Cooldown>,
    counters: EngineCounters,
    /// Notifications decided and not yet confirmed sent (or given up on): the outbox, stored
    /// with the decision that made them, and sent again by whoever restores this state.
    #[serde(default)]
    pending: Vec<Notification>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cooldown {
    key: AlertKey,
    at_ms: i64,
}

/// The alert rules engine.
///
/// Call order: feed every verified input with [`Engine::handle`] (in receive order), call
/// [`Engine::handle_tick`] when the time from [`Engine::poll_timeout`] has come (and at least
/// once at start), then drain [`Engine::poll_notification`] into the notifiers and persist
/// [`Engine::export`]. The engine never reads a clock; timestamps that go backwards are
/// tolerated (nothing fires early, nothing panics).
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Arc<[Rule]>,
    next_id: u64,
    active: BTreeMap<AlertKey, Alert>,
    recent: VecDeque<Alert>,
    last_notified: BTreeMap<AlertKey, i64>,
    watch_from_ms: Option<i64>,
    counters: EngineCounters,
    /// Decided, not yet taken by [`Engine::poll_notification`].
    outbox: VecDeque<Notification>,
    /// Taken, not yet confirmed ([`Engine::confirm_sent`]).
    unconfirmed: Vec<Notification>,
}

impl Engine {
    /// An engine with no history.
    ///
    /// # Errors
    /// [`AlertError::Rule`] when a rule is invalid or two rules share an id.
    pub fn new(rules: Vec<Rule>) -> Result<Engine, AlertError> {
        let mut ids = std::collections::BTreeSet::new();
        for rule in &rules {
            rule.validate()?;
            if !ids.insert(rule.id.as_str()) {
                return Err(AlertError::Rule(format!("two rules have the id {:?}", rule.id)));
            }
        }
        Ok(Engine {
            rules: rules.into(),
            next_id: 1,
            active: BTreeMap::new(),
            recent: VecDeque::new(),
            last_notified: BTreeMap::new(),
            watch_from_ms: None,
            counters: EngineCounters::default(),
            outbox: VecDeque::new(),
            unconfirmed: Vec::new(),
        })
    }

    /// An engine that goes on from `state` (from [`Engine::export`]) at `now_ms`: firing alerts
    /// stay firing and are not notified again; cooldowns and counters continue. State of rules
    /// that no longer exist, or whose device, sensor or LED changed, is dropped.
    ///
    /// The server itself was down until `now_ms`: offline rules give every device a full
    /// `after` from `now_ms` before deciding it is offline (see
    /// [`Engine::restart_offline_clocks`]).
    ///
    /// # Errors
    /// [`AlertError::Rule`] as for [`Engine::new`]; [`AlertError::State`] when `state` was
    /// written by a newer version.
    pub fn restore(
        rules: Vec<Rule>,
        state: EngineState,
        now_ms: i64,
    ) -> Result<Engine, AlertError> {
        if state.version > STATE_VERSION {
            return Err(AlertError::State(format!(
                "alert state version {} is newer than this build's {STATE_VERSION}",
                state.version
            )));
        }
        let mut engine = Engine::new(rules)?;
        let owned = |key: &AlertKey| engine.rules.iter().any(|rule| rule.owns(key));
        let max_id = state.active.iter().chain(&state.recent).map(|a| a.id).max().unwrap_or(0);
        let active: BTreeMap<_, _> = state
            .active
            .into_iter()
            .filter(|a| {
                owned(&a.key) && matches!(a.state, AlertState::Pending | AlertState::Firing)
            })
            .take(MAX_TRACKED)
            .map(|a| (a.key.clone(), a))
            .collect();
        let last_notified: BTreeMap<_, _> = state
            .last_notified
            .into_iter()
            .filter(|c| owned(&c.key))
            .take(MAX_TRACKED)
            .map(|c| (c.key, c.at_ms))
            .collect();
        engine.active = active;
        engine.last_notified = last_notified;
        engine.recent = state.recent.into_iter().take(MAX_RECENT).collect();
        engine.next_id = state.next_id.max(max_id.saturating_add(1)).max(1);
        engine.counters = state.counters;
        engine.watch_from_ms = Some(now_ms);
        // Decided before the state was stored, never confirmed sent: to be sent (again).
        engine.outbox = state.pending.into_iter().take(MAX_TRACKED).collect();
        Ok(engine)
    }

    /// The state to persist, with every notification decided and not yet confirmed sent
    /// ([`Engine::confirm_sent`]): an engine restored from it sends those (again).
    pub fn export(&self) -> EngineState {
        EngineState {
            version: STATE_VERSION,
            next_id: self.next_id,
            active: self.active.values().cloned().collect(),
            recent: self.recent.iter().cloned().collect(),
            last_notified: self
                .last_notified
                .iter()
                .map(|(key, at_ms)| Cooldown { key: key.clone(), at_ms: *at_ms })
                .collect(),
            counters: self.counters,
            pending: self.unconfirmed.iter().chain(&self.outbox).cloned().collect(),
        }
    }

    /// Whether `other` holds the same state as this engine: what [`Engine::export`] would
    /// write (the pipeline uses it to store the state only when a batch changed it).
    pub fn same_state(&self, other: &Engine) -> bool {
        self.next_id == other.next_id
            && self.counters == other.counters
            && self.active == other.active
            && self.recent == other.recent
            && self.last_notified == other.last_notified
            && self.unconfirmed == other.unconfirmed
            && self.outbox == other.outbox
    }

    /// The rules, as given.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Pending and firing alerts, ordered by key.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    /// Resolved alerts and LED notices, newest first, at most [`MAX_RECENT`].
    pub fn recent(&self) -> impl Iterator<Item = &Alert> {
        self.recent.iter()
    }

    /// The counters.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// The next notification to send, oldest first. It stays in the state ([`Engine::export`])
    /// until [`Engine::confirm_sent`].
    pub fn poll_notification(&mut self) -> Option<Notification> {
        let notification = self.outbox.pop_front()?;
        self.unconfirmed.push(notification.clone());
        Some(notification)
    }

    /// `notification` was sent to every notifier of its rule (or given up on): it leaves the
    /// state. Whether it was still there.
    pub fn confirm_sent(&mut self, notification: &Notification) -> bool {
        let Some(at) = self.unconfirmed.iter().position(|n| n == notification) else {
            return false;
        };
        self.unconfirmed.remove(at);
        true
    }

    /// When [`Engine::handle_tick`] should be called next (milliseconds since the Unix epoch):
    /// the earliest time a watched device would count as offline. `None` when no offline rule
    /// waits on a deadline (call `handle_tick` at least once at start so watching begins).
    pub fn poll_timeout(&self, devices: &impl LastSeen) -> Option<i64> {
        self.rules
            .iter()
            .filter_map(|rule| match &rule.condition {
                Condition::Offline { device, after } => {
                    let key = offline_key(rule, device);
                    if self.active.contains_key(&key) {
                        None
                    } else {
                        self.offline_deadline(devices, device, *after)
                    }
                }
                _ => None,
            })
            .min()
    }

    /// Starts every offline countdown again from `now_ms` (a device seen later keeps its later
    /// time). Call it when the server could not have heard the devices: after a restart (done
    /// by [`Engine::restore`]) or when the broker connection comes back.
    pub fn restart_offline_clocks(&mut self, now_ms: i64) {
        self.watch_from_ms = Some(now_ms);
    }

    /// Advances time to `now_ms`: devices silent for their rule's `after` go offline. When a
    /// device was last heard from comes from `devices`.
    pub fn handle_tick(&mut self, now_ms: i64, devices: &impl LastSeen) {
        if self.watch_from_ms.is_none() {
            self.watch_from_ms = Some(now_ms);
        }
        let rules = Arc::clone(&self.rules);
        for rule in rules.iter() {
            if let Condition::Offline { device, after } = &rule.condition {
                let key = offline_key(rule, device);
                if self.active.contains_key(&key) {
                    continue;
                }
                let Some(deadline) = self.offline_deadline(devices, device, *after) else {
                    continue;
                };
                if now_ms >= deadline {
                    let since = devices.last_seen(device).or(self.watch_from_ms);
                    let text = format!(
                        "ALERT {device} offline: no frame for {} s (rule {})",
                        after.as_secs(),
                        rule.id
                    );
                    self.fire_now(rule, key, since.unwrap_or(now_ms), now_ms, text);
                }
            }
        }
        // Cooldowns that ended can be forgotten.
        let rules = &self.rules;
        self.last_notified.retain(|key, at| {
            rules.iter().find(|r| r.id == key.rule).is_some_and(|rule| {
                now_ms < *at || now_ms.saturating_sub(*at) < duration_ms(rule.cooldown)
            })
        });
    }

    /// Handles one verified update; `before` is its device's state before it (the previous LED
    /// states, against which a change is detected).
    pub fn handle(&mut self, update: &DeviceUpdate, before: &DeviceState) {
        let device = update.device.as_str();
        let at_ms = update.at.as_millis();
        let rules = Arc::clone(&self.rules);
        if update.says_online() && !update.retained {
            self.seen(&rules, device, at_ms);
        }
        match &update.observation {
            Observation::Reading(Reading::Temperature(point)) => {
                let sensor = point.sensor.as_str();
                for rule in rules.iter() {
                    let (threshold, above) = match &rule.condition {
                        Condition::TemperatureAbove(t) => (t, true),
                        Condition::TemperatureBelow(t) => (t, false),
                        _ => continue,
                    };
                    if threshold.applies_to(device, sensor) {
                        let value = point.temperature.0;
                        self.temperature(rule, threshold, above, sensor, value, at_ms);
                    }
                }
            }
            Observation::Reading(Reading::Led(_)) | Observation::Online { .. } => {
                for point in update.leds() {
                    self.led(&rules, device, point, before, at_ms);
                }
            }
            Observation::Offline => {
                for rule in rules.iter() {
                    if let Condition::Offline { device: watched, .. } = &rule.condition
                        && watched == device
                    {
                        let key = offline_key(rule, device);
                        if !self.active.contains_key(&key) {
                            let text = format!(
                                "ALERT {device} offline: it said goodbye (last will) (rule {})",
                                rule.id
                            );
                            self.fire_now(rule, key, at_ms, at_ms, text);
                        }
                    }
                }
            }
        }
    }

    fn offline_deadline(
        &self,
        devices: &impl LastSeen,
        device: &str,
        after: Duration,
    ) -> Option<i64> {
        let seen = devices.last_seen(device);
        let from = match (seen, self.watch_from_ms) {
            (Some(seen), Some(watch)) => seen.max(watch),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => return None,
        };
        Some(from.saturating_add(duration_ms(after)))
    }

    /// A sign of life from `device`: resolves its offline alert (its countdown restarts by
    /// itself: it counts from the device's last frame).
    fn seen(&mut self, rules: &[Rule], device: &str, at_ms: i64) {
        for rule in rules {
            if let Condition::Offline { device: d, .. } = &rule.condition
                && d == device
            {
                let key = offline_key(rule, device);
                // A frame older than the firing (out of order) does not prove it is back.
                let back = self
                    .active
                    .get(&key)
                    .is_some_and(|alert| alert.fired_ms.is_none_or(|fired| at_ms >= fired));
                if back {
                    self.resolve(rule, &key, at_ms, format!("RESOLVED {device} is back online"));
                }
            }
        }
    }

    fn temperature(
        &mut self,
        rule: &Rule,
        threshold: &Threshold,
        above: bool,
        sensor: &str,
        value: i32,
        at_ms: i64,
    ) {
        let (v, limit, hysteresis) = (
            i64::from(value),
            i64::from(threshold.milli_celsius),
            i64::from(threshold.hysteresis_milli_celsius),
        );
        let (breach, clear) = if above {
            (v >= limit, v < limit - hysteresis)
        } else {
            (v <= limit, v > limit + hysteresis)
        };
        let key = AlertKey {
            rule: rule.id.clone(),
            device: threshold.device.clone(),
            subject: Some(sensor.to_owned()),
        };
        let label = format!("{}/{sensor}", threshold.device);
        let state = self.active.get(&key).map(|alert| (alert.state, alert.since_ms));
        match state {
            None if breach => {
                let Some(alert) = self.open(&key, at_ms) else { return };
                alert.milli_celsius = Some(value);
                if threshold.min_duration.is_zero() {
                    self.fire(
                        rule,
                        &key,
                        at_ms,
                        firing_text(rule, &label, above, value, threshold),
                    );
                }
            }
            None => {}
            Some((AlertState::Pending, since)) => {
                if !breach {
                    self.active.remove(&key);
                    return;
                }
                if let Some(alert) = self.active.get_mut(&key) {
                    alert.milli_celsius = Some(value);
                }
                if at_ms.saturating_sub(since) >= duration_ms(threshold.min_duration) {
                    self.fire(
                        rule,
                        &key,
                        at_ms,
                        firing_text(rule, &label, above, value, threshold),
                    );
                }
            }
            Some(_) => {
                if let Some(alert) = self.active.get_mut(&key) {
                    alert.milli_celsius = Some(value);
                }
                if clear {
                    let text = format!(
                        "RESOLVED {label} back to {} °C (rule {})",
                        celsius(i64::from(value)),
                        rule.id
                    );
                    self.resolve(rule, &key, at_ms, text);
                }
            }
        }
    }

    fn led(
        &mut self,
        rules: &[Rule],
        device: &str,
        point: &LedPoint,
        before: &DeviceState,
        at_ms: i64,
    ) {
        let (led, on) = (point.led.as_str(), point.state.is_on());
        let watched = |rule: &&Rule| {
            matches!(&rule.condition, Condition::LedChange { device: d, led: l }
                if d == device && l.as_deref().is_none_or(|l| l == led))
        };
        // The first state seen of an LED is not a change.
        let previous = before.leds.get(&point.led).map(|p| p.state.is_on());
        if previous != Some(!on) || !rules.iter().any(|rule| watched(&rule)) {
            return;
        }
        for rule in rules.iter().filter(watched) {
            let key = AlertKey {
                rule: rule.id.clone(),
                device: device.to_owned(),
                subject: Some(led.to_owned()),
            };
            let notified = self.may_notify(rule, &key, at_ms);
            let alert = Alert {
                id: self.take_id(),
                key: key.clone(),
                state: AlertState::Notice,
                since_ms: at_ms,
                fired_ms: Some(at_ms),
                resolved_ms: None,
                milli_celsius: None,
                led_on: Some(on),
                notified,
            };
            if notified {
                let state = if on { "on" } else { "off" };
                let text = format!("LED {device}/{led} turned {state} (rule {})", rule.id);
                self.notify(&alert, NotificationKind::LedChanged, at_ms, text);
            }
            self.remember(alert);
        }
    }

    /// Opens a pending alert for `key`, unless too many are open.
    fn open(&mut self, key: &AlertKey, at_ms: i64) -> Option<&mut Alert> {
        if self.active.len() >= MAX_TRACKED {
            self.counters.untracked += 1;
            return None;
        }
        let alert = Alert {
            id: self.take_id(),
            key: key.clone(),
            state: AlertState::Pending,
            since_ms: at_ms,
            fired_ms: None,
            resolved_ms: None,
            milli_celsius: None,
            led_on: None,
            notified: false,
        };
        Some(self.active.entry(key.clone()).or_insert(alert))
    }

    /// Opens and fires at once (offline rules).
    fn fire_now(&mut self, rule: &Rule, key: AlertKey, since_ms: i64, at_ms: i64, text: String) {
        if self.open(&key, since_ms).is_some() {
            self.fire(rule, &key, at_ms, text);
        }
    }

    fn fire(&mut self, rule: &Rule, key: &AlertKey, at_ms: i64, text: String) {
        let notified = self.may_notify(rule, key, at_ms);
        let Some(alert) = self.active.get_mut(key) else { return };
        alert.state = AlertState::Firing;
        alert.fired_ms = Some(at_ms);
        alert.notified = notified;
        let alert = alert.clone();
        self.counters.fired += 1;
        if notified {
            self.notify(&alert, NotificationKind::Firing, at_ms, text);
        }
    }

    fn resolve(&mut self, rule: &Rule, key: &AlertKey, at_ms: i64, text: String) {
        let Some(mut alert) = self.active.remove(key) else { return };
        if alert.state != AlertState::Firing {
            // A pending alert that never fired just goes away.
            return;
        }
        alert.state = AlertState::Resolved;
        alert.resolved_ms = Some(at_ms);
        self.counters.resolved += 1;
        if alert.notified && rule.notify_resolved {
            self.notify(&alert, NotificationKind::Resolved, at_ms, text);
        }
        self.remember(alert);
    }

    /// Whether the cooldown lets `key` notify at `at_ms`; if so, starts a new cooldown.
    fn may_notify(&mut self, rule: &Rule, key: &AlertKey, at_ms: i64) -> bool {
        if let Some(last) = self.last_notified.get(key)
            && at_ms.saturating_sub(*last) < duration_ms(rule.cooldown)
        {
            self.counters.suppressed += 1;
            return false;
        }
        if self.last_notified.len() >= MAX_TRACKED && !self.last_notified.contains_key(key) {
            // Without a slot the cooldown could not be kept: stay quiet rather than risk a flood.
            self.counters.untracked += 1;
            return false;
        }
        self.last_notified.insert(key.clone(), at_ms);
        true
    }

    fn notify(&mut self, alert: &Alert, kind: NotificationKind, at_ms: i64, text: String) {
        self.counters.notifications += 1;
        self.outbox.push_back(Notification {
            alert_id: alert.id,
            rule: alert.key.rule.clone(),
            device: alert.key.device.clone(),
            subject: alert.key.subject.clone(),
            kind,
            at_ms,
            milli_celsius: alert.milli_celsius,
            led_on: alert.led_on,
            text: format!("{text} at {}", UnixMillis(at_ms)),
        });
    }

    fn remember(&mut self, alert: Alert) {
        self.recent.push_front(alert);
        self.recent.truncate(MAX_RECENT);
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }
}

fn offline_key(rule: &Rule, device: &str) -> AlertKey {
    AlertKey { rule: rule.id.clone(), device: device.to_owned(), subject: None }
}

fn firing_text(rule: &Rule, label: &str, above: bool, value: i32, threshold: &Threshold) -> String {
    let relation = if above { "at or above" } else { "at or below" };
    format!(
        "ALERT {label} {} °C, {relation} {} °C (rule {})",
        celsius(i64::from(value)),
        celsius(i64::from(threshold.milli_celsius)),
        rule.id
    )
}

/// Thousandths of a degree as degrees with one decimal, rounded half away from zero.
fn celsius(milli: i64) -> String {
    let tenths = (milli.abs() + 50) / 100;
    let sign = if milli < 0 && tenths != 0 { "-" } else { "" };
    format!("{sign}{}.{}", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    use ledtemp_core::{
        LedChange, LedName, LedState, Message, MilliCelsius, SensorName, TemperatureReading, Uptime,
    };

    const T0: i64 = 1_700_000_000_000;

    type Devices = BTreeMap<DeviceId, DeviceState>;

    fn update(message: &Message, at_ms: i64) -> DeviceUpdate {
        let device = DeviceId::new("kitchen-pi").unwrap();
        DeviceUpdate::from_message(device, UnixMillis(at_ms), message).unwrap()
    }

    fn reading(sensor: &str, milli_celsius: i32, at_ms: i64) -> DeviceUpdate {
        let message = Message::Temperature(TemperatureReading {
            sensor: SensorName::new(sensor).unwrap(),
            temperature: MilliCelsius(milli_celsius),
            uptime: Uptime(0),
        });
        update(&message, at_ms)
    }

    /// Feeds `update` as the pipeline does: with its device's state before it, then applied.
    fn feed(engine: &mut Engine, devices: &mut Devices, update: &DeviceUpdate) {
        let state = devices.entry(update.device.clone()).or_default();
        engine.handle(update, state);
        state.apply(update);
    }

    fn drain(engine: &mut Engine) -> Vec<Notification> {
        std::iter::from_fn(|| engine.poll_notification()).collect()
    }

    /// The outbox: a notification decided and taken is in the stored state until it is
    /// confirmed sent; an engine restored from a state stored before that sends it again, one
    /// restored after does not.
    #[test]
    fn a_notification_stays_in_the_state_until_it_is_confirmed_sent() {
        let rule = Rule::new("hot", Condition::TemperatureAbove(Threshold::new("kitchen-pi", 0)));
        let mut engine = Engine::new(vec![rule.clone()]).unwrap();
        let mut devices = Devices::new();
        let before = engine.clone();
        feed(&mut engine, &mut devices, &reading("cpu", 1, T0));
        assert!(!engine.same_state(&before), "the decision is a change to store");
        let sent = drain(&mut engine);
        assert_eq!(sent.len(), 1);
        let stored = engine.export();
        let mut restored = Engine::restore(vec![rule.clone()], stored, T0 + 1).unwrap();
        assert_eq!(drain(&mut restored), sent, "not confirmed: sent again after a restore");

        let taken = engine.clone();
        assert!(engine.confirm_sent(&sent[0]));
        assert!(!engine.same_state(&taken), "the confirmation is a change to store");
        assert!(!engine.confirm_sent(&sent[0]), "confirmed once");
        let mut restored = Engine::restore(vec![rule], engine.export(), T0 + 2).unwrap();
        assert!(drain(&mut restored).is_empty(), "confirmed: not sent again");
        assert_eq!(restored.active().count(), 1, "the alert itself is still firing");
    }

    #[test]
    fn celsius_rounds_and_keeps_the_sign() {
        assert_eq!(celsius(21_375), "21.4");
        assert_eq!(celsius(-1_250), "-1.3");
        assert_eq!(celsius(-40), "0.0");
        assert_eq!(celsius(70_000), "70.0");
        assert_eq!(celsius(i64::from(i32::MIN)), "-2147483.6");
    }

    #[test]
    fn rules_are_validated() {
        let offline = |after| Condition::Offline { device: "d".into(), after };
        assert!(Engine::new(vec![Rule::new("", offline(Duration::from_secs(1)))]).is_err());
        assert!(Engine::new(vec![Rule::new("a", offline(Duration::ZERO))]).is_err());
        let twice = vec![
            Rule::new("a", offline(Duration::from_secs(1))),
            Rule::new("a", offline(Duration::from_secs(2))),
        ];
        assert!(matches!(Engine::new(twice), Err(AlertError::Rule(m)) if m.contains("two rules")));
    }

    #[test]
    fn below_rule_mirrors_above() {
        let rule = Rule::new(
            "cold",
            Condition::TemperatureBelow(Threshold::new("kitchen-pi", 5_000).hysteresis(1_000)),
        );
        let mut engine = Engine::new(vec![rule]).unwrap();
        let mut devices = Devices::new();
        feed(&mut engine, &mut devices, &reading("cpu", 5_001, T0));
        assert!(drain(&mut engine).is_empty());
        feed(&mut engine, &mut devices, &reading("cpu", 5_000, T0 + 1));
        let fired = drain(&mut engine);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].kind, NotificationKind::Firing);
        assert!(fired[0].text.starts_with("ALERT kitchen-pi/cpu 5.0 °C, at or below 5.0 °C"));
        feed(&mut engine, &mut devices, &reading("cpu", 6_000, T0 + 2));
        assert!(drain(&mut engine).is_empty(), "6.0 is not above 5.0 + 1.0");
        feed(&mut engine, &mut devices, &reading("cpu", 6_001, T0 + 3));
        assert_eq!(drain(&mut engine)[0].kind, NotificationKind::Resolved);
    }

    #[test]
    fn sensorless_rule_tracks_each_sensor() {
        let rule = Rule::new("hot", Condition::TemperatureAbove(Threshold::new("kitchen-pi", 0)));
        let mut engine = Engine::new(vec![rule]).unwrap();
        let mut devices = Devices::new();
        feed(&mut engine, &mut devices, &reading("cpu", 1, T0));
        feed(&mut engine, &mut devices, &reading("room", 1, T0));
        feed(&mut engine, &mut devices, &reading("cpu", 1, T0 + 1));
        let subjects: Vec<_> =
            drain(&mut engine).into_iter().map(|n| n.subject.unwrap_or_default()).collect();
        assert_eq!(subjects, ["cpu", "room"]);
        assert_eq!(engine.active().count(), 2);
    }

    #[test]
    fn led_change_is_a_notice_and_the_first_state_is_not_a_change() {
        let rule = Rule::new(
            "door",
            Condition::LedChange { device: "kitchen-pi".into(), led: Some("red".into()) },
        )
        .with_cooldown(Duration::from_secs(60));
        let mut engine = Engine::new(vec![rule]).unwrap();
        let mut devices = Devices::new();
        let led = |name: &str, on: bool, at_ms| {
            let change = LedChange {
                led: LedName::new(name).unwrap(),
                state: LedState::from(on),
                uptime: Uptime(0),
            };
            update(&Message::Led(change), at_ms)
        };
        feed(&mut engine, &mut devices, &led("red", false, T0));
        feed(&mut engine, &mut devices, &led("red", false, T0 + 1));
        feed(&mut engine, &mut devices, &led("green", true, T0 + 1));
        feed(&mut engine, &mut devices, &led("green", false, T0 + 1));
        assert!(drain(&mut engine).is_empty());
        feed(&mut engine, &mut devices, &led("red", true, T0 + 2));
        let sent = drain(&mut engine);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].kind, sent[0].led_on), (NotificationKind::LedChanged, Some(true)));
        feed(&mut engine, &mut devices, &led("red", false, T0 + 3));
        assert!(drain(&mut engine).is_empty(), "within the cooldown");
        assert_eq!(engine.counters().suppressed, 1);
        assert_eq!(engine.recent().map(|a| a.state).collect::<Vec<_>>(), [AlertState::Notice; 2]);
    }

    #[test]
    fn offline_waits_for_the_first_tick_and_is_resolved_by_a_frame() {
        let rule = Rule::new(
            "gone",
            Condition::Offline { device: "kitchen-pi".into(), after: Duration::from_secs(60) },
        );
        let mut engine = Engine::new(vec![rule]).unwrap();
        let mut devices = Devices::new();
        assert_eq!(engine.poll_timeout(&devices), None);
        engine.handle_tick(T0, &devices);
        assert_eq!(engine.poll_timeout(&devices), Some(T0 + 60_000));
        engine.handle_tick(T0 + 59_999, &devices);
        assert!(drain(&mut engine).is_empty());
        engine.handle_tick(T0 + 60_000, &devices);
        let sent = drain(&mut engine);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].text.contains("no frame for 60 s"), "{}", sent[0].text);
        assert_eq!(engine.poll_timeout(&devices), None, "already firing");
        engine.handle_tick(T0 + 120_000, &devices);
        assert!(drain(&mut engine).is_empty(), "not sent twice while firing");
        feed(&mut engine, &mut devices, &reading("cpu", 20_000, T0 + 130_000));
        assert_eq!(drain(&mut engine)[0].kind, NotificationKind::Resolved);
        assert_eq!(engine.poll_timeout(&devices), Some(T0 + 190_000));
    }
}
