//! The HTTP side: JSON API, Server-Sent Events, health and metrics, behind the login
//! ([`auth`]). Handlers only read state, but for three POSTs, each CSRF-checked: login, logout
//! and switching a device's LED (`command`).

mod api;
mod auth;
mod auth_config;
mod command;
mod export;
mod health;
mod login_limit;
mod metrics;
mod serve;
mod session;
mod sse;

pub(crate) use serve::serve;
pub use serve::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, HttpLimits};

pub use auth::{AccessControl, MAX_REQUEST_BODY, MAX_VERIFICATIONS, SESSION_RECHECK};
pub(crate) use auth_config::AuthSection;
pub use auth_config::{
    AuthArgs, AuthConfig, MIN_PASSWORD_LEN, hash_password, hash_password_command, new_api_token,
    new_token_command,
};
pub use command::MAX_COMMAND_LOG;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::server::ServerState;

/// The policy on every response: only this origin, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY_VALUE: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the handlers read: the server's state, and who may read it. Derefs to the
/// [`ServerState`], so a handler reads `state.live`, `state.history`, `state.alerts`.
#[derive(Clone)]
pub struct AppState {
    /// Counters, device states, history, alerts, keys.
    pub server: ServerState,
    /// Login, sessions, API tokens ([`AccessControl::open`]: no login).
    pub access: Arc<AccessControl>,
}

impl std::ops::Deref for AppState {
    type Target = ServerState;
    fn deref(&self) -> &ServerState {
        &self.server
    }
}

/// The whole HTTP application: API, events, health, metrics, the dashboard and its login, with
/// the access checks, a body limit of [`MAX_REQUEST_BODY`] and security headers on every
/// request. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so that the
/// login rate limit sees client addresses (without, all clients share one limit).
///
/// Which routes need a login is the router's structure: the public routes (health probe, login
/// page and endpoints, static assets), the API routes behind a layer that answers 401 without a
/// login, and the dashboard page behind one that sends the browser to `/login`.
pub fn app(state: AppState) -> Router {
    let public = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/login", get(auth::login_page))
        .route("/auth/login-token", get(auth::login_token))
        .route("/auth/login", post(auth::login))
        .merge(crate::dashboard::asset_routes());
    let api = Router::new()
        .route("/auth/logout", post(auth::logout))
        .route("/auth/session", get(auth::session_info))
        .route("/api/devices", get(api::devices))
        .route("/api/devices/{id}/temperature", get(api::temperature))
        .route("/api/devices/{id}/temperature.csv", get(export::temperature_csv))
        .route("/api/devices/{id}/leds", get(api::leds))
        .route("/api/devices/{id}/leds.csv", get(export::leds_csv))
        .route("/api/stats", get(api::stats))
        .route("/api/alerts", get(api::alerts))
        .route("/api/devices/{id}/leds/{led}", post(command::switch_led))
        .route("/api/commands", get(command::command_log))
        .route("/api/events", get(sse::events))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_login));
    let pages = crate::dashboard::page_routes()
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_login_page));
    Router::new()
        .merge(public)
        .merge(api)
        .merge(pages)
        .fallback(|| async { AppError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_VALUE),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        (X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    }
    response
}

/// An HTTP failure: clients get a generic body, the details go to the log only.
#[derive(Debug)]
pub(crate) enum AppError {
    /// No such route or device.
    NotFound,
    /// A query parameter is invalid; the detail is logged.
    BadRequest(String),
    /// Something failed on our side; the detail is logged.
    Internal(String),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "not found"),
            AppError::BadRequest(detail) => {
                tracing::debug!("bad request: {detail}");
                (StatusCode::BAD_REQUEST, "bad request")
            }
            AppError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        };
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}
