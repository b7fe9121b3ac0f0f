//! `GET /healthz`: 200 while the MQTT link is up and the database takes commits, 503 (with
//! which of the two is not) otherwise.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub(crate) async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let stats = &state.live.stats;
    let (broker, store) = (stats.broker_connected(), stats.store_ok());
    let status = if broker && store { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
        "broker": if broker { "connected" } else { "disconnected" },
        "store": if store { "ok" } else { "failing" },
    });
    (status, Json(body))
}
