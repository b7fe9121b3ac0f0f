//! Login, sessions, API tokens, CSRF and the checks every request passes ([`guard`]).
//!
//! - Every request: a declared body over [`MAX_REQUEST_BODY`] is refused (413); anything but
//!   `GET`/`HEAD` must come from this origin (`Origin` matching `Host`, `Sec-Fetch-Site:
//!   same-origin`; at least one present) or gets 403.
//! - With login on, everything but `/healthz`, `/login`, `/assets/*` and the two login endpoints
//!   needs a session cookie or `Authorization: Bearer TOKEN`. A page load without one is sent to
//!   `/login` (303); an API, event-stream or metrics request gets 401.
//! - `POST /auth/login` (JSON `{"password", "csrf"}`) needs the double-submit token that
//!   `GET /auth/login-token` set as a cookie and returned; at most 5 failures a minute per client
//!   address and 60 overall (then 429 with `Retry-After`, even for the right password); Argon2
//!   runs on a blocking thread, at most [`MAX_VERIFICATIONS`] at once.
//! - `POST /auth/logout` needs the session's synchronizer token (`X-CSRF-Token`, from
//!   `GET /auth/session`) and ends the session on the server; its event streams end within
//!   [`SESSION_RECHECK`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordVerifier;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, COOKIE, HOST, LOCATION, ORIGIN, RETRY_AFTER,
    SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::AppState;
use super::auth_config::AuthConfig;
use super::login_limit::{ClientKey, LoginLimiter};
use super::session::{SessionKey, SessionLimits, SessionStore, random_secret, sha256};

/// The largest request body any route accepts (bytes); larger ones get 413.
pub const MAX_REQUEST_BODY: usize = 4096;

/// Most Argon2 verifications running at once (each takes 19 MiB and a core for tens of
/// milliseconds); a login beyond it gets 429.
pub const MAX_VERIFICATIONS: usize = 2;

/// How often an open event stream checks that its session is still open.
pub const SESSION_RECHECK: Duration = Duration::from_secs(2);

/// How long the login page's double-submit token is valid in the browser.
const LOGIN_TOKEN_MAX_AGE: u64 = 600;

/// The header that carries the session's CSRF token on `POST /auth/logout`.
const CSRF_HEADER: &str = "x-csrf-token";

/// Counters of refused logins and requests, shown in `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct AuthCounters {
    failed_logins: AtomicU64,
    rate_limited_logins: AtomicU64,
    csrf_rejections: AtomicU64,
}

/// A snapshot of [`AuthCounters`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthCounts {
    pub(crate) failed_logins: u64,
    pub(crate) rate_limited_logins: u64,
    pub(crate) csrf_rejections: u64,
}

/// Logs the first ten events of a kind, then every power of two: an attacker cannot flood the
/// log, and the counters in `/metrics` stay exact.
fn worth_logging(count: u64) -> bool {
    count <= 10 || count.is_power_of_two()
}

fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent across a panic in another holder (each method finishes its
    // update before it can panic), so a poisoned lock is used as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Who may use the HTTP side: the password hash, API token hashes, open sessions, the login
/// rate limit and the counters. Shared by all requests.
pub struct AccessControl {
    required: bool,
    password_hash: Option<Arc<str>>,
    token_hashes: Vec<[u8; 32]>,
    cookie_secure: bool,
    session_max: Duration,
    sessions: Mutex<SessionStore>,
    limiter: Mutex<LoginLimiter>,
    verifications: Arc<Semaphore>,
    counters: AuthCounters,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl").field("required", &self.required).finish_non_exhaustive()
    }
}

/// What the guard found out about a request with a session.
#[derive(Debug, Clone)]
pub(crate) struct SessionContext {
    pub(crate) key: SessionKey,
    csrf: String,
}

/// Who made a request, as the command log names them: no login configured, a bearer token (by
/// the first 8 hex digits of its hash) or a login session (by those of its key's).
#[derive(Debug, Clone)]
pub(crate) enum Principal {
    /// No login is configured.
    Open,
    /// `Authorization: Bearer`.
    Token(String),
    /// A dashboard login.
    Session(String),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Open => f.write_str("open"),
            Principal::Token(id) => write!(f, "token {id}"),
            Principal::Session(id) => write!(f, "session {id}"),
        }
    }
}

