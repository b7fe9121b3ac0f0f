//! A stand-in for Twilio's SMS API: a local HTTP server that records every request it gets and
//! answers each as Twilio answers a message it accepted (201, a message sid). A server's
//! `[alert.notifier.NAME]` pointing at it ([`TwilioStandIn::notifier_toml`]) texts here.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use tokio::task::JoinHandle;

/// The account the notifier is configured with.
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The account's auth token (written to the notifier's `auth_token_file`).
pub const AUTH_TOKEN: &str = "tok3n-value";
/// base64 of `ACCOUNT_SID:AUTH_TOKEN`: what the `Authorization: Basic` header must carry.
pub const BASIC_TOKEN: &str = "QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0b2szbi12YWx1ZQ==";
/// The sender number of the notifier.
pub const FROM: &str = "+15005550006";
/// The number the notifier texts.
pub const TO: &str = "+14155550100";

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsRequest {
    /// Its path (Twilio's is `/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json`).
    pub path: String,
    /// Its `Authorization` header, empty if none.
    pub authorization: String,
    /// Its body: the form Twilio takes (`To`, `From`, `Body`, URL-encoded).
    pub body: String,
}

type Requests = Arc<Mutex<Vec<SmsRequest>>>;

/// The stand-in, on a free port of 127.0.0.1, on the runtime it was started on; it stops when
/// dropped.
#[derive(Debug)]
pub struct TwilioStandIn {
    requests: Requests,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TwilioStandIn {
    /// Starts it on the current tokio runtime.
    pub async fn start() -> TwilioStandIn {
        let requests = Requests::default();
        let app = Router::new().fallback(record).with_state(Arc::clone(&requests));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TwilioStandIn { requests, addr, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<SmsRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests it received so far.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// A server configuration file's `[alert.notifier.NAME]` that texts [`TO`] from [`FROM`]
    /// through this stand-in with [`ACCOUNT_SID`] and [`AUTH_TOKEN`], at most 10 a day. Writes
    /// the token to `token_file`, which the section names.
    pub fn notifier_toml(&self, name: &str, token_file: &Path) -> String {
        std::fs::write(token_file, format!("{AUTH_TOKEN}\n")).unwrap();
        format!(
            r#"
            [alert.notifier.{name}]
            kind = "twilio"
            account_sid = "{ACCOUNT_SID}"
            auth_token_file = {token_file:?}
            from = "{FROM}"
            to = "{TO}"
            base_url = "http://{addr}"
            daily_cap = 10
            "#,
            addr = self.addr,
        )
    }
}

impl Drop for TwilioStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(requests): State<Requests>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut requests = requests.lock().unwrap();
    requests.push(SmsRequest {
        path: uri.path().to_owned(),
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let sid = format!("SM{:032x}", requests.len());
    (StatusCode::CREATED, format!(r#"{{"sid":"{sid}","status":"queued"}}"#))
}
