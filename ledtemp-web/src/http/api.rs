//! `GET /api/devices`, `GET /api/devices/{id}/temperature`, `GET /api/stats`, `GET /api/alerts`.
//! The JSON of devices and readings is the model's (`crate::model`).

use axum::Json;
use axum::extract::{Path, Query, State};
use ledtemp_core::{DeviceId, SensorName};
use serde::{Deserialize, Serialize};

use super::{AppError, AppState};
use crate::alerts::AlertsSnapshot;
use crate::live::StatsSnapshot;
use crate::model::{TemperaturePoint, UnixMillis};
use crate::store::HistoryQuery;

/// Most points one history request returns (the most recent ones in the range).
pub const MAX_HISTORY_POINTS: usize = 10_000;

/// The default history range: the last hour.
const DEFAULT_RANGE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Every device: `[{"id", "online", "last_seen", "leds": [..], "temperatures": [..]}]`.
pub(crate) async fn devices(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let json = state.live.summaries_json(UnixMillis::now());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], json)
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    since: Option<String>,
    until: Option<String>,
    sensor: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HistoryJson {
    device: DeviceId,
    points: Vec<TemperaturePoint>,
}

fn parse_time(
    name: &str,
    value: Option<&str>,
    default: UnixMillis,
) -> Result<UnixMillis, AppError> {
    match value {
        None => Ok(default),
        Some(text) => UnixMillis::parse_rfc3339(text)
            .map_err(|e| AppError::BadRequest(format!("{name}={text:?}: {e}"))),
    }
}

/// `{"device", "points": [{"sensor", "celsius", "at"}, ..]}`, oldest first; `since` and `until`
/// (RFC 3339) default to the last hour, `sensor` to every sensor.
pub(crate) async fn temperature(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryJson>, AppError> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.to_string()))?;
    let device = DeviceId::new(&id).map_err(|_| AppError::NotFound)?;
    if !state.live.knows(&device) {
        return Err(AppError::NotFound);
    }
    let sensor = params
        .sensor
        .as_deref()
        .map(SensorName::new)
        .transpose()
        .map_err(|_| AppError::BadRequest(format!("sensor={:?}", params.sensor)))?;
    let until = parse_time("until", params.until.as_deref(), UnixMillis::now())?;
    let since = parse_time("since", params.since.as_deref(), until.saturating_sub(DEFAULT_RANGE))?;
    if since > until {
        return Err(AppError::BadRequest(format!("since {since} after until {until}")));
    }
    let query = HistoryQuery { device, sensor, since, until, limit: MAX_HISTORY_POINTS };
    let history = std::sync::Arc::clone(&state.history);
    let (query, points) = tokio::task::spawn_blocking(move || {
        let points = history.temperatures(&query);
        (query, points)
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let points = points.map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(HistoryJson { device: query.device, points }))
}

pub(crate) async fn stats(State(state): State<AppState>) -> Json<StatsSnapshot> {
    Json(state.live.stats.snapshot())
}

/// `{"active": [...], "recent": [...], "notifiers": [...], ...}`; empty lists when no rule is
/// configured.
pub(crate) async fn alerts(State(state): State<AppState>) -> Json<AlertsSnapshot> {
    Json(state.alerts.as_ref().map(|alerts| alerts.snapshot()).unwrap_or_default())
}