/// The synchronizer-token check of a state-changing request made with a login session: its
/// `X-CSRF-Token` header must be the session's token (from `GET /auth/session`). A request with
/// a bearer token, or to a server without login, carries no ambient credential and needs none;
/// the same-origin check ([`guard`]) applies to all. `Some` is the 403 to answer.
pub(crate) fn refuse_without_csrf_token(
    access: &AccessControl,
    session: Option<&SessionContext>,
    headers: &HeaderMap,
    path: &str,
) -> Option<Response> {
    let session = session?;
    let presented = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or(b"");
    let valid = bool::from(presented.ct_eq(session.csrf.as_bytes()));
    (!valid).then(|| access.csrf_rejected("a POST without the session's token", path))
}

/// The client's address (unspecified when the server was not started with connection info).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(IpAddr);

impl AccessControl {
    /// Access as `config` says: login required when a password or an API token is configured.
    pub fn new(config: &AuthConfig) -> AccessControl {
        AccessControl {
            required: config.is_configured(),
            password_hash: config.password_hash.as_deref().map(Arc::from),
            token_hashes: config.token_hashes.clone(),
            cookie_secure: config.cookie_secure,
            session_max: config.session_max,
            sessions: Mutex::new(SessionStore::new(SessionLimits {
                idle: config.session_idle,
                absolute: config.session_max,
                max: config.max_sessions,
            })),
            limiter: Mutex::new(LoginLimiter::default()),
            verifications: Arc::new(Semaphore::new(MAX_VERIFICATIONS)),
            counters: AuthCounters::default(),
        }
    }

    /// No login: everything is open (the default on loopback without `[auth]`).
    pub fn open() -> AccessControl {
        AccessControl::new(&AuthConfig::default())
    }

    /// Whether requests need a session or a token.
    pub fn required(&self) -> bool {
        self.required
    }

    pub(crate) fn counts(&self) -> AuthCounts {
        AuthCounts {
            failed_logins: self.counters.failed_logins.load(Ordering::Relaxed),
            rate_limited_logins: self.counters.rate_limited_logins.load(Ordering::Relaxed),
            csrf_rejections: self.counters.csrf_rejections.load(Ordering::Relaxed),
        }
    }

    /// Whether the session is still open (for event streams, which outlive their request).
    pub(crate) fn session_open(&self, key: &SessionKey) -> bool {
        lock(&self.sessions).is_open(key, Instant::now())
    }

    fn session_cookie_name(&self) -> &'static str {
        if self.cookie_secure { "__Host-ledtemp_session" } else { "ledtemp_session" }
    }

    fn login_cookie_name(&self) -> &'static str {
        if self.cookie_secure { "__Host-ledtemp_login" } else { "ledtemp_login" }
    }

    /// `Set-Cookie` for `name=value`, `max_age` seconds (0 deletes it).
    fn cookie(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.cookie_secure { "; Secure" } else { "" };
        let text =
            format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
        // Names are constants and values hex, so this cannot fail; an empty cookie if it did.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Whether `token` (from `Authorization: Bearer`) hashes to a configured token hash. Every
    /// configured hash is compared, in constant time.
    fn token_valid(&self, token: &str) -> bool {
        let presented = sha256(token);
        self.token_hashes
            .iter()
            .fold(subtle::Choice::from(0), |found, hash| found | hash.ct_eq(&presented))
            .into()
    }

    fn csrf_rejected(&self, why: &str, path: &str) -> Response {
        let count = bump(&self.counters.csrf_rejections);
        if worth_logging(count) {
            tracing::warn!(path, why, count, "request refused: CSRF check failed");
        }
        error(StatusCode::FORBIDDEN, "forbidden")
    }
}

fn error(status: StatusCode, message: &'static str) -> Response {
    (status, [(CACHE_CONTROL, "no-store")], Json(json!({ "error": message }))).into_response()
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether a state-changing request comes from this origin. Browsers send `Origin` on every
/// POST and `Sec-Fetch-Site` on every request; one of them must be present and both, if present,
/// must say same origin. Clients that send neither (curl) must add `Origin`.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let site = text("sec-fetch-site");
    let origin = text(ORIGIN.as_str());
    if site.is_none() && origin.is_none() {
        return Err("neither Origin nor Sec-Fetch-Site");
    }
    if site.is_some_and(|site| site != "same-origin") {
        return Err("Sec-Fetch-Site is not same-origin");
    }
    if let Some(origin) = origin {
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        let host = text(HOST.as_str());
        if !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h)) {
            return Err("Origin is another origin");
        }
    }
    Ok(())
}

