//! Alerts: the rules engine on a fake clock, and the notifiers against a local HTTP server that
//! plays Twilio (or a webhook receiver), answering from a script.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ledtemp_core::{
    DeviceId, LedChange, LedName, LedState, LedStatus, Message, MilliCelsius, NodeStatus,
    SensorName, StatusReport, TemperatureReading, Uptime,
};
use ledtemp_web::alerts::{
    AlertError, AlertKey, AlertState, Condition, Delivery, DeliveryPolicy, Engine, LogNotifier,
    Notification, NotificationKind, Notifier, Rule, Secret, Sleeper, Threshold, TwilioAuth,
    TwilioConfig, TwilioError, TwilioSender, TwilioSms, Webhook, WebhookConfig,
};
use ledtemp_web::{DeviceState, DeviceUpdate, UnixMillis};
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "tok3n-value";
/// base64 of `ACCOUNT_SID:AUTH_TOKEN`.
const BASIC_TOKEN: &str = "QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0b2szbi12YWx1ZQ==";
const API_KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
/// base64 of `API_KEY_SID:key-s3cret`.
const BASIC_API_KEY: &str = "U0swMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjprZXktczNjcmV0";
const SERVICE_SID: &str = "MG0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// A scripted HTTP server

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
}

#[derive(Clone, Default)]
struct Mock {
    requests: Arc<Mutex<Vec<Recorded>>>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl Mock {
    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.answers.lock().unwrap().extend(answers);
    }

    fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

async fn record(
    State(mock): State<Mock>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mock.requests.lock().unwrap().push(Recorded {
        method,
        path: uri.path().to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let answer = mock.answers.lock().unwrap().pop_front().unwrap_or(Answer {
        status: 599,
        headers: vec![],
        body: "unscripted request".into(),
    });
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

async fn start_mock() -> (Mock, SocketAddr) {
    let mock = Mock::default();
    let app = Router::new().fallback(record).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (mock, addr)
}

fn created(sid: &str) -> Answer {
    Answer {
        status: 201,
        headers: vec![],
        body: format!(
            r#"{{"account_sid":"{ACCOUNT_SID}","api_version":"2010-04-01","body":"ALERT","date_created":"Tue, 14 Nov 2023 22:13:20 +0000","date_sent":null,"direction":"outbound-api","error_code":null,"error_message":null,"from":"+15005550006","messaging_service_sid":null,"num_media":"0","num_segments":"1","price":null,"price_unit":"USD","sid":"{sid}","status":"queued","to":"+14155550100","uri":"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json"}}"#
        ),
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> Answer {
    Answer {
        status,
        headers: vec![],
        body: format!(
            r#"{{"code":{code},"message":"{message}","more_info":"https://www.twilio.com/docs/errors/{code}","status":{status}}}"#
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// A fake clock for the retries

#[derive(Debug, Clone, Default)]
struct FakeSleeper(Arc<Mutex<Vec<Duration>>>);

impl FakeSleeper {
    fn slept(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Sleeper for FakeSleeper {
    async fn sleep(&self, duration: Duration) {
        self.0.lock().unwrap().push(duration);
    }
}

fn policy(daily_cap: Option<u32>) -> DeliveryPolicy {
    DeliveryPolicy {
        daily_cap,
        max_attempts: 3,
        initial_backoff: Duration::from_secs(2),
        max_backoff: Duration::from_secs(30),
    }
}

fn twilio(addr: SocketAddr) -> TwilioSms {
    let mut config = TwilioConfig::new(
        ACCOUNT_SID,
        TwilioAuth::AuthToken(Secret::new(AUTH_TOKEN)),
        TwilioSender::From("+15005550006".into()),
        "+14155550100",
    );
    config.base_url = format!("http://{addr}");
    TwilioSms::new(config).unwrap()
}

fn notification(text: &str) -> Notification {
    Notification {
        alert_id: 7,
        rule: "kitchen-hot".into(),
        device: "kitchen-pi".into(),
        subject: Some("room".into()),
        kind: NotificationKind::Firing,
        at_ms: T0,
        milli_celsius: Some(31_500),
        led_on: None,
        text: text.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Twilio

#[tokio::test]
async fn twilio_gets_the_exact_request_and_each_answer_is_handled() {
    let (mock, addr) = start_mock().await;
    let sleeper = FakeSleeper::default();
    let delivery = Delivery::new(twilio(addr), policy(None), sleeper.clone());
    let note = notification("ALERT kitchen-pi/room 31.5 °C");
    let path = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json");

    // 201: sent, with the message SID.
    mock.script([created("SM0123456789abcdef0123456789abcdef")]);
    let sent = delivery.deliver(T0, &note).await.unwrap();
    assert_eq!(sent.id.as_deref(), Some("SM0123456789abcdef0123456789abcdef"));
    let requests = mock.take_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, path);
    assert_eq!(request.headers["authorization"], format!("Basic {BASIC_TOKEN}").as_str());
    assert_eq!(request.headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(
        request.body,
        "To=%2B14155550100&From=%2B15005550006&Body=ALERT+kitchen-pi%2Froom+31.5+%C2%B0C"
    );

    // 400, code 21211 (invalid To): no retry, a typed error.
    mock.script([twilio_error(400, 21211, "The 'To' number +1415 is not a valid phone number.")]);
    let error = delivery.deliver(T0, &note).await.unwrap_err();
    match &error {
        AlertError::Refused { status: 400, twilio: Some(body), .. } => {
            assert_eq!(body.code, TwilioError::INVALID_TO);
            assert_eq!(body.status, 400);
            assert_eq!(body.more_info, "https://www.twilio.com/docs/errors/21211");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("check the `to` number"), "{error}");
    assert_eq!(mock.take_requests().len(), 1);

    // 401, code 20003: no retry; nothing secret in the error.
    mock.script([twilio_error(401, 20003, "Authenticate")]);
    let error = delivery.deliver(T0, &note).await.unwrap_err();
    assert!(matches!(
        &error,
        AlertError::Refused { status: 401, twilio: Some(TwilioError { code: 20003, .. }), .. }
    ));
    for shown in [error.to_string(), format!("{error:?}"), format!("{delivery:?}")] {
        assert!(!shown.contains(AUTH_TOKEN) && !shown.contains(BASIC_TOKEN), "{shown}");
    }
    assert_eq!(mock.take_requests().len(), 1);
    assert!(sleeper.slept().is_empty());

    // 429 with Retry-After: 1, then 201: one retry, after exactly the second asked for.
    let mut too_many = twilio_error(429, 20429, "Too Many Requests");
    too_many.headers.push(("retry-after", "1"));
    mock.script([too_many, created("SMfedcba9876543210fedcba9876543210")]);
    let sent = delivery.deliver(T0, &note).await.unwrap();
    assert_eq!(sent.id.as_deref(), Some("SMfedcba9876543210fedcba9876543210"));
    assert_eq!(sleeper.slept(), [Duration::from_secs(1)]);
    let requests = mock.take_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, requests[1].body, "the same message is sent again");

    // 500, then 201: one retry after the initial backoff.
    mock.script([
        Answer { status: 500, headers: vec![], body: "{}".into() },
        created("SM00000000000000000000000000000001"),
    ]);
    assert!(delivery.deliver(T0, &note).await.is_ok());
    assert_eq!(sleeper.slept(), [Duration::from_secs(2)]);
    assert_eq!(mock.take_requests().len(), 2);

    let counters = delivery.counters();
    assert_eq!(
        (counters.sent, counters.failed, counters.retried, counters.capped),
        (3, 2, 2, 0),
        "{counters:?}"
    );
}

#[tokio::test]
async fn twilio_with_an_api_key_and_a_messaging_service() {
    let (mock, addr) = start_mock().await;
    let mut config = TwilioConfig::new(
        ACCOUNT_SID,
        TwilioAuth::ApiKey { sid: API_KEY_SID.into(), secret: Secret::new("key-s3cret") },
        TwilioSender::MessagingService(SERVICE_SID.into()),
        "+447700900123",
    );
    config.base_url = format!("http://localhost:{}/", addr.port());
    let sms = TwilioSms::new(config).unwrap();
    mock.script([created("SM0123456789abcdef0123456789abcdef")]);
    let long = "é".repeat(2000);
    sms.send(&notification(&long)).await.unwrap();
    let request = mock.take_requests().remove(0);
    assert_eq!(request.path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"));
    assert_eq!(request.headers["authorization"], format!("Basic {BASIC_API_KEY}").as_str());
    let prefix = format!("To=%2B447700900123&MessagingServiceSid={SERVICE_SID}&Body=");
    assert!(request.body.starts_with(&prefix), "{}", request.body);
    // 1599 × "é" (%C3%A9) and "…" (%E2%80%A6): 1600 characters.
    let body = &request.body[prefix.len()..];
    assert_eq!(body, format!("{}%E2%80%A6", "%C3%A9".repeat(1599)));
}

#[tokio::test]
async fn an_unreachable_service_is_retried_then_counted_as_failed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sleeper = FakeSleeper::default();
    let delivery = Delivery::new(
        twilio(SocketAddr::from(([127, 0, 0, 1], port))),
        policy(None),
        sleeper.clone(),
    );
    let error = delivery.deliver(T0, &notification("x")).await.unwrap_err();
    assert!(matches!(error, AlertError::Transport { retryable: true, .. }), "{error:?}");
    assert!(!error.to_string().contains(ACCOUNT_SID), "no URL in the error: {error}");
    assert_eq!(sleeper.slept(), [Duration::from_secs(2), Duration::from_secs(4)]);
    let counters = delivery.counters();
    assert_eq!((counters.failed, counters.retried), (1, 2));
}

#[tokio::test]
async fn the_daily_cap_drops_and_counts_and_resets_at_midnight_utc() {
    let (mock, addr) = start_mock().await;
    let delivery = Delivery::new(twilio(addr), policy(Some(3)), FakeSleeper::default());
    mock.script((0..4).map(|i| created(&format!("SM{i:032}"))));
    let midnight = T0 - T0.rem_euclid(DAY);
    let note = notification("ALERT");
    for i in 0..5 {
        let result = delivery.deliver(midnight + i * MINUTE, &note).await;
        if i < 3 {
            assert!(result.is_ok());
        } else {
            assert!(matches!(result, Err(AlertError::Capped { cap: 3 })), "{result:?}");
        }
    }
    assert_eq!(mock.take_requests().len(), 3, "capped notifications never reach Twilio");
    // The last millisecond of the day is still capped; the next day is not.
    assert!(delivery.deliver(midnight + DAY - 1, &note).await.is_err());
    assert!(delivery.deliver(midnight + DAY, &note).await.is_ok());
    let counters = delivery.counters();
    assert_eq!((counters.sent, counters.capped, counters.failed), (4, 3, 0));
}

// ---------------------------------------------------------------------------------------------
// Webhook and log

#[tokio::test]
async fn webhook_posts_the_notification_as_json() {
    let (mock, addr) = start_mock().await;
    let hook = Webhook::new(WebhookConfig {
        url: Secret::new(format!("http://{addr}/hooks/s3cret-path-token")),
        bearer: Some(Secret::new("bearer-s3cret")),
    })
    .unwrap();
    assert!(!format!("{hook:?}").contains("s3cret"));
    let sleeper = FakeSleeper::default();
    let delivery = Delivery::new(hook, policy(None), sleeper.clone());

    mock.script([Answer { status: 204, headers: vec![], body: String::new() }]);
    delivery.deliver(T0, &notification("ALERT kitchen-pi/room 31.5 °C")).await.unwrap();
    let request = mock.take_requests().remove(0);
    assert_eq!(request.path, "/hooks/s3cret-path-token");
    assert_eq!(request.headers["authorization"], "Bearer bearer-s3cret");
    assert_eq!(request.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "alert_id": 7,
            "rule": "kitchen-hot",
            "device": "kitchen-pi",
            "subject": "room",
            "kind": "firing",
            "at_ms": T0,
            "at": "2023-11-14T22:13:20Z",
            "milli_celsius": 31500,
            "led_on": null,
            "text": "ALERT kitchen-pi/room 31.5 °C",
        })
    );

    // 404: no retry; 503 then 200: one retry.
    mock.script([
        Answer { status: 404, headers: vec![], body: String::new() },
        Answer { status: 503, headers: vec![], body: String::new() },
        Answer { status: 200, headers: vec![], body: String::new() },
    ]);
    let error = delivery.deliver(T0, &notification("x")).await.unwrap_err();
    assert!(matches!(error, AlertError::Refused { status: 404, twilio: None, .. }));
    assert!(!error.to_string().contains("s3cret"));
    assert!(delivery.deliver(T0, &notification("x")).await.is_ok());
    assert_eq!(mock.take_requests().len(), 3);
    assert_eq!(sleeper.slept(), [Duration::from_secs(2)]);
}

#[tokio::test]
async fn log_notifier_never_fails() {
    assert!(LogNotifier.send(&notification("ALERT")).await.is_ok());
}

// ---------------------------------------------------------------------------------------------
// The engine on a fake clock

/// The engine with the device states it asks, fed as the pipeline feeds it.
struct World {
    engine: Engine,
    devices: BTreeMap<DeviceId, DeviceState>,
}

impl World {
    fn new(rules: Vec<Rule>) -> World {
        World { engine: Engine::new(rules).unwrap(), devices: BTreeMap::new() }
    }

    /// One verified update: the engine sees the device's state before it, then it is applied.
    fn feed(&mut self, update: DeviceUpdate) {
        let state = self.devices.entry(update.device.clone()).or_default();
        self.engine.handle(&update, state);
        state.apply(&update);
    }

    fn tick(&mut self, now_ms: i64) {
        self.engine.handle_tick(now_ms, &self.devices);
    }

    fn timeout(&self) -> Option<i64> {
        self.engine.poll_timeout(&self.devices)
    }

    /// The engine stored and restored at `now_ms`, with the same device states.
    fn restarted(&self, now_ms: i64) -> World {
        World { engine: restart(&self.engine, now_ms), devices: self.devices.clone() }
    }
}

impl std::ops::Deref for World {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

fn update(device: &str, message: &Message, at_ms: i64) -> DeviceUpdate {
    DeviceUpdate::from_message(DeviceId::new(device).unwrap(), UnixMillis(at_ms), message).unwrap()
}

fn reading(device: &str, sensor: &str, milli_celsius: i32, at_ms: i64) -> DeviceUpdate {
    let reading = TemperatureReading {
        sensor: SensorName::new(sensor).unwrap(),
        temperature: MilliCelsius(milli_celsius),
        uptime: Uptime(0),
    };
    update(device, &Message::Temperature(reading), at_ms)
}

fn room(milli_celsius: i32, at_ms: i64) -> DeviceUpdate {
    reading("kitchen-pi", "room", milli_celsius, at_ms)
}

fn led_at(device: &str, led: &str, on: bool, at_ms: i64) -> DeviceUpdate {
    let change =
        LedChange { led: LedName::new(led).unwrap(), state: LedState::from(on), uptime: Uptime(0) };
    update(device, &Message::Led(change), at_ms)
}

/// An online status listing one LED, off.
fn online_at(device: &str, at_ms: i64) -> DeviceUpdate {
    let leds = [LedStatus { led: LedName::new("red").unwrap(), state: LedState::Off }];
    let status = NodeStatus::Online { leds: leds.into_iter().collect() };
    update(device, &Message::Status(StatusReport { status, uptime: Uptime(0) }), at_ms)
}

/// The sealed Last Will.
fn will_at(device: &str, at_ms: i64) -> DeviceUpdate {
    let status = StatusReport { status: NodeStatus::Offline, uptime: Uptime(0) };
    update(device, &Message::Status(status), at_ms)
}

/// The next notification, sent: taken and confirmed, as the server's delivery task does (until
/// then it stays in the engine's stored outbox).
fn send_next(engine: &mut Engine) -> Option<Notification> {
    let notification = engine.poll_notification()?;
    engine.confirm_sent(&notification);
    Some(notification)
}

fn drain(engine: &mut Engine) -> Vec<(NotificationKind, i64)> {
    std::iter::from_fn(|| send_next(engine)).map(|n| (n.kind, n.at_ms)).collect()
}

fn hot(min_duration: Duration, cooldown: Duration) -> Rule {
    let threshold = Threshold::new("kitchen-pi", 30_000)
        .sensor("room")
        .hysteresis(2_000)
        .min_duration(min_duration);
    Rule::new("kitchen-hot", Condition::TemperatureAbove(threshold)).with_cooldown(cooldown)
}

fn offline(after_secs: u64) -> Rule {
    Rule::new(
        "kitchen-gone",
        Condition::Offline { device: "kitchen-pi".into(), after: Duration::from_secs(after_secs) },
    )
}

fn restart(engine: &Engine, now_ms: i64) -> Engine {
    let saved = serde_json::to_string(&engine.export()).unwrap();
    Engine::restore(engine.rules().to_vec(), serde_json::from_str(&saved).unwrap(), now_ms).unwrap()
}

#[test]
fn hysteresis_keeps_a_hovering_value_from_flapping() {
    let mut engine = World::new(vec![hot(Duration::ZERO, Duration::ZERO)]);
    engine.feed(room(29_999, T0));
    assert_eq!(drain(&mut engine), []);
    engine.feed(room(30_000, T0 + 1));
    assert_eq!(drain(&mut engine), [(NotificationKind::Firing, T0 + 1)]);
    for (i, value) in [29_000, 30_500, 28_000, 31_000, 28_001].into_iter().enumerate() {
        engine.feed(room(value, T0 + 2 + i as i64));
    }
    assert_eq!(drain(&mut engine), [], "nothing below 28.0 °C, nothing again above 30.0 °C");
    engine.feed(room(27_999, T0 + 10));
    assert_eq!(drain(&mut engine), [(NotificationKind::Resolved, T0 + 10)]);
    let resolved: Vec<_> = engine.recent().collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        (resolved[0].state, resolved[0].fired_ms, resolved[0].resolved_ms),
        (AlertState::Resolved, Some(T0 + 1), Some(T0 + 10))
    );
    assert_eq!(engine.counters().fired, 1);
}

#[test]
fn minimum_duration_must_be_seen_to_hold() {
    let mut engine = World::new(vec![hot(Duration::from_secs(60), Duration::ZERO)]);
    engine.feed(room(31_000, T0));
    engine.feed(room(31_000, T0 + 30_000));
    let pending: Vec<_> = engine.active().map(|a| (a.state, a.since_ms)).collect();
    assert_eq!(pending, [(AlertState::Pending, T0)]);
    // Back under the threshold (though inside the hysteresis): the pending alert is dropped.
    engine.feed(room(29_500, T0 + 45_000));
    assert_eq!(engine.active().count(), 0);
    engine.feed(room(31_000, T0 + 50_000));
    engine.feed(room(31_000, T0 + 109_999));
    assert_eq!(drain(&mut engine), []);
    engine.feed(room(31_200, T0 + 110_000));
    assert_eq!(drain(&mut engine), [(NotificationKind::Firing, T0 + 110_000)]);
    let firing: Vec<_> = engine.active().map(|a| (a.state, a.since_ms, a.fired_ms)).collect();
    assert_eq!(firing, [(AlertState::Firing, T0 + 50_000, Some(T0 + 110_000))]);
    assert_eq!(engine.active().next().unwrap().milli_celsius, Some(31_200));
}

#[test]
fn cooldown_suppresses_and_counts_refiring() {
    let mut engine = World::new(vec![hot(Duration::ZERO, Duration::from_secs(10 * 60))]);
    engine.feed(room(31_000, T0));
    engine.feed(room(27_000, T0 + MINUTE));
    assert_eq!(
        drain(&mut engine),
        [(NotificationKind::Firing, T0), (NotificationKind::Resolved, T0 + MINUTE)]
    );
    // Fires again within ten minutes of the notified firing: shown, not sent.
    engine.feed(room(31_000, T0 + 2 * MINUTE));
    assert_eq!(
        engine.active().next().map(|a| (a.state, a.notified)),
        Some((AlertState::Firing, false))
    );
    engine.feed(room(27_000, T0 + 3 * MINUTE));
    assert_eq!(drain(&mut engine), [], "neither the firing nor its resolution");
    assert_eq!(engine.counters().suppressed, 1);
    engine.feed(room(31_000, T0 + 10 * MINUTE));
    assert_eq!(drain(&mut engine), [(NotificationKind::Firing, T0 + 10 * MINUTE)]);
    let counters = engine.counters();
    assert_eq!((counters.fired, counters.resolved, counters.notifications), (3, 2, 3));
}

#[test]
fn offline_by_silence_or_last_will_and_back() {
    let mut engine = World::new(vec![offline(120)]);
    engine.feed(online_at("kitchen-pi", T0));
    engine.tick(T0);
    assert_eq!(engine.timeout(), Some(T0 + 120_000));
    engine.feed(room(20_000, T0 + 60_000));
    assert_eq!(engine.timeout(), Some(T0 + 180_000), "any frame restarts the countdown");
    engine.tick(T0 + 179_999);
    assert_eq!(drain(&mut engine), []);
    engine.tick(T0 + 180_000);
    assert_eq!(drain(&mut engine), [(NotificationKind::Firing, T0 + 180_000)]);
    engine.feed(will_at("kitchen-pi", T0 + 181_000));
    assert_eq!(drain(&mut engine), [], "already firing");
    engine.feed(online_at("kitchen-pi", T0 + 200_000));
    assert_eq!(drain(&mut engine), [(NotificationKind::Resolved, T0 + 200_000)]);

    // The sealed Last Will fires at once.
    engine.feed(will_at("kitchen-pi", T0 + 210_000));
    let sent = send_next(&mut engine).unwrap();
    assert_eq!((sent.kind, sent.at_ms), (NotificationKind::Firing, T0 + 210_000));
    assert!(sent.text.contains("last will"), "{}", sent.text);
    // Other devices do not resolve it.
    engine.feed(online_at("garage-pi", T0 + 220_000));
    assert_eq!(engine.active().count(), 1);
}

#[test]
fn restart_neither_forgets_nor_repeats() {
    let rules = vec![hot(Duration::ZERO, Duration::from_secs(2 * 3600)), offline(120)];
    let mut engine = World::new(rules);
    engine.tick(T0);
    engine.feed(room(31_000, T0));
    engine.feed(will_at("kitchen-pi", T0 + 1));
    assert_eq!(drain(&mut engine).len(), 2);
    let ids: Vec<_> = engine.active().map(|a| a.id).collect();

    // Down for an hour.
    let back = T0 + 60 * MINUTE;
    let mut engine = engine.restarted(back);
    assert_eq!(engine.active().map(|a| a.id).collect::<Vec<_>>(), ids);
    assert!(engine.active().all(|a| a.state == AlertState::Firing && a.notified));
    engine.tick(back);
    engine.feed(will_at("kitchen-pi", back));
    assert_eq!(drain(&mut engine), [], "still firing: not sent again");
    engine.feed(room(31_500, back + 1));
    assert_eq!(drain(&mut engine), [(NotificationKind::Resolved, back + 1)], "the device is back");
    engine.feed(room(27_000, back + 2));
    assert_eq!(drain(&mut engine), [(NotificationKind::Resolved, back + 2)]);

    // The cooldown of the temperature alert survives a restart too.
    let mut engine = engine.restarted(back + 3);
    engine.feed(room(31_000, back + 4));
    assert_eq!(drain(&mut engine), [], "within two hours of the first firing");
    assert_eq!(engine.counters().suppressed, 1);
    let new_id = engine.active().find(|a| a.key.subject.is_some()).unwrap().id;
    assert!(new_id > *ids.iter().max().unwrap(), "ids keep increasing across restarts");
}

#[test]
fn after_a_restart_silent_devices_get_a_full_countdown() {
    let mut engine = World::new(vec![offline(120)]);
    engine.feed(online_at("kitchen-pi", T0));
    let back = T0 + 24 * 60 * MINUTE;
    let mut engine = engine.restarted(back);
    engine.tick(back);
    assert_eq!(drain(&mut engine), [], "the server was away, not necessarily the device");
    assert_eq!(engine.timeout(), Some(back + 120_000));
    engine.tick(back + 120_000);
    assert_eq!(drain(&mut engine), [(NotificationKind::Firing, back + 120_000)]);
}

#[test]
fn a_changed_rule_drops_its_old_state() {
    let mut engine = World::new(vec![hot(Duration::ZERO, Duration::ZERO)]);
    engine.feed(room(31_000, T0));
    assert_eq!(engine.active().count(), 1);
    let state = engine.export();
    let moved = Rule::new(
        "kitchen-hot",
        Condition::TemperatureAbove(Threshold::new("garage-pi", 30_000).sensor("room")),
    );
    let engine = Engine::restore(vec![moved], state.clone(), T0 + 1).unwrap();
    assert_eq!(engine.active().count(), 0);
    let engine = Engine::restore(vec![offline(60)], state, T0 + 1).unwrap();
    assert_eq!(engine.active().count(), 0);
}

#[tokio::test]
async fn engine_to_twilio_end_to_end() {
    let (mock, addr) = start_mock().await;
    let delivery = Delivery::new(twilio(addr), policy(Some(10)), FakeSleeper::default());
    let mut engine = World::new(vec![hot(Duration::ZERO, Duration::ZERO)]);
    mock.script([created("SM0123456789abcdef0123456789abcdef"), created("SM1")]);
    engine.feed(room(35_000, T0));
    engine.feed(room(20_000, T0 + MINUTE));
    while let Some(note) = send_next(&mut engine) {
        delivery.deliver(note.at_ms, &note).await.unwrap();
    }
    let bodies: Vec<_> = mock.take_requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies[0].contains("Body=ALERT+kitchen-pi%2Froom+35.0+%C2%B0C%2C+at+or+above+30.0"),
        "{}",
        bodies[0]
    );
    assert!(bodies[1].contains("Body=RESOLVED+kitchen-pi%2Froom+back+to+20.0"), "{}", bodies[1]);
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input never panics, never double-sends

#[derive(Debug, Clone)]
enum Op {
    Input(DeviceUpdate),
    Tick(i64),
    Restart(i64),
}

fn time() -> impl Strategy<Value = i64> {
    prop_oneof![4 => T0..T0 + 10_000_000, 1 => any::<i64>(), 1 => Just(i64::MIN), 1 => Just(i64::MAX)]
}

fn name(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(names).prop_map(str::to_owned)
}

fn op() -> impl Strategy<Value = Op> {
    let device = || name(&["kitchen-pi", "garage-pi", "x"]);
    let value = prop_oneof![any::<i32>(), 25_000..35_000i32];
    prop_oneof![
        4 => (device(), name(&["room", "cpu"]), value, time()).prop_map(
            |(device, sensor, milli_celsius, at_ms)| {
                Op::Input(reading(&device, &sensor, milli_celsius, at_ms))
            }
        ),
        2 => (device(), name(&["red", "green"]), any::<bool>(), time())
            .prop_map(|(device, led, on, at_ms)| Op::Input(led_at(&device, &led, on, at_ms))),
        1 => (device(), time()).prop_map(|(device, at_ms)| Op::Input(online_at(&device, at_ms))),
        1 => (device(), time()).prop_map(|(device, at_ms)| Op::Input(will_at(&device, at_ms))),
        2 => time().prop_map(Op::Tick),
        1 => time().prop_map(Op::Restart),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0..200_000u64).prop_map(Duration::from_millis),
        Just(Duration::MAX),
        Just(Duration::from_millis(1)),
    ]
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    (
        any::<i32>(),
        25_000..35_000i32,
        any::<u32>(),
        0..5_000u32,
        duration(),
        duration(),
        duration().prop_filter("after > 0", |d| !d.is_zero()),
    )
        .prop_map(
            |(wild, near, wide_hysteresis, hysteresis, min_duration, cooldown, after)| {
                vec![
                    Rule::new(
                        "above",
                        Condition::TemperatureAbove(
                            Threshold::new("kitchen-pi", near)
                                .hysteresis(hysteresis)
                                .min_duration(min_duration),
                        ),
                    )
                    .with_cooldown(cooldown),
                    Rule::new(
                        "below",
                        Condition::TemperatureBelow(
                            Threshold::new("kitchen-pi", wild)
                                .sensor("cpu")
                                .hysteresis(wide_hysteresis),
                        ),
                    ),
                    Rule::new("gone", Condition::Offline { device: "kitchen-pi".into(), after })
                        .with_cooldown(cooldown),
                    Rule::new(
                        "led",
                        Condition::LedChange { device: "kitchen-pi".into(), led: None },
                    )
                    .with_cooldown(cooldown),
                ]
            },
        )
}

proptest! {
    #[test]
    fn engine_never_panics_nor_sends_a_firing_twice(
        rules in rules(),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut engine = World::new(rules);
        // Per key: whether a notified firing is open (not yet resolved).
        let mut open: BTreeMap<AlertKey, bool> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Input(input) => engine.feed(input),
                Op::Tick(now) => {
                    engine.tick(now);
                    let _ = engine.timeout();
                }
                Op::Restart(now) => {
                    let state = engine.export();
                    let restored = engine.restarted(now);
                    prop_assert_eq!(restored.export(), state);
                    engine = restored;
                }
            }
            while let Some(note) = send_next(&mut engine) {
                let key = AlertKey { rule: note.rule, device: note.device, subject: note.subject };
                let was_open = open.get(&key).copied().unwrap_or(false);
                match note.kind {
                    NotificationKind::Firing => {
                        prop_assert!(!was_open, "fired twice: {:?}", key);
                        open.insert(key, true);
                    }
                    NotificationKind::Resolved => {
                        prop_assert!(was_open, "resolved without firing: {:?}", key);
                        open.insert(key, false);
                    }
                    NotificationKind::LedChanged => {}
                }
            }
            prop_assert!(engine.active().all(|a| matches!(a.state, AlertState::Pending | AlertState::Firing)));
        }
    }
}
