//! `GET /healthz`: 200 while the MQTT link is up, 503 while it is down.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub(crate) async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.live.stats.broker_connected() {
        (StatusCode::OK, Json(json!({ "status": "ok", "broker": "connected" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "broker": "disconnected" })),
        )
    }
}