/// Marks a request that presented a valid API token or an open session.
#[derive(Debug, Clone, Copy)]
struct Authenticated;

/// The checks every request passes before routing; see the module documentation. It finds out
/// who is asking (a valid token or session is marked on the request); whether a route needs that
/// is the router's structure ([`require_login`], [`require_login_page`]).
pub(crate) async fn guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = &state.access;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_REQUEST_BODY as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        && let Err(why) = same_origin(request.headers())
    {
        return access.csrf_rejected(why, request.uri().path());
    }
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    request.extensions_mut().insert(ClientIp(ip));
    if !access.required {
        request.extensions_mut().insert(Principal::Open);
        return next.run(request).await;
    }
    if let Some(value) = request.headers().get(AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token.map(str::trim).filter(|token| access.token_valid(token)) else {
            return unauthorized();
        };
        let id = hex::encode(sha256(token).get(..4).unwrap_or_default());
        request.extensions_mut().insert(Principal::Token(id));
        request.extensions_mut().insert(Authenticated);
        return next.run(request).await;
    }
    let session = cookie(request.headers(), access.session_cookie_name()).and_then(|id| {
        let key = SessionKey::of(id);
        let csrf = lock(&access.sessions).touch(&key, Instant::now())?;
        Some(SessionContext { key, csrf })
    });
    if let Some(session) = session {
        request.extensions_mut().insert(Principal::Session(session.key.short_id()));
        request.extensions_mut().insert(session);
        request.extensions_mut().insert(Authenticated);
    }
    next.run(request).await
}

/// Whether the request may reach a protected route.
fn admitted(access: &AccessControl, request: &Request) -> bool {
    !access.required || request.extensions().get::<Authenticated>().is_some()
}

/// The layer of the routes a program reads (API, events, metrics, session): without a login,
/// 401.
pub(crate) async fn require_login(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if admitted(&state.access, &request) { next.run(request).await } else { unauthorized() }
}

/// The layer of the pages: without a login, sent to the login page (303).
pub(crate) async fn require_login_page(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if admitted(&state.access, &request) { next.run(request).await } else { see_other("/login") }
}

fn unauthorized() -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "login required");
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to), (CACHE_CONTROL, "no-store")]).into_response()
}

/// `GET /login`: the login page; straight to the dashboard when already logged in or when no
/// login is configured.
pub(crate) async fn login_page(
    State(state): State<AppState>,
    session: Option<axum::Extension<SessionContext>>,
    headers: HeaderMap,
) -> Response {
    if !state.access.required || session.is_some() {
        return see_other("/");
    }
    crate::dashboard::login_page(&headers)
}

/// `GET /auth/login-token`: a fresh double-submit token for the login form, as a cookie and in
/// the body.
pub(crate) async fn login_token(State(state): State<AppState>) -> Response {
    let Some(token) = random_secret() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let cookie = state.access.cookie(state.access.login_cookie_name(), &token, LOGIN_TOKEN_MAX_AGE);
    ([(SET_COOKIE, cookie)], [(CACHE_CONTROL, "no-store")], Json(json!({ "csrf": token })))
        .into_response()
}

/// `GET /auth/session`: whether login is on, and the session's CSRF token for logout.
pub(crate) async fn session_info(
    State(state): State<AppState>,
    session: Option<axum::Extension<SessionContext>>,
) -> Response {
    let csrf = session.map(|s| s.0.csrf);
    ([(CACHE_CONTROL, "no-store")], Json(json!({ "auth": state.access.required, "csrf": csrf })))
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
    csrf: String,
}

