//! LED commands end to end: `POST /api/devices/{id}/leds/{led}` on a real server (`Server::start`
//! on SQLite or PostgreSQL), sealed and published through a real broker, applied by a simulated
//! node (`ledtemp_tokio::run_node`, as the demo and a Raspberry Pi run it), confirmed by the
//! node's own LED frame, which reaches the event stream and the POST's answer; and logged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ledtemp_test_support::node::{NodeThread, SimulatedNode};
use ledtemp_web::{COMMAND_SEQUENCE_BLOCK, Database, Server, hash_password, new_api_token};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::broker::TestBroker;
use support::{
    Backend, EventStream, KITCHEN, eventually, http_get, keys, kitchen_codec, on_both_backends,
    serve_config_on, start_server,
};
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery staple";

/// How long a confirmed command may take, POST to answer: a local broker and node answer in
/// milliseconds; this leaves room for a loaded test machine.
const CONFIRMED_WITHIN: Duration = Duration::from_secs(2);

/// The kitchen's simulated node (LED `red`, off at start) on a thread of its own, and the way to
/// stop it cleanly (it publishes its offline status and disconnects).
struct KitchenNode {
    thread: NodeThread,
    stop: oneshot::Sender<()>,
}

impl KitchenNode {
    fn start(broker: &TestBroker) -> KitchenNode {
        let address = broker.address(KITCHEN);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = NodeThread::spawn(move || async move {
            let node = SimulatedNode::new(KITCHEN, kitchen_codec());
            let stop = async {
                let _ = stopped.await;
            };
            let (ended, _) =
                node.run_until(address, stop, &mut |event| eprintln!("node: {event:?}")).await;
            eprintln!("node stopped: {ended:?}");
            // Stopped cleanly; the thread waits here until the test stops it.
            std::future::pending::<()>().await;
        });
        KitchenNode { thread, stop }
    }

    /// Stops the node cleanly and waits until the server shows the kitchen offline.
    async fn stop(self, api: &Api) {
        self.stop.send(()).unwrap();
        api.wait_for_kitchen("the kitchen offline", |kitchen| kitchen["online"] == false).await;
        self.thread.stop().await;
    }
}

/// Who sends a request, and how.
#[derive(Clone, Copy)]
enum As<'a> {
    /// No credentials (a server without login).
    Nobody,
    /// A login session: its cookie (`name=value`) and, if sent, its CSRF token.
    Session { cookie: &'a str, csrf: Option<&'a str> },
    /// A bearer token.
    Token(&'a str),
}

/// An HTTP client for one server.
struct Api {
    client: reqwest::Client,
    base: String,
    /// What reads `/api/devices` and `/api/commands`.
    reader: As<'static>,
}

impl Api {
    fn new(addr: SocketAddr, reader: As<'static>) -> Api {
        Api { client: reqwest::Client::new(), base: format!("http://{addr}"), reader }
    }

