//! `GET /metrics`: Prometheus text format.
//!
//! Each family is written whole (`# HELP`, `# TYPE`, then its samples) before the next begins.
//! Besides the server's counters it shows the live device cache, which holds only what passed
//! every check: each sensor's last reading, each LED, and when each device was last heard from.

use std::fmt::{self, Write};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::AppState;
use crate::RejectReason;
use crate::alerts::AlertBoard;
use crate::command::CommandOutcome;
use crate::live::LiveState;
use crate::model::UnixMillis;

/// A label value as the text format needs it: backslash, double quote and line feed escaped.
/// Every label value written here goes through it, whatever its source promises.
struct LabelValue<'a>(&'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The `# HELP` and `# TYPE` lines that open a family; `kind` is `counter` or `gauge`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A time as Unix seconds, the unit of Prometheus timestamps (`time()`).
fn unix_seconds(at: UnixMillis) -> f64 {
    // Exact for any time within 285,000 years of 1970.
    at.as_millis() as f64 / 1000.0
}

/// The live device cache at `now`: the last verified value of each sensor and LED, when each
/// arrived, and each device's last-seen time and online flag as the dashboard shows them.
/// A keyring device never heard from is offline and has no last-seen sample.
fn device_metrics(out: &mut String, live: &LiveState, now: UnixMillis) {
    let devices = live.devices();
    let temperatures = || {
        devices.iter().flat_map(|(id, state)| {
            state.temperatures.values().map(move |point| (LabelValue(id), point))
        })
    };
    family(
        out,
        "ledtemp_temperature_celsius",
        "gauge",
        "The last verified reading of each sensor, in degrees Celsius.",
    );
    for (device, point) in temperatures() {
        let sensor = LabelValue(&point.sensor);
        let celsius = point.temperature.to_celsius();
        let _ = writeln!(
            out,
            "ledtemp_temperature_celsius{{device=\"{device}\",sensor=\"{sensor}\"}} {celsius}"
        );
    }
    family(
        out,
        "ledtemp_temperature_timestamp_seconds",
        "gauge",
        "When the server received each sensor's last verified reading (Unix seconds).",
    );
    for (device, point) in temperatures() {
        let sensor = LabelValue(&point.sensor);
        let at = unix_seconds(point.at);
        let _ = writeln!(
            out,
            "ledtemp_temperature_timestamp_seconds{{device=\"{device}\",sensor=\"{sensor}\"}} {at}"
        );
    }
    family(out, "ledtemp_led_on", "gauge", "The last verified state of each LED: 1 on, 0 off.");
    for (id, state) in &devices {
        for point in state.leds.values() {
            let (device, led) = (LabelValue(id), LabelValue(&point.led));
            let on = u8::from(point.state.is_on());
            let _ = writeln!(out, "ledtemp_led_on{{device=\"{device}\",led=\"{led}\"}} {on}");
        }
    }
    family(
        out,
        "ledtemp_device_last_seen_timestamp_seconds",
        "gauge",
        "When the server last received a verified frame from each device (Unix seconds).",
    );
    for (id, state) in &devices {
        if let Some(seen) = state.last_seen {
            let (device, seen) = (LabelValue(id), unix_seconds(seen));
            let _ = writeln!(
                out,
                "ledtemp_device_last_seen_timestamp_seconds{{device=\"{device}\"}} {seen}"
            );
        }
    }
    family(
        out,
        "ledtemp_device_online",
        "gauge",
        "1 while a device counts as online (its last status said so and it was heard from within \
         the offline timeout), as on the dashboard; 0 otherwise.",
    );
    for (id, state) in &devices {
        let online = u8::from(live.is_online(state, now));
        let _ = writeln!(out, "ledtemp_device_online{{device=\"{}\"}} {online}", LabelValue(id));
    }
}