/// `POST /auth/login`.
pub(crate) async fn login(
    State(state): State<AppState>,
    axum::Extension(ClientIp(ip)): axum::Extension<ClientIp>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let access = Arc::clone(&state.access);
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            tracing::debug!("login body refused: {rejection}");
            return error(
                status,
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload too large"
                } else {
                    "bad request"
                },
            );
        }
    };
    let Ok(form) = serde_json::from_slice::<LoginForm>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad request");
    };
    let expected = cookie(&headers, access.login_cookie_name()).unwrap_or("");
    let matches: bool = expected.as_bytes().ct_eq(form.csrf.as_bytes()).into();
    if expected.is_empty() || !matches {
        return access.csrf_rejected("login without its double-submit token", "/auth/login");
    }
    let Some(hash) = access.password_hash.clone() else {
        tracing::debug!("login attempt, but no password is configured");
        return error(StatusCode::UNAUTHORIZED, "login failed");
    };
    let client = ClientKey::of(ip);
    let limited = lock(&access.limiter).check(client, Instant::now()).err();
    let permit = match limited {
        None => Arc::clone(&access.verifications)
            .try_acquire_owned()
            .map_err(|_| Duration::from_secs(1)),
        Some(retry_after) => Err(retry_after),
    };
    let permit = match permit {
        Ok(permit) => permit,
        Err(retry_after) => {
            let count = bump(&access.counters.rate_limited_logins);
            if worth_logging(count) {
                tracing::warn!(%ip, count, "login refused: rate limited");
            }
            let secs = retry_after.as_secs().max(1).to_string();
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many attempts");
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            return response;
        }
    };
    let password = Zeroizing::new(form.password);
    let verified = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        argon2::Argon2::default().verify_password(password.as_bytes(), &*hash).is_ok()
    })
    .await;
    let verified = match verified {
        Ok(verified) => verified,
        Err(e) => {
            tracing::error!("password verification task failed: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let now = Instant::now();
    if !verified {
        lock(&access.limiter).failed(client, now);
        let count = bump(&access.counters.failed_logins);
        if worth_logging(count) {
            tracing::warn!(%ip, count, "login failed: wrong password");
        }
        return error(StatusCode::UNAUTHORIZED, "login failed");
    }
    lock(&access.limiter).succeeded(client);
    let Some(session) = lock(&access.sessions).open(now) else {
        tracing::error!("login: the system's random source failed");
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    tracing::info!(%ip, "login");
    let max_age = access.session_max.as_secs();
    let mut response =
        ([(CACHE_CONTROL, "no-store")], Json(json!({ "csrf": session.csrf }))).into_response();
    let headers = response.headers_mut();
    headers.append(SET_COOKIE, access.cookie(access.session_cookie_name(), &session.id, max_age));
    headers.append(SET_COOKIE, access.cookie(access.login_cookie_name(), "", 0));
    response
}

/// `POST /auth/logout`: ends the session on the server (its cookie is worthless from then on)
/// and deletes the cookie.
pub(crate) async fn logout(
    State(state): State<AppState>,
    session: Option<axum::Extension<SessionContext>>,
    headers: HeaderMap,
) -> Response {
    let access = &state.access;
    if let Some(axum::Extension(session)) = session {
        let path = "/auth/logout";
        if let Some(refused) = refuse_without_csrf_token(access, Some(&session), &headers, path) {
            return refused;
        }
        lock(&access.sessions).close(&session.key);
        tracing::info!("logout");
    }
    let cookie = access.cookie(access.session_cookie_name(), "", 0);
    (
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, cookie), (CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn same_origin_needs_a_matching_origin_or_fetch_site() {
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080")])).is_ok());
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])).is_ok());
        for bad in [
            vec![host],
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://127.0.0.1:8080.evil.example")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
            vec![("origin", "http://127.0.0.1:8080")],
        ] {
            assert!(same_origin(&headers(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let map = headers(&[("cookie", "a=1; ledtemp_session=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&map, "ledtemp_session"), Some("abc"));
        assert_eq!(cookie(&map, "b"), Some("2"));
        assert_eq!(cookie(&map, "session"), None);
    }

    #[test]
    fn tokens_compare_by_hash() {
        let (token, hash) = super::super::auth_config::new_api_token().unwrap();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).unwrap();
        let config = AuthConfig { token_hashes: vec![[1; 32], bytes], ..AuthConfig::default() };
        let access = AccessControl::new(&config);
        assert!(access.required());
        assert!(access.token_valid(&token));
        assert!(!access.token_valid("ltk_wrong"));
        assert!(!access.token_valid(""));
        assert!(!AccessControl::open().required());
    }

    #[test]
    fn log_lines_thin_out() {
        let logged = (1..=1000u64).filter(|n| worth_logging(*n)).count();
        assert_eq!(logged, 10 + 6); // 1..=10, then 16, 32, ..., 512
    }
}
