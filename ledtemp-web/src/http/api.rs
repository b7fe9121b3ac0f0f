//! `GET /api/devices`, `GET /api/devices/{id}/temperature` (a chart of a range),
//! `GET /api/devices/{id}/leds` (an LED timeline), `GET /api/stats`, `GET /api/alerts`.
//! The JSON of devices and readings is the model's (`crate::model`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use ledtemp_core::{DeviceId, SensorName};
use serde::Deserialize;

use super::{AppError, AppState};
use crate::alerts::AlertsSnapshot;
use crate::history::{
    DEFAULT_HISTORY_POINTS, LedHistory, MAX_HISTORY_POINTS, RangeQuery, TemperatureHistory,
};
use crate::live::StatsSnapshot;
use crate::model::UnixMillis;

/// The default history range: the last hour.
const DEFAULT_RANGE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Every device: `[{"id", "online", "last_seen", "leds": [..], "temperatures": [..]}]`.
pub(crate) async fn devices(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let json = state.live.summaries_json(UnixMillis::now());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], json)
}

/// The query of every history route: `since`, `until` (RFC 3339), `sensor`, `points`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    since: Option<String>,
    until: Option<String>,
    sensor: Option<String>,
    points: Option<String>,
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

/// The range a history request asks for, checked: a device the server knows (404 otherwise),
/// valid times with `since` not after `until` (by default the last hour), a valid sensor name,
/// `points` from 1 to [`MAX_HISTORY_POINTS`] (by default [`DEFAULT_HISTORY_POINTS`]).
pub(super) fn range_query(
    state: &AppState,
    id: &str,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<RangeQuery, AppError> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.to_string()))?;
    let device = DeviceId::new(id).map_err(|_| AppError::NotFound)?;
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
    let points = match params.points.as_deref() {
        None => DEFAULT_HISTORY_POINTS,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|points| (1..=MAX_HISTORY_POINTS).contains(points))
            .ok_or_else(|| AppError::BadRequest(format!("points={text:?}")))?,
    };
    Ok(RangeQuery { device, sensor, since, until, points })
}

/// Runs a blocking history read off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(|e| AppError::Internal(e.to_string()))
}

/// `{"device", "since", "until", "bucket_ms", "points": [{"sensor", "at", "celsius", "min",
/// "max", "count"}, ..]}`, oldest first, at most `points` per sensor: raw readings (`bucket_ms`
/// 0) or min/mean/max buckets ([`HistoryStore::temperature_history`](crate::HistoryStore)).
pub(crate) async fn temperature(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<TemperatureHistory>, AppError> {
    let query = range_query(&state, &id, params)?;
    let history = Arc::clone(&state.history);
    blocking(move || history.temperature_history(&query)).await.map(Json)
}

/// `{"device", "since", "until", "initial": [{"led", "on", "at"}], "changes": [..],
/// "truncated"}`: each LED's state before `since` and its stored changes in the range.
pub(crate) async fn leds(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<LedHistory>, AppError> {
    let query = range_query(&state, &id, params)?;
    let history = Arc::clone(&state.history);
    blocking(move || history.led_history(&query)).await.map(Json)
}

pub(crate) async fn stats(State(state): State<AppState>) -> Json<StatsSnapshot> {
    Json(state.live.stats.snapshot())
}

/// `{"active": [...], "recent": [...], "notifiers": [...], ...}`; empty lists when no rule is
/// configured.
pub(crate) async fn alerts(State(state): State<AppState>) -> Json<AlertsSnapshot> {
    Json(state.alerts.as_ref().map(|alerts| alerts.snapshot()).unwrap_or_default())
}