/// The alert engine's counters and each notifier's deliveries.
fn alert_metrics(out: &mut String, alerts: &AlertBoard) {
    let engine = alerts.engine_counters();
    for (name, help, value) in [
        ("ledtemp_alerts_fired_total", "Alerts that fired (notified or suppressed).", engine.fired),
        ("ledtemp_alerts_resolved_total", "Alerts that resolved.", engine.resolved),
        (
            "ledtemp_alerts_suppressed_total",
            "Firings and LED changes not notified because of the rule's cooldown.",
            engine.suppressed,
        ),
        ("ledtemp_alert_notifications_total", "Notifications handed out.", engine.notifications),
        (
            "ledtemp_alerts_untracked_total",
            "Inputs ignored because too many alert keys were tracked.",
            engine.untracked,
        ),
        (
            "ledtemp_alert_notifications_dropped_total",
            "Notifications dropped because the delivery queue was full.",
            alerts.dropped(),
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let notifiers = alerts.notifier_statuses();
    for (outcome, help) in [
        ("sent", "Notifications the service accepted."),
        ("failed", "Notifications given up on (refused, or retries exhausted)."),
        ("retried", "Retries (attempts after the first)."),
        ("capped", "Notifications dropped by the daily cap."),
    ] {
        let name = format!("ledtemp_alert_deliveries_{outcome}_total");
        family(out, &name, "counter", help);
        for notifier in &notifiers {
            let c = notifier.counters;
            let value = match outcome {
                "sent" => c.sent,
                "failed" => c.failed,
                "retried" => c.retried,
                _ => c.capped,
            };
            let (label, kind) = (LabelValue(&notifier.name), LabelValue(notifier.kind));
            let _ = writeln!(out, "{name}{{notifier=\"{label}\",kind=\"{kind}\"}} {value}");
        }
    }
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = &state.live.stats;
    let snapshot = stats.snapshot();
    let mut body = String::new();
    let out = &mut body;
    // Writing to a String cannot fail.
    family(
        out,
        "ledtemp_frames_accepted_total",
        "counter",
        "Frames that passed every check and were stored.",
    );
    let _ = writeln!(out, "ledtemp_frames_accepted_total {}", snapshot.accepted);
    family(out, "ledtemp_frames_rejected_total", "counter", "Frames refused, by reason.");
    for reason in RejectReason::ALL {
        let _ = writeln!(
            out,
            "ledtemp_frames_rejected_total{{reason=\"{}\"}} {}",
            reason.label(),
            stats.rejected(reason)
        );
    }
    family(out, "ledtemp_commands_total", "counter", "LED commands asked for, by outcome.");
    for outcome in CommandOutcome::ALL {
        let count = stats.commands(outcome);
        let _ = writeln!(out, "ledtemp_commands_total{{outcome=\"{}\"}} {count}", outcome.label());
    }
    family(
        out,
        "ledtemp_store_errors_total",
        "counter",
        "Failed database commits (their frames were dropped).",
    );
    let _ = writeln!(out, "ledtemp_store_errors_total {}", stats.store_errors());
    family(
        out,
        "ledtemp_store_ok",
        "gauge",
        "1 while the database takes commits, 0 from a failed commit until one succeeds.",
    );
    let _ = writeln!(out, "ledtemp_store_ok {}", u8::from(stats.store_ok()));
    family(
        out,
        "ledtemp_keyring_reload_failures_total",
        "counter",
        "Keyring reloads (SIGHUP) that failed; the keys loaded before stayed in use.",
    );
    let _ =
        writeln!(out, "ledtemp_keyring_reload_failures_total {}", stats.keyring_reload_failures());
    family(out, "ledtemp_sse_clients", "gauge", "Open /api/events streams.");
    let _ = writeln!(out, "ledtemp_sse_clients {}", snapshot.sse_clients);
    family(out, "ledtemp_broker_connected", "gauge", "1 while subscribed to the MQTT broker.");
    let _ = writeln!(out, "ledtemp_broker_connected {}", u8::from(snapshot.broker_connected));
    let auth = state.access.counts();
    for (name, help, value) in [
        (
            "ledtemp_auth_failed_logins_total",
            "Logins refused for a wrong password.",
            auth.failed_logins,
        ),
        (
            "ledtemp_auth_rate_limited_logins_total",
            "Logins refused unchecked because of the rate limit (429).",
            auth.rate_limited_logins,
        ),
        (
            "ledtemp_auth_csrf_rejections_total",
            "State-changing requests refused for a foreign origin or a missing or wrong CSRF token.",
            auth.csrf_rejections,
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(alerts) = &state.alerts {
        alert_metrics(out, alerts);
    }
    device_metrics(out, &state.live, UnixMillis::now());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

#[cfg(test)]
mod tests {
    use super::LabelValue;

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        assert_eq!(LabelValue("kitchen-pi").to_string(), "kitchen-pi");
        assert_eq!(LabelValue("a\\b\"c\nd").to_string(), r#"a\\b\"c\nd"#);
    }
}
