//! `POST /api/devices/{id}/leds/{led}` (switch an LED, `crate::command`) and `GET /api/commands`
//! (the command log).
//!
//! The POST answers once the outcome is known, at most [`CONFIRM_TIMEOUT`] later:
//!
//! | status | body | when |
//! | --- | --- | --- |
//! | 200 | the log entry, `"outcome": "confirmed"` | the device reported the asked state |
//! | 504 | the log entry, `"outcome": "timed_out"` | no confirmation in time; the command has expired on the node |
//! | 409 | `{"error"}` | the device is offline, or its current connection was not seen yet |
//! | 404 | `{"error": "not found"}` | no such device, or an LED it never reported |
//! | 400 | `{"error": "bad request"}` | the body is not `{"on": true\|false}` |
//! | 403 | `{"error"}` | another origin, or a login session's POST without its `X-CSRF-Token` |
//! | 503 | `{"error"}` | the broker is not connected, the database fails, or no MQTT link |
//!
//! [`CONFIRM_TIMEOUT`]: crate::CONFIRM_TIMEOUT

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ledtemp_core::{DeviceId, LedName, LedState};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Principal, SessionContext, refuse_without_csrf_token};
use super::{AppError, AppState};
use crate::command::{CommandOutcome, CommandRefusal, CommandRequest};

/// The body of a switch request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SwitchBody {
    on: bool,
}

/// Most log entries one `GET /api/commands` returns.
pub const MAX_COMMAND_LOG: usize = 500;

/// `POST /api/devices/{id}/leds/{led}` with `{"on": bool}`.
pub(crate) async fn switch_led(
    State(state): State<AppState>,
    Path((id, led)): Path<(String, String)>,
    principal: Option<axum::Extension<Principal>>,
    session: Option<axum::Extension<SessionContext>>,
    headers: HeaderMap,
    body: Result<Json<SwitchBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let path = format!("/api/devices/{id}/leds/{led}");
    let session = session.as_ref().map(|s| &s.0);
    if let Some(refused) = refuse_without_csrf_token(&state.access, session, &headers, &path) {
        return refused;
    }
    let (Ok(device), Ok(led)) = (DeviceId::new(&id), LedName::new(&led)) else {
        return AppError::NotFound.into_response();
    };
    // A device of the keyring, or (a teaching server in plaintext mode has no keyring) one the
    // server has heard from.
    if !state.keys.contains_device(&device) && !state.live.knows(&device) {
        return AppError::NotFound.into_response();
    }
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return AppError::BadRequest(rejection.body_text()).into_response(),
    };
    let Some(commander) = &state.commands else {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "this server has no MQTT link");
    };
    let by = principal.map_or_else(|| Principal::Open.to_string(), |p| p.0.to_string());
    let request = CommandRequest { device, led, state: LedState::from(body.on) };
    match commander.send(request, by).await {
        Ok(record) => {
            let status = match record.outcome {
                CommandOutcome::Confirmed => StatusCode::OK,
                _ => StatusCode::GATEWAY_TIMEOUT,
            };
            (status, Json(record)).into_response()
        }
        Err(refusal) => {
            let status = match refusal {
                CommandRefusal::UnknownDevice | CommandRefusal::UnknownLed => {
                    return AppError::NotFound.into_response();
                }
                CommandRefusal::Offline | CommandRefusal::NoClock => StatusCode::CONFLICT,
                CommandRefusal::InsecurePlaintext
                | CommandRefusal::BrokerDown
                | CommandRefusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            refused(status, &refusal.to_string())
        }
    }
}

fn refused(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogParams {
    device: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/commands?device=&limit=`: the command log, newest first (at most
/// [`MAX_COMMAND_LOG`] entries, 50 by default).
pub(crate) async fn command_log(
    State(state): State<AppState>,
    params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(params) = params.map_err(|e| AppError::BadRequest(e.to_string()))?;
    let device = params
        .device
        .as_deref()
        .map(DeviceId::new)
        .transpose()
        .map_err(|_| AppError::BadRequest(format!("device={:?}", params.device)))?;
    let limit = params.limit.unwrap_or(50).min(MAX_COMMAND_LOG);
    let history = std::sync::Arc::clone(&state.history);
    let records = tokio::task::spawn_blocking(move || history.commands(device.as_ref(), limit))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(records).into_response())
}
