//! `GET /metrics`: Prometheus text format.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::AppState;
use crate::RejectReason;

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
    let _ = writeln!(
        out,
        "# HELP ledtemp_store_errors_total Failed database commits (their frames were dropped)."
    );
    let _ = writeln!(out, "# TYPE ledtemp_store_errors_total counter");
    let _ = writeln!(out, "ledtemp_store_errors_total {}", stats.store_errors());
    let _ = writeln!(out, "# HELP ledtemp_sse_clients Open /api/events streams.");
    let _ = writeln!(out, "# TYPE ledtemp_sse_clients gauge");
    let _ = writeln!(out, "ledtemp_sse_clients {}", snapshot.sse_clients);
    let _ = writeln!(out, "# HELP ledtemp_broker_connected 1 while subscribed to the MQTT broker.");
    let _ = writeln!(out, "# TYPE ledtemp_broker_connected gauge");
    let _ = writeln!(out, "ledtemp_broker_connected {}", u8::from(snapshot.broker_connected));
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
