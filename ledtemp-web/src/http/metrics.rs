//! `GET /metrics`: Prometheus text format.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::AppState;
use crate::RejectReason;
use crate::alerts::AlertBoard;
use crate::command::CommandOutcome;

/// The alert engine's counters and each notifier's deliveries. Notifier names come from the
/// server's own configuration, but are escaped as Prometheus label values all the same.
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
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
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
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for notifier in &notifiers {
            let c = notifier.counters;
            let value = match outcome {
                "sent" => c.sent,
                "failed" => c.failed,
                "retried" => c.retried,
                _ => c.capped,
            };
            let label =
                notifier.name.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ =
                writeln!(out, "{name}{{notifier=\"{label}\",kind=\"{}\"}} {value}", notifier.kind);
        }
    }
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = &state.live.stats;
    let snapshot = stats.snapshot();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP ledtemp_frames_accepted_total Frames that passed every check and were stored."
    );
    let _ = writeln!(out, "# TYPE ledtemp_frames_accepted_total counter");
    let _ = writeln!(out, "ledtemp_frames_accepted_total {}", snapshot.accepted);
    let _ = writeln!(out, "# HELP ledtemp_frames_rejected_total Frames refused, by reason.");
    let _ = writeln!(out, "# TYPE ledtemp_frames_rejected_total counter");
    for reason in RejectReason::ALL {
        let _ = writeln!(
            out,
            "ledtemp_frames_rejected_total{{reason=\"{}\"}} {}",
            reason.label(),
            stats.rejected(reason)
        );
    }
    let _ = writeln!(out, "# HELP ledtemp_commands_total LED commands asked for, by outcome.");
    let _ = writeln!(out, "# TYPE ledtemp_commands_total counter");
    for outcome in CommandOutcome::ALL {
        let count = stats.commands(outcome);
        let _ = writeln!(out, "ledtemp_commands_total{{outcome=\"{}\"}} {count}", outcome.label());
    }
    let _ = writeln!(
        out,
        "# HELP ledtemp_store_errors_total Failed database commits (their frames were dropped)."
    );
    let _ = writeln!(out, "# TYPE ledtemp_store_errors_total counter");
    let _ = writeln!(out, "ledtemp_store_errors_total {}", stats.store_errors());
    let _ = writeln!(
        out,
        "# HELP ledtemp_store_ok 1 while the database takes commits, 0 from a failed commit until \
         one succeeds."
    );
    let _ = writeln!(out, "# TYPE ledtemp_store_ok gauge");
    let _ = writeln!(out, "ledtemp_store_ok {}", u8::from(stats.store_ok()));
    let _ = writeln!(
        out,
        "# HELP ledtemp_keyring_reload_failures_total Keyring reloads (SIGHUP) that failed; the \
         keys loaded before stayed in use."
    );
    let _ = writeln!(out, "# TYPE ledtemp_keyring_reload_failures_total counter");
    let _ =
        writeln!(out, "ledtemp_keyring_reload_failures_total {}", stats.keyring_reload_failures());
    let _ = writeln!(out, "# HELP ledtemp_sse_clients Open /api/events streams.");
    let _ = writeln!(out, "# TYPE ledtemp_sse_clients gauge");
    let _ = writeln!(out, "ledtemp_sse_clients {}", snapshot.sse_clients);
    let _ = writeln!(out, "# HELP ledtemp_broker_connected 1 while subscribed to the MQTT broker.");
    let _ = writeln!(out, "# TYPE ledtemp_broker_connected gauge");
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
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(alerts) = &state.alerts {
        alert_metrics(&mut out, alerts);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