    fn request(&self, method: reqwest::Method, path: &str, who: As<'_>) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match who {
            As::Nobody => request,
            As::Session { cookie, csrf } => {
                let request = request.header("cookie", cookie);
                match csrf {
                    Some(csrf) => request.header("x-csrf-token", csrf),
                    None => request,
                }
            }
            As::Token(token) => request.bearer_auth(token),
        }
    }

    /// `POST /api/devices/{device}/leds/{led}` with `{"on": on}` from `origin`: the status and
    /// the JSON body.
    async fn switch(
        &self,
        device: &str,
        led: &str,
        on: bool,
        who: As<'_>,
        origin: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .request(reqwest::Method::POST, &format!("/api/devices/{device}/leds/{led}"), who)
            .header("origin", origin)
            .json(&json!({ "on": on }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// [`switch`](Self::switch) from the server's own origin.
    async fn switch_here(&self, led: &str, on: bool, who: As<'_>) -> (StatusCode, Value) {
        self.switch(KITCHEN, led, on, who, &self.base).await
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.request(reqwest::Method::GET, path, self.reader).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    /// The kitchen in `/api/devices`, if it is there.
    async fn kitchen(&self) -> Option<Value> {
        let devices = self.get("/api/devices").await;
        devices.as_array().unwrap().iter().find(|d| d["id"] == KITCHEN).cloned()
    }

    async fn wait_for_kitchen(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let check = &check;
        eventually(what, || async move { self.kitchen().await.filter(|k| check(k)) }).await
    }

    /// The red LED's state as `/api/devices` shows it (from the node's frames).
    async fn red(&self) -> Option<bool> {
        let kitchen = self.kitchen().await?;
        red_of(&kitchen)
    }

    /// The command log, newest first.
    async fn log(&self) -> Vec<Value> {
        let log = self.get(&format!("/api/commands?device={KITCHEN}")).await;
        log.as_array().unwrap().clone()
    }

    /// The command log once it has `entries` entries, each with its outcome: the server answers
    /// a POST before the ingest worker has written the outcome (`sent` until then).
    async fn log_of(&self, entries: usize) -> Vec<Value> {
        let what = format!("{entries} settled entries in the command log");
        let settled = |log: &Vec<Value>| {
            log.len() >= entries && log.iter().all(|entry| entry["outcome"] != "sent")
        };
        eventually(&what, || async { Some(self.log().await).filter(settled) }).await
    }
}

fn red_of(kitchen: &Value) -> Option<bool> {
    let leds = kitchen["leds"].as_array()?;
    leds.iter().find(|led| led["led"] == "red").and_then(|led| led["on"].as_bool())
}

/// Asserts a 200 with a confirmed record for the red LED set to `on` by `by`; returns the
/// record.
fn confirmed(answer: (StatusCode, Value), on: bool, by: impl Fn(&str) -> bool) -> Value {
    let (status, record) = answer;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["outcome"], "confirmed", "{record}");
    assert_eq!(record["device"], KITCHEN);
    assert_eq!(record["led"], "red");
    assert_eq!(record["on"], on);
    assert!(record["sequence"].is_u64(), "{record}");
    assert!(record["confirmed_at"].is_string(), "{record}");
    assert!(by(record["by"].as_str().unwrap()), "{record}");
    record
}

/// Waits for the `led` event of the red LED's confirmation on `events`: the device's own frame,
/// at the time the answer names.
async fn wait_for_led_event(events: &mut EventStream, record: &Value) {
    let event = format!(
        "event: led\ndata: {{\"device\":\"{KITCHEN}\",\"led\":\"red\",\"on\":{},\"at\":{}}}",
        record["on"], record["confirmed_at"]
    );
    events.wait_for(&event).await;
}

/// Starts a server on `database`, with `configure` applied to its settings.
async fn server_on(
    database: &Database,
    broker: &TestBroker,
    configure: impl FnOnce(&mut ledtemp_web::ServeConfig),
) -> Server {
    let mut config = serve_config_on(database, broker.port);
    configure(&mut config);
    start_server(config, keys()).await
}

async fn a_command_is_sealed_applied_confirmed_and_logged(backend: Backend) {
    let test_started = Instant::now();
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = backend.database(dir.path()) else { return };
    let database = database.database();
    // No login (127.0.0.1): the commands are logged as `open`.
    let server = server_on(database, &broker, |_| {}).await;
    let api = Api::new(server.http_addr(), As::Nobody);
    let node = KitchenNode::start(&broker);
    api.wait_for_kitchen("the kitchen online with its red LED off", |kitchen| {
        kitchen["online"] == true && red_of(kitchen) == Some(false)
    })
    .await;
    let mut events = EventStream::open(server.http_addr()).await;

    // On: sealed, sent, applied by the node, confirmed by its LED frame, seen on the event
    // stream, answered, and shown by /api/devices (the device's frame, not the request).
    let started = Instant::now();
    let on = confirmed(api.switch_here("red", true, As::Nobody).await, true, |by| by == "open");
    assert!(started.elapsed() < CONFIRMED_WITHIN, "confirmed after {:?}", started.elapsed());
    wait_for_led_event(&mut events, &on).await;
    assert_eq!(api.red().await, Some(true));

    // The same state again: sent and confirmed again (the node answers every command it
    // applies), under the next number.
    let again = confirmed(api.switch_here("red", true, As::Nobody).await, true, |by| by == "open");
    wait_for_led_event(&mut events, &again).await;
    assert_eq!(again["sequence"].as_u64(), on["sequence"].as_u64().map(|s| s + 1));

    // Nothing to send: an LED the device never reported (logged as not sent), a device not in
    // the keyring.
    let (status, body) = api.switch_here("blue", true, As::Nobody).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api.switch("cellar", "red", false, As::Nobody, &api.base).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Another origin: refused before anything else, and the LED stays on.
    let (status, body) = api.switch(KITCHEN, "red", false, As::Nobody, "http://evil.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Off, then a restart of the server on the same database: a new command still works, under
    // a number above every earlier one (the counter was reserved in blocks in the store, so the
    // rest of the old block is skipped).
    let off = confirmed(api.switch_here("red", false, As::Nobody).await, false, |by| by == "open");
    wait_for_led_event(&mut events, &off).await;
    drop(events);
    server.shutdown().await.unwrap();
    let server = server_on(database, &broker, |_| {}).await;
    let api = Api::new(server.http_addr(), As::Nobody);
    let mut events = EventStream::open(server.http_addr()).await;
    // The server needs a frame of the node's current connection first, to estimate the node's
    // clock for the command's expiry (before it, 409 "try again in a second"): the node sends a
    // reading a second.
    events.wait_for("event: temperature").await;
    let after_restart = api.switch_here("red", true, As::Nobody).await;
    let after_restart = confirmed(after_restart, true, |by| by == "open");
    wait_for_led_event(&mut events, &after_restart).await;
    let before_restart = off["sequence"].as_u64().unwrap();
    let sequence = after_restart["sequence"].as_u64().unwrap();
    assert!(sequence > before_restart, "{sequence} after {before_restart}");
    assert!(
        sequence >= before_restart.next_multiple_of(COMMAND_SEQUENCE_BLOCK),
        "{sequence}: not from a block reserved after {before_restart}"
    );
    assert_eq!(api.red().await, Some(true));

    // The node goes away cleanly: the server knows it is offline and sends nothing.
    node.stop(&api).await;
    let (status, body) = api.switch_here("red", false, As::Nobody).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "the device is offline");

    // The log, newest first: every command asked of a device in the keyring, with its outcome;
    // the unknown LED's not sent. What was refused before that (another origin, a device not in
    // the keyring) is not there.
    let log = api.log_of(6).await;
    let summary: Vec<_> = log
        .iter()
        .map(|r| {
            let led = r["led"].as_str().unwrap();
            (led, r["on"].as_bool().unwrap(), r["outcome"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("red", false, "offline"),
            ("red", true, "confirmed"),
            ("red", false, "confirmed"),
            ("blue", true, "not_sent"),
            ("red", true, "confirmed"),
            ("red", true, "confirmed"),
        ],
        "{log:#?}"
    );
    assert!(log.iter().all(|r| r["by"] == "open"), "{log:#?}");
    for not_sent in [&log[0], &log[3]] {
        assert_eq!(not_sent["sequence"], Value::Null, "not sent, so not numbered: {not_sent}");
    }
    assert_eq!(log[1], after_restart);
    assert_eq!(log[2], off);
    assert_eq!(log[5], on);
    server.shutdown().await.unwrap();
    eprintln!("command test took {:?}", test_started.elapsed());
}
on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_is_sealed_applied_confirmed_and_logged
);

/// The login form's double-submit token, then the login: the session cookie (`name=value`) and
/// its CSRF token.
async fn log_in(api: &Api) -> (String, String) {
    let cookie_of = |response: &reqwest::Response, name: &str| {
        let header = response.headers().get_all("set-cookie").iter().find_map(|v| {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            pair.starts_with(&format!("{name}=")).then(|| pair.to_owned())
        });
        header.unwrap_or_else(|| panic!("no {name} cookie"))
    };
    let response = api.client.get(format!("{}/auth/login-token", api.base)).send().await.unwrap();
    let login_cookie = cookie_of(&response, "__Host-ledtemp_login");
    let token: Value = response.json().await.unwrap();
    let response = api
        .client
        .post(format!("{}/auth/login", api.base))
        .header("origin", &api.base)
        .header("cookie", login_cookie)
        .json(&json!({ "password": PASSWORD, "csrf": token["csrf"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let session = cookie_of(&response, "__Host-ledtemp_session");
    let body: Value = response.json().await.unwrap();
    (session, body["csrf"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_needs_its_csrf_token_and_a_bearer_token_does_not() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = Database::Sqlite(dir.path().join("ledtemp.db"));
    let (token, token_hash) = new_api_token().unwrap();
    let server = server_on(&database, &broker, |config| {
        config.auth.password_hash = Some(hash_password(PASSWORD).unwrap());
        let mut hash = [0u8; 32];
        hex::decode_to_slice(token_hash, &mut hash).unwrap();
        config.auth.token_hashes = vec![hash];
    })
    .await;
    let token: &'static str = token.leak();
    let api = Api::new(server.http_addr(), As::Token(token));
    let node = KitchenNode::start(&broker);
    api.wait_for_kitchen("the kitchen online with its red LED off", |kitchen| {
        kitchen["online"] == true && red_of(kitchen) == Some(false)
    })
    .await;
    let (cookie, csrf) = log_in(&api).await;

    // A session's POST without its token (what a forged cross-site form or fetch would carry:
    // the cookie, not the token), or with another: refused, nothing sealed or sent, nothing
    // logged, the LED as it was.
    for csrf in [None, Some("not-the-token")] {
        let (status, body) =
            api.switch_here("red", true, As::Session { cookie: &cookie, csrf }).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    // With the token, but from another origin: refused too.
    let session = As::Session { cookie: &cookie, csrf: Some(&csrf) };
    let (status, body) = api.switch(KITCHEN, "red", true, session, "http://evil.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A bearer token from another origin as well: the same-origin check applies to every POST.
    let (status, body) =
        api.switch(KITCHEN, "red", true, As::Token(token), "http://evil.example").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(api.red().await, Some(false));
    assert_eq!(api.log().await, Vec::<Value>::new());

    // The session with its token, as the dashboard sends it.
    let by_session = confirmed(api.switch_here("red", true, session).await, true, |by| {
        by.strip_prefix("session ").is_some_and(|id| !id.is_empty())
    });
    assert_eq!(api.red().await, Some(true));
    // A script with a bearer token: no CSRF token needed (no ambient credential to forge).
    let by_token = confirmed(api.switch_here("red", false, As::Token(token)).await, false, |by| {
        by.strip_prefix("token ").is_some_and(|id| !id.is_empty())
    });
    assert_eq!(api.red().await, Some(false));
    // Nothing was sealed for the refused requests: the two sent commands have consecutive
    // numbers.
    assert_eq!(by_token["sequence"].as_u64(), by_session["sequence"].as_u64().map(|s| s + 1));
    assert_eq!(api.log_of(2).await, [by_token, by_session]);
    // Without credentials: 401, not a command.
    let (status, _) = http_get(server.http_addr(), "/api/commands").await;
    assert_eq!(status, 401);

    node.stop(&api).await;
    server.shutdown().await.unwrap();
}
