//! `GET /api/devices`, `GET /api/devices/{id}/temperature`, `GET /api/stats`.

use axum::Json;
use axum::extract::{Path, Query, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{AppError, AppState};
use crate::alert_driver::AlertsSnapshot;
use crate::state::{StatsSnapshot, now_ms, rfc3339};

/// Most points one history request returns (the most recent ones in the range).
pub const MAX_HISTORY_POINTS: usize = 10_000;

/// The default history range: the last hour.
const DEFAULT_RANGE_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Serialize)]
pub(crate) struct DeviceJson {
    id: String,
    online: bool,
    /// `null` for a keyring device never heard from.
    last_seen: Option<String>,
    leds: Vec<LedJson>,
    temperatures: Vec<TemperatureJson>,
}

#[derive(Debug, Serialize)]
struct LedJson {
    led: String,
    on: bool,
    at: String,
}

#[derive(Debug, Serialize)]
struct TemperatureJson {
    sensor: String,
    celsius: f64,
    at: String,
}

pub(crate) async fn devices(State(state): State<AppState>) -> Json<Vec<DeviceJson>> {
    let now = now_ms();
    let devices = state
        .live
        .devices()
        .into_iter()
        .map(|(id, device)| DeviceJson {
            online: state.live.is_online(&device, now),
            last_seen: device.last_seen_ms.map(rfc3339),
            leds: device
                .leds
                .iter()
                .map(|(led, &(on, at))| LedJson { led: led.clone(), on, at: rfc3339(at) })
                .collect(),
            temperatures: device
                .temperatures
                .iter()
                .map(|(sensor, &(milli, at))| TemperatureJson {
                    sensor: sensor.clone(),
                    celsius: f64::from(milli) / 1000.0,
                    at: rfc3339(at),
                })
                .collect(),
            id,
        })
        .collect();
    Json(devices)
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    sensor: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HistoryJson {
    device: String,
    points: Vec<PointJson>,
}

#[derive(Debug, Serialize)]
struct PointJson {
    sensor: String,
    at: String,
    celsius: f64,
}

fn parse_time(name: &str, value: Option<&str>, default: i64) -> Result<i64, AppError> {
    match value {
        None => Ok(default),
        Some(text) => text
            .parse::<Timestamp>()
            .map(|t| t.as_millisecond())
            .map_err(|e| AppError::BadRequest(format!("{name}={text:?}: {e}"))),
    }
}

pub(crate) async fn temperature(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryJson>, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadRequest(e.to_string()))?;
    if ledtemp_core::DeviceId::new(&id).is_err() || !state.live.knows(&id) {
        return Err(AppError::NotFound);
    }
    if let Some(sensor) = &query.sensor {
        ledtemp_core::SensorName::new(sensor)
            .map_err(|_| AppError::BadRequest(format!("sensor={sensor:?}")))?;
    }
    let now = now_ms();
    let until = parse_time("until", query.until.as_deref(), now)?;
    let since =
        parse_time("since", query.since.as_deref(), until.saturating_sub(DEFAULT_RANGE_MS))?;
    if since > until {
        return Err(AppError::BadRequest(format!("since {since} after until {until}")));
    }
    let reader = state.history.clone();
    let device = id.clone();
    let points = tokio::task::spawn_blocking(move || {
        reader.temperatures(&device, query.sensor.as_deref(), since, until, MAX_HISTORY_POINTS)
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let points = points
        .into_iter()
        .map(|p| PointJson {
            sensor: p.sensor,
            at: rfc3339(p.at_ms),
            celsius: f64::from(p.milli_celsius) / 1000.0,
        })
        .collect();
    Ok(Json(HistoryJson { device: id, points }))
}

pub(crate) async fn stats(State(state): State<AppState>) -> Json<StatsSnapshot> {
    Json(state.live.stats.snapshot())
}

/// `{"active": [...], "recent": [...], "notifiers": [...], ...}`; empty lists when no rule is
/// configured.
pub(crate) async fn alerts(State(state): State<AppState>) -> Json<AlertsSnapshot> {
    Json(state.alerts.as_ref().map(|alerts| alerts.snapshot()).unwrap_or_default())
}
