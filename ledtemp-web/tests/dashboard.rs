//! The dashboard in a real headless Chromium, against the real server (`ledtemp_web::app`) on a
//! real SQLite file, fed real sealed frames through the ingest pipeline (also days of history:
//! ranges, buckets, zoom, the LED timeline and the CSV downloads); and the LED switch against a
//! whole server (`Server::start`), a real broker and a simulated node.
//!
//! The browser is driven over the DevTools protocol on `--remote-debugging-pipe` (file
//! descriptors 3 and 4, connected through two FIFOs so that no `unsafe` is needed to hand them
//! over). `--dump-dom --virtual-time-budget` cannot be used: the page's open event stream is a
//! pending request, and virtual time does not advance while one is pending.
//!
//! Needs Debian's `chromium` (or `LEDTEMP_CHROMIUM=<path>`); without it the test says so and
//! passes, unless `LEDTEMP_REQUIRE_CHROMIUM=1` (set by `.ci/run`) makes it fail instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ledtemp_core::AnyCodec;
use ledtemp_test_support::broker::TestBroker;
use ledtemp_test_support::node::{NodeThread, SimulatedNode};
use ledtemp_web::alerts::{
    AlertsConfig, Condition, DeliveryPolicy, NotifierKind, NotifierSettings, Rule, Secret,
    Threshold, WebhookConfig,
};
use ledtemp_web::{
    AccessControl, AppState, AuthConfig, IncomingFrame, Ingest, LiveEvent, Pipeline,
    PipelineOptions, UnixMillis, app, hash_password,
};
use serde_json::{Value, json};
use support::{GARAGE, KITCHEN, WAIT, garage_codec, kitchen_codec, led, online, seal, temperature};

/// The login password of the tests behind a login.
const PASSWORD: &str = "correct horse battery staple";

/// A name no validated device could have: if the page ever parsed names as markup, an `img`
/// element would appear.
const HOSTILE: &str = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script>";

fn chromium_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LEDTEMP_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium, or `None` with a note that the test is skipped; a missing chromium fails instead
/// when `LEDTEMP_REQUIRE_CHROMIUM=1` (as in `.ci/run`).
fn chromium_or_skip() -> Option<PathBuf> {
    let chromium = chromium_binary();
    if chromium.is_none() {
        ledtemp_test_support::skip_unless_required(
            "LEDTEMP_REQUIRE_CHROMIUM",
            "a dashboard test in a real browser",
            "chromium is not installed (apt-get install chromium)",
        );
    }
    chromium
}

/// A headless Chromium with one page, spoken to over the DevTools protocol.
struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    /// Events that arrived while waiting for a reply.
    events: VecDeque<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(chromium: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let to_browser = profile.path().join("devtools-in");
        let from_browser = profile.path().join("devtools-out");
        for fifo in [&to_browser, &from_browser] {
            let status = Command::new("mkfifo").arg(fifo).status().unwrap();
            assert!(status.success(), "mkfifo {}", fifo.display());
        }
        let user_data = profile.path().join("user-data");
        // The flags keep a headless Chromium from calling home (updates, sync, QUIC probes).
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$LEDTEMP_FIFO_IN" 4>"$LEDTEMP_FIFO_OUT""#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", user_data.display()))
            .arg("about:blank")
            .env("LEDTEMP_FIFO_IN", &to_browser)
            .env("LEDTEMP_FIFO_OUT", &from_browser)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();

        // Opening a FIFO blocks until the other side opens it too; the shell opens them in the
        // same order. A thread, so that a Chromium that never starts fails the test instead of
        // hanging it.
        let (opened_tx, opened) = mpsc::channel();
        std::thread::spawn(move || {
            let commands = File::options().write(true).open(&to_browser);
            let output = File::open(&from_browser);
            let _ = opened_tx.send((commands, output));
        });
        let (commands, output) = opened.recv_timeout(WAIT).expect("chromium did not start");
        let (commands, output) = (commands.unwrap(), output.unwrap());

        let (replies_tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut output = BufReader::new(output);
            let mut message = Vec::new();
            while output.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && replies_tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });

        let mut browser = Browser {
            child,
            commands,
            replies,
            events: VecDeque::new(),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let page = browser.page_target();
        let attached =
            browser.call("Target.attachToTarget", json!({"targetId": page, "flatten": true}));
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    fn page_target(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let targets = self.call("Target.getTargets", json!({}));
            let page = targets["targetInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["targetId"].as_str());
            if let Some(page) = page {
                return page.to_owned();
            }
            assert!(Instant::now() < deadline, "chromium opened no page");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command (to the page once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// [`call`](Self::call), with chromium's error answer as `Err` (a page that is navigating
    /// answers `Runtime.evaluate` with "Inspected target navigated or closed").
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&command).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.replies.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no reply from chromium to {method}");
            });
            if message["id"] == id {
                return match message.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
            if message.get("method").is_some() {
                self.events.push_back(message);
            }
        }
    }

    /// The next event named `method`, in arrival order (skipping and keeping others).
    fn event(&mut self, method: &str) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(at).unwrap()["params"].clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.replies.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no {method} event from chromium");
            });
            if message["method"] == method {
                return message["params"].clone();
            }
            self.events.push_back(message);
        }
    }

    /// Sends one command to the browser itself rather than the page (the `Browser` domain).
    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        let session = std::mem::take(&mut self.session);
        let result = self.try_call(method, params);
        self.session = session;
        result.unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its JSON value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`; on timeout fails with what the page shows. A page
    /// in the middle of a navigation counts as "not yet".
    fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + WAIT;
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        while self
            .try_call("Runtime.evaluate", params.clone())
            .map_or(true, |result| result["result"]["value"] != json!(true))
        {
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText");
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// Clicks the middle of the element `element` (a JS expression) with the mouse, as a user
    /// does: it must be visible and not covered for the click to reach it.
    fn click(&mut self, element: &str) {
        let centre = self.eval(&format!(
            "(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (centre[0].as_f64().unwrap(), centre[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Errors the page reported: uncaught exceptions, `console.error`, and browser log errors
    /// (failed loads, Content-Security-Policy violations).
    fn errors(&mut self) -> Vec<String> {
        // A round trip, so that every event sent before it has arrived.
        self.eval("0");
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
            })
            .map(Value::to_string)
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.next_id += 1;
        let close = format!("{{\"id\":{},\"method\":\"Browser.close\"}}\0", self.next_id);
        let _ = self.commands.write_all(close.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A node as the server sees it: its key and its next sequence number.
struct Node {
    name: &'static str,
    codec: AnyCodec,
    sequence: u64,
}

impl Node {
    fn frame(&mut self, message: &ledtemp_core::Message, received_ms: i64) -> IncomingFrame {
        let (topic, payload) = seal(&self.codec, self.name, self.sequence, message);
        self.sequence += 1;
        IncomingFrame {
            topic: topic.into_bytes(),
            payload,
            received: UnixMillis(received_ms),
            retained: false,
            duplicate: false,
        }
    }
}

fn accept(ingest: &mut Ingest, frame: IncomingFrame) {
    let topic = String::from_utf8_lossy(&frame.topic).into_owned();
    ingest.handle(frame).unwrap_or_else(|e| panic!("{topic} rejected: {e}"));
}

/// Stores the last hour: two kitchen sensors and one in the garage, a point every 2 minutes, the
/// last one 15 s before `now`.
fn feed_history(ingest: &mut Ingest, kitchen: &mut Node, garage: &mut Node, now: i64) {
    let start = now - 59 * 60 * 1000;
    accept(ingest, kitchen.frame(&online(&[("red", true), ("green", false)]), start));
    accept(ingest, garage.frame(&online(&[("door", false)]), start));
    for i in 0..30i32 {
        let at = start + i64::from(i) * 2 * 60 * 1000;
        let wave = [0, 3, 5, 6, 5, 3, 0, -3, -5, -6, -5, -3][(i % 12) as usize];
        accept(ingest, kitchen.frame(&temperature("cpu", 46_000 + wave * 250 + i * 40), at));
        accept(ingest, kitchen.frame(&temperature("room", 21_000 + wave * 60), at + 20_000));
        accept(
            ingest,
            garage.frame(&temperature("tmp102", 8_500 - i * 30 + wave * 40), at + 45_000),
        );
    }
}

/// `document.querySelector` on the card of `device`, as a JS expression.
fn in_card(device: &str, selector: &str) -> String {
    format!(
        "[...document.querySelectorAll('article.card')].find(c => c.dataset.device === {})\
         ?.querySelector({})",
        json!(device),
        json!(selector)
    )
}

#[test]
fn the_dashboard_shows_verified_devices_live_and_names_as_text() {
    let Some(chromium) = chromium_or_skip() else { return };
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An alert rule the kitchen's CPU breaks, to a webhook that cannot be reached: the Alerts
    // panel shows the firing alert and the notifier's failure.
    let alerts = AlertsConfig {
        rules: vec![Rule::new(
            "cpu-hot",
            Condition::TemperatureAbove(Threshold::new(KITCHEN, 45_000).sensor("cpu")),
        )],
        notifiers: vec![NotifierSettings {
            name: "hook".into(),
            kind: NotifierKind::Webhook(WebhookConfig {
                url: Secret::new("http://127.0.0.1:1/unreachable"),
                bearer: None,
            }),
            policy: DeliveryPolicy { max_attempts: 1, ..DeliveryPolicy::default() },
        }],
        routes: [("cpu-hot".to_owned(), vec![0])].into(),
    };
    let options = PipelineOptions { alerts, ..PipelineOptions::default() };
    let mut pipeline = support::open_pipeline(dir.path(), options);
    runtime.spawn(pipeline.alert_deliveries(None).unwrap());
    let Pipeline { mut ingest, state, .. } = pipeline;
    let state = state.app_state(AccessControl::open());
    let live = state.live.clone();

    let mut kitchen = Node { name: KITCHEN, codec: kitchen_codec(), sequence: 0 };
    let mut garage = Node { name: GARAGE, codec: garage_codec(), sequence: 0 };
    let now = support::now_ms();
    feed_history(&mut ingest, &mut kitchen, &mut garage, now);
    accept(&mut ingest, kitchen.frame(&temperature("cpu", 47_250), now - 2_000));
    accept(&mut ingest, kitchen.frame(&temperature("room", 21_375), now - 2_000));
    accept(&mut ingest, garage.frame(&temperature("tmp102", 7_875), now - 5_000));
    // Traffic the server must refuse: a forged frame (garage's topic, kitchen's key) and a replay.
    let forged = kitchen.frame(&led("door", true), now);
    let forged = IncomingFrame { topic: b"ledtemp/garage/led/door".to_vec(), ..forged };
    assert!(ingest.handle(forged).is_err());
    let genuine = kitchen.frame(&led("red", false), now - 1_500);
    accept(&mut ingest, genuine.clone());
    assert!(ingest.handle(genuine).is_err());
    accept(&mut ingest, kitchen.frame(&led("red", true), now - 1_000));

    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app(state)).await });
    let url = format!("http://{addr}/");

    let mut browser = Browser::launch(&chromium);
    browser.navigate(&url);

    // A card per device, in id order, each with its LEDs, latest temperatures and a chart with
    // the stored history.
    browser.wait_for(
        "both cards with their history",
        "document.querySelectorAll('article.card[data-history=loaded] .chart canvas').length === 2 \
         && [...document.querySelectorAll('article.card .chart')]\
            .every(c => Number(c.dataset.points) >= 31)",
    );
    let ids =
        browser.eval("[...document.querySelectorAll('.card .device-id')].map(e => e.textContent)");
    assert_eq!(ids, json!([GARAGE, KITCHEN]));
    let leds = browser.eval(&format!(
        "[...{}.parentElement.children].map(l => [l.dataset.led, l.dataset.on, l.textContent])",
        in_card(KITCHEN, ".led")
    ));
    assert_eq!(leds, json!([["green", "false", "greenoff"], ["red", "true", "redon"]]));
    assert_eq!(
        browser.eval(&format!("{}.dataset.on", in_card(GARAGE, "[data-led=door]"))),
        "false"
    );
    let temps = browser.eval(&format!(
        "[...{}.parentElement.children].map(t => t.textContent)",
        in_card(KITCHEN, ".temp")
    ));
    assert_eq!(temps, json!(["cpu47.3 °C", "room21.4 °C"]));
    assert_eq!(
        browser.eval(&format!("{}.textContent", in_card(GARAGE, "[data-sensor=tmp102] .celsius"))),
        "7.9 °C"
    );
    for device in [KITCHEN, GARAGE] {
        let points = browser.eval(&format!("Number({}.dataset.points)", in_card(device, ".chart")));
        assert!(points.as_u64().unwrap() >= 31, "{device}: {points} chart points");
        let badge = browser.eval(&format!("{}.textContent", in_card(device, ".badge")));
        assert_eq!(badge, "online", "{device}");
        let seen = browser.eval(&format!("{}.textContent", in_card(device, ".last-seen")));
        assert!(seen.as_str().unwrap().ends_with(" s ago") || seen == "just now", "{seen}");
    }
    let legend = browser.eval(&format!(
        "[...{}.closest('.card').querySelectorAll('.u-legend .u-label')].map(l => l.textContent)",
        in_card(KITCHEN, ".chart")
    ));
    assert_eq!(legend, json!(["Time", "cpu", "room"]));
    // Away from the cursor the legend shows each sensor's latest reading, not a placeholder.
    let values = browser.eval(&format!(
        "[...{}.closest('.card').querySelectorAll('.u-legend .u-value')].slice(1)\
         .map(v => v.textContent)",
        in_card(KITCHEN, ".chart")
    ));
    assert_eq!(values, json!(["latest 47.25 \u{b0}C", "latest 21.38 \u{b0}C"]), "{values}");

    // The Frames panel: what was accepted, what was refused and why.
    let counts = browser.eval(
        "Object.fromEntries([...document.querySelectorAll('#rejected .count')]\
         .map(r => [r.dataset.reason, r.querySelector('.number').textContent]))",
    );
    assert_eq!(
        counts,
        json!({"bad_tag": "1", "replay": "1", "unknown_device": "0", "malformed": "0", "oversize": "0", "revoked": "0", "limit": "0", "stale_will": "0", "redelivered": "0"})
    );
    let accepted = live.stats.snapshot().accepted.to_string();
    assert_eq!(browser.eval("document.getElementById('accepted').textContent"), json!(accepted));
    let why = browser.eval("document.querySelector('[data-reason=bad_tag] .why').textContent");
    assert!(why.as_str().unwrap().contains("forged or altered"), "{why}");
    browser
        .wait_for("the live indicator", "document.getElementById('live').dataset.state === 'live'");

    // The Alerts panel: the firing alert, and the webhook's failure.
    browser.wait_for(
        "the firing alert",
        "document.querySelector('#alerts-active .alert[data-state=firing] .alert-what')\
         ?.textContent === 'kitchen-pi/cpu \u{b7} cpu-hot'",
    );
    browser.wait_for(
        "the notifier's failure",
        "document.querySelector('.notifier[data-failing=true] .notifier-error')\
         ?.textContent.startsWith('last failure: could not deliver')",
    );
    assert_eq!(browser.eval("document.getElementById('no-alerts').hidden"), json!(true));

    // Live: a button press on the kitchen node, a new reading, and a forged frame; the page
    // follows through the one event stream.
    let before: u64 = browser
        .eval(&format!("Number({}.dataset.points)", in_card(KITCHEN, ".chart")))
        .as_u64()
        .unwrap();
    accept(&mut ingest, kitchen.frame(&led("red", false), support::now_ms()));
    accept(&mut ingest, garage.frame(&led("door", true), support::now_ms()));
    accept(&mut ingest, kitchen.frame(&temperature("cpu", 49_500), support::now_ms()));
    let bad =
        IncomingFrame { topic: b"ledtemp/cellar/status".to_vec(), ..garage.frame(&online(&[]), 0) };
    assert!(ingest.handle(bad).is_err());
    // What the server's once-a-second stats ticker sends.
    live.broadcast(LiveEvent::Stats(live.stats.snapshot()));
    browser.wait_for(
        "the red LED to go off",
        &format!("{}.dataset.on === 'false'", in_card(KITCHEN, "[data-led=red]")),
    );
    browser.wait_for(
        "the door LED to go on",
        &format!("{}.dataset.on === 'true'", in_card(GARAGE, "[data-led=door]")),
    );
    browser.wait_for(
        "the new reading",
        &format!("{}.textContent === '49.5 °C'", in_card(KITCHEN, "[data-sensor=cpu] .celsius")),
    );
    browser.wait_for(
        "a new chart point",
        &format!("Number({}.dataset.points) === {}", in_card(KITCHEN, ".chart"), before + 1),
    );
    browser.wait_for(
        "the unknown-device counter",
        "document.querySelector('[data-reason=unknown_device] .number').textContent === '1'",
    );
    assert_eq!(browser.eval("document.getElementById('broker').dataset.state"), "disconnected");
    // The broker link comes up (as the MQTT subscriber reports it).
    live.stats.set_broker_connected(true);
    live.broadcast(LiveEvent::Stats(live.stats.snapshot()));
    browser.wait_for(
        "the broker to show connected",
        "document.getElementById('broker').dataset.state === 'connected'",
    );
    // The database takes commits (a failing one shows `failing`: docs/reliability.md).
    assert_eq!(browser.eval("document.getElementById('store').dataset.state"), "ok");

    // One event stream for the whole page, no errors, no CSP violation.
    assert_eq!(live.stats.snapshot().sse_clients, 1);
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    let csp = browser.eval("fetch('/').then(r => r.headers.get('content-security-policy'))");
    assert!(csp.as_str().unwrap().starts_with("default-src 'self'"), "{csp}");

    // Hostile names: the server only ever sends validated names, so the browser rewrites the
    // device list on its way in, as a compromised or buggy server might, to show that the page
    // itself never parses a name as markup.
    browser.call(
        "Fetch.enable",
        json!({"patterns": [{"urlPattern": "*/api/devices", "requestStage": "Response"}]}),
    );
    browser.call("Page.reload", json!({}));
    let paused = browser.event("Fetch.requestPaused");
    let hostile_list = json!([{
        "id": HOSTILE,
        "online": true,
        "last_seen": "2026-01-01T00:00:00Z",
        "leds": [{"led": HOSTILE, "on": true, "at": "2026-01-01T00:00:00Z"}],
        "temperatures": [{"sensor": HOSTILE, "celsius": 20.5, "at": "2026-01-01T00:00:00Z"}],
    }]);
    browser.call(
        "Fetch.fulfillRequest",
        json!({
            "requestId": paused["requestId"],
            "responseCode": 200,
            "responseHeaders": [{"name": "Content-Type", "value": "application/json"}],
            "body": base64_encode(hostile_list.to_string().as_bytes()),
        }),
    );
    browser.call("Fetch.disable", json!({}));
    browser.wait_for("the hostile card", "document.querySelectorAll('article.card').length === 1");
    let shown = browser.eval(
        "[...document.querySelectorAll('.device-id, .led-name, .sensor-name')].map(e => e.textContent)",
    );
    assert_eq!(shown, json!([HOSTILE, HOSTILE, HOSTILE]));
    let injected = browser
        .eval("document.querySelectorAll('img, iframe, object, embed, script:not([src])').length");
    assert_eq!(injected, 0);
    assert_eq!(browser.eval("typeof window.__xss"), "undefined");

    drop(browser);
    eprintln!("dashboard browser test took {:?}", started.elapsed());
}

/// Errors the page reported, less the console lines Chromium writes for every HTTP error status
/// in `expected` (the wrong password's 401, a refused command's 409).
fn unexpected_errors(browser: &mut Browser, expected: &[u16]) -> Vec<String> {
    browser
        .errors()
        .into_iter()
        .filter(|e| {
            !(e.contains("\"source\":\"network\"")
                && expected.iter().any(|status| e.contains(&format!("status of {status}"))))
        })
        .collect()
}

/// Waits for the login page, then types `password` into it and submits.
fn type_password(browser: &mut Browser, password: &str) {
    browser.wait_for(
        "the login page",
        // login.js is deferred: the form exists before its submit handler does, and a click
        // before that does nothing (the CSP forbids plain form submission).
        "location.pathname === '/login' && document.readyState === 'complete'",
    );
    browser.eval("document.getElementById('password').value = ''");
    browser.eval("document.getElementById('password').focus()");
    browser.call("Input.insertText", json!({"text": password}));
    browser.eval("document.getElementById('submit').click()");
}

#[test]
fn behind_a_login_the_browser_logs_in_sees_live_updates_and_logs_out() {
    let Some(chromium) = chromium_or_skip() else { return };
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut ingest, state) = support::pipeline(dir.path());
    // The default settings: Secure cookies, which Chromium keeps on http://127.0.0.1.
    let auth = AuthConfig {
        password_hash: Some(hash_password(PASSWORD).unwrap()),
        ..AuthConfig::default()
    };
    assert!(auth.cookie_secure);
    let state = AppState { access: Arc::new(AccessControl::new(&auth)), ..state };
    let mut kitchen = Node { name: KITCHEN, codec: kitchen_codec(), sequence: 0 };
    let now = support::now_ms();
    accept(&mut ingest, kitchen.frame(&online(&[("red", true)]), now - 3_000));
    accept(&mut ingest, kitchen.frame(&temperature("cpu", 47_250), now - 2_000));

    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    runtime.spawn(async move { axum::serve(listener, service).await });

    let mut browser = Browser::launch(&chromium);
    browser.navigate(&format!("http://{addr}/"));
    type_password(&mut browser, "not the password");
    browser.wait_for(
        "the refusal",
        "document.getElementById('login-problem').textContent === 'Wrong password.'",
    );
    assert_eq!(browser.eval("location.pathname"), "/login");

    type_password(&mut browser, PASSWORD);
    browser.wait_for(
        "the dashboard with the kitchen's card",
        "location.pathname === '/' && document.querySelectorAll('article.card').length === 2",
    );
    // The session cookie is HttpOnly: the page's script cannot read it.
    assert_eq!(browser.eval("document.cookie"), "");
    browser
        .wait_for("the live indicator", "document.getElementById('live').dataset.state === 'live'");
    assert_eq!(browser.eval("document.getElementById('logout').hidden"), json!(false));
    assert_eq!(
        browser.eval(&format!("{}.textContent", in_card(KITCHEN, "[data-sensor=cpu] .celsius"))),
        "47.3 °C"
    );
    // Live, through the event stream the session opened.
    accept(&mut ingest, kitchen.frame(&led("red", false), support::now_ms()));
    accept(&mut ingest, kitchen.frame(&temperature("cpu", 49_500), support::now_ms()));
    browser.wait_for(
        "the red LED to go off",
        &format!("{}.dataset.on === 'false'", in_card(KITCHEN, "[data-led=red]")),
    );
    browser.wait_for(
        "the new reading",
        &format!("{}.textContent === '49.5 °C'", in_card(KITCHEN, "[data-sensor=cpu] .celsius")),
    );

    // Log out: back to the login page, and the old session is worth nothing.
    browser.eval("document.getElementById('logout').click()");
    browser.wait_for("the login page again", "location.pathname === '/login'");
    let status = browser.eval("fetch('/api/devices').then(r => r.status)");
    assert_eq!(status, 401);
    let errors = unexpected_errors(&mut browser, &[401]);
    assert!(errors.is_empty(), "the pages reported errors: {errors:#?}");

    drop(browser);
    eprintln!("login browser test took {:?}", started.elapsed());
}

/// A command's outcome as the page's switch shows it: `[data-command, disabled, aria-checked,
/// the note's text]`, as a JS expression.
fn switch_state(device: &str, led: &str) -> String {
    let item = in_card(device, &format!("[data-led={led}]"));
    format!(
        "(() => {{ const s = {item}.querySelector('.switch'); \
         return [s.dataset.command ?? null, s.disabled, s.getAttribute('aria-checked'), \
         {item}.querySelector('.led-command').textContent]; }})()"
    )
}

#[test]
fn the_led_switch_sends_a_command_and_shows_what_the_node_confirmed() {
    let Some(chromium) = chromium_or_skip() else { return };
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = runtime.block_on(TestBroker::start());
    let mut config = support::serve_config(dir.path(), broker.port);
    config.auth.password_hash = Some(hash_password(PASSWORD).unwrap());
    let server = runtime.block_on(support::start_server(config, support::keys()));
    // The kitchen's node: LED `red`, off at start; it applies sealed commands and confirms each
    // with its own sealed LED frame.
    let address = broker.address(KITCHEN);
    let node = NodeThread::spawn(move || SimulatedNode::new(KITCHEN, kitchen_codec()).run(address));

    let mut browser = Browser::launch(&chromium);
    browser.navigate(&format!("http://{}/", server.http_addr()));
    type_password(&mut browser, PASSWORD);
    let switch = format!("{}.querySelector('.switch')", in_card(KITCHEN, "[data-led=red]"));
    browser.wait_for(
        "the kitchen's red LED, off, with its switch",
        &format!("{switch}?.getAttribute('aria-checked') === 'false'"),
    );
    browser
        .wait_for("the live indicator", "document.getElementById('live').dataset.state === 'live'");
    // An accessible switch that names its LED.
    let described = browser.eval(&format!(
        "[{switch}.tagName, {switch}.getAttribute('role'), {switch}.getAttribute('aria-label'), \
         {switch}.disabled]"
    ));
    assert_eq!(described, json!(["BUTTON", "switch", "LED red of kitchen-pi", false]));

    // Every state the switch goes through, recorded as it happens (a confirmation over a local
    // broker takes milliseconds, quicker than a poll).
    browser.eval(&format!(
        "window.__switchStates = []; const s = {switch}; \
         new MutationObserver(() => window.__switchStates.push([s.dataset.command ?? null, \
         s.disabled, s.getAttribute('aria-checked')])) \
         .observe(s, {{attributes: true, attributeFilter: ['data-command']}}); 0"
    ));
    browser.click(&switch);
    browser
        .wait_for("the switch on, confirmed", &format!("{switch}.dataset.command === 'confirmed'"));
    // Pending (disabled, still off: no guess), then on as the device confirmed it.
    assert_eq!(
        browser.eval("window.__switchStates"),
        json!([["pending", true, "false"], ["confirmed", false, "true"]])
    );
    assert_eq!(
        browser.eval(&switch_state(KITCHEN, "red")),
        json!(["confirmed", false, "true", "confirmed"])
    );
    assert_eq!(browser.eval(&format!("{}.dataset.on", in_card(KITCHEN, "[data-led=red]"))), "true");
    // The server shows the LED on from the node's own frame, and logged the command as the
    // session's, confirmed.
    let red = browser.eval(
        "fetch('/api/devices').then(r => r.json()).then(ds => ds.find(d => d.id === 'kitchen-pi')\
         .leds.find(l => l.led === 'red').on)",
    );
    assert_eq!(red, json!(true));
    // (The answer comes before the log's entry is settled: wait for its outcome.)
    browser.wait_for(
        "the command logged as confirmed",
        "fetch('/api/commands').then(r => r.json()).then(log => log[0]?.outcome === 'confirmed')",
    );
    let log = browser.eval("fetch('/api/commands').then(r => r.json())");
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    let entry = &log[0];
    assert_eq!(
        [&entry["device"], &entry["led"], &entry["on"], &entry["outcome"]],
        [&json!(KITCHEN), &json!("red"), &json!(true), &json!("confirmed")]
    );
    assert!(entry["by"].as_str().unwrap().starts_with("session "), "{entry}");
    // The Commands panel lists it.
    browser.wait_for(
        "the command in the Commands panel",
        "document.querySelector('#command-log .command[data-outcome=confirmed] .command-what')\
         ?.textContent === 'kitchen-pi/red \u{2192} on'",
    );

    // A command the device does not confirm in time: the server's 504 (made here by the
    // browser, rather than waiting out the server's time-out) leaves the switch where the device
    // last put it.
    browser.call(
        "Fetch.enable",
        json!({"patterns": [{"urlPattern": "*/api/devices/*/leds/*", "requestStage": "Request"}]}),
    );
    browser.click(&switch);
    let paused = browser.event("Fetch.requestPaused");
    assert_eq!(paused["request"]["method"], "POST");
    assert_eq!(paused["request"]["postData"], r#"{"on":false}"#);
    assert_eq!(
        browser.eval(&switch_state(KITCHEN, "red")),
        json!(["pending", true, "true", "pending\u{2026}"])
    );
    let timed_out = json!({"device": KITCHEN, "led": "red", "on": false, "outcome": "timed_out"});
    browser.call(
        "Fetch.fulfillRequest",
        json!({
            "requestId": paused["requestId"],
            "responseCode": 504,
            "responseHeaders": [{"name": "Content-Type", "value": "application/json"}],
            "body": base64_encode(timed_out.to_string().as_bytes()),
        }),
    );
    browser.call("Fetch.disable", json!({}));
    browser.wait_for("the time-out", &format!("{switch}.dataset.command === 'timed_out'"));
    assert_eq!(
        browser.eval(&switch_state(KITCHEN, "red")),
        json!(["timed_out", false, "true", "timed out"])
    );

    // The node goes away (its connection drops; the broker publishes its sealed Last Will): a
    // click is refused by the server, and the page says why.
    runtime.block_on(node.stop());
    browser.wait_for(
        "the kitchen offline",
        &format!("{}.dataset.state === 'offline'", in_card(KITCHEN, ".badge")),
    );
    browser.click(&switch);
    browser.wait_for("the refusal", &format!("{switch}.dataset.command === 'refused'"));
    assert_eq!(
        browser.eval(&switch_state(KITCHEN, "red")),
        json!(["refused", false, "true", "device offline"])
    );
    let errors = unexpected_errors(&mut browser, &[409, 504]);
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");

    drop(browser);
    runtime.block_on(server.shutdown()).unwrap();
    eprintln!("LED switch browser test took {:?}", started.elapsed());
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (text, encoded) in vectors {
        assert_eq!(base64_encode(text.as_bytes()), encoded, "{text:?}");
    }
}

const MINUTE_MS: i64 = 60 * 1000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The kitchen's room sensor over the last 8 days, a reading every 10 minutes on the 10-minute
/// marks (the `i`th reads `room_milli(i)`), and its red LED on from `on` to `off`.
fn feed_days(ingest: &mut Ingest, kitchen: &mut Node, first: i64, now: i64, on: i64, off: i64) {
    accept(ingest, kitchen.frame(&online(&[("red", false)]), first - MINUTE_MS));
    let mut switches = vec![(on, true), (off, false)].into_iter().peekable();
    for i in 0.. {
        let at = first + i64::from(i) * 10 * MINUTE_MS;
        if at > now - MINUTE_MS {
            break;
        }
        while let Some(&(when, state)) = switches.peek()
            && when <= at
        {
            accept(ingest, kitchen.frame(&led("red", state), when));
            switches.next();
        }
        accept(ingest, kitchen.frame(&temperature("room", room_milli(i)), at));
    }
}

/// The `i`th reading of [`feed_days`]: a daily wave with a spike every 7 hours.
fn room_milli(i: i32) -> i32 {
    let spike = if i % 42 == 0 { 4_000 } else { 0 };
    20_000 + (i % 144 - 72).abs() * 40 + spike
}

/// The card's plotting area, scrolled into view: `[x, y, width, height]` in the viewport.
fn chart_area(browser: &mut Browser, device: &str) -> [f64; 4] {
    let rect = browser.eval(&format!(
        "(() => {{ const o = {}; o.scrollIntoView({{block: 'center'}}); \
         const r = o.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }})()",
        in_card(device, ".u-over")
    ));
    [0, 1, 2, 3].map(|i| rect[i].as_f64().unwrap())
}

/// Moves the mouse over the card's chart, to `at` (a fraction of its width), half-way up.
fn hover_chart(browser: &mut Browser, device: &str, at: f64) {
    let [x, y, width, height] = chart_area(browser, device);
    browser.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseMoved", "x": x + width * at, "y": y + height / 2.0}),
    );
}

/// A mouse drag across the card's chart from `from` to `to`, fractions of its width.
fn drag_across_chart(browser: &mut Browser, device: &str, from: f64, to: f64) {
    let [x, y, width, height] = chart_area(browser, device);
    let y = y + height / 2.0;
    let steps = [
        ("mousePressed", from, 1),
        ("mouseMoved", (from + to) / 2.0, 1),
        ("mouseMoved", to, 1),
        ("mouseReleased", to, 0),
    ];
    for (kind, at, buttons) in steps {
        browser.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x + width * at, "y": y, "button": "left",
                   "buttons": buttons, "clickCount": 1}),
        );
    }
}

/// The card's history as the page shows it: `[range, live, zoomed, bucket ms, chart points,
/// bands]`, once loaded, as a JS expression.
fn history_state(device: &str) -> String {
    let card = format!("{}.closest('.card')", in_card(device, ".chart"));
    format!(
        "(() => {{ const c = {card}; const chart = c.querySelector('.chart'); \
         return [c.dataset.range, c.dataset.live, c.dataset.zoomed, Number(c.dataset.bucketMs), \
         Number(chart.dataset.points), Number(chart.dataset.bands)]; }})()"
    )
}

/// Waits until the card has loaded the range `range` (a range key, or "custom").
fn wait_for_range(browser: &mut Browser, device: &str, range: &str, what: &str) {
    let card = format!("{}.closest('.card')", in_card(device, ".chart"));
    browser.wait_for(
        what,
        &format!("{card}.dataset.history === 'loaded' && {card}.dataset.range === '{range}'"),
    );
}

#[test]
fn ranges_reload_downsampled_history_with_led_changes_and_csv_downloads() {
    let Some(chromium) = chromium_or_skip() else { return };
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut ingest, state) = support::pipeline(dir.path());
    let mut kitchen = Node { name: KITCHEN, codec: kitchen_codec(), sequence: 0 };
    let now = support::now_ms();
    // Three days ago, midnight UTC (the page runs in UTC below): the LED was switched on at
    // 12:34:56 and off at 15:00.
    let day = (now / DAY_MS - 3) * DAY_MS;
    let (on, off) = (day + 12 * HOUR_MS + 34 * MINUTE_MS + 56_000, day + 15 * HOUR_MS);
    let first = (now / (10 * MINUTE_MS)) * 10 * MINUTE_MS - 8 * DAY_MS;
    let fed = Instant::now();
    feed_days(&mut ingest, &mut kitchen, first, now, on, off);
    eprintln!("8 days of readings through the pipeline took {:?}", fed.elapsed());

    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app(state)).await });

    let mut browser = Browser::launch(&chromium);
    browser.call("Emulation.setTimezoneOverride", json!({"timezoneId": "UTC"}));
    browser.navigate(&format!("http://{addr}/"));
    wait_for_range(&mut browser, KITCHEN, "1h", "the last hour");
    let state = browser.eval(&history_state(KITCHEN));
    assert_eq!(
        state.as_array().unwrap()[..4],
        [json!("1h"), json!("true"), json!("false"), json!(0)]
    );
    assert!((5..=7).contains(&state[4].as_u64().unwrap()), "the last hour, raw: {state}");
    assert_eq!(state[5], 0, "{state}");

    // 7 days: about 1,000 readings, more than the chart's width asks for: buckets, drawn as
    // the mean's line and a min-max band.
    browser.click(&in_card(KITCHEN, "button[data-range='7d']"));
    wait_for_range(&mut browser, KITCHEN, "7d", "the 7-day range");
    let state = browser.eval(&history_state(KITCHEN));
    let bucket_7d = state[3].as_u64().unwrap();
    assert_eq!(state.as_array().unwrap()[..3], [json!("7d"), json!("true"), json!("false")]);
    assert!(bucket_7d > 0, "7 days in buckets: {state}");
    assert!(state[4].as_u64().unwrap() <= 1000, "{state}");
    assert_eq!(state[5], 1, "a band for the one sensor: {state}");
    // The request asked for a point per pixel at most, and the server answered in buckets.
    let request = browser.eval(
        "performance.getEntriesByType('resource').map(e => e.name)\
         .filter(n => n.includes('/temperature?')).pop()",
    );
    let request = request.as_str().unwrap().to_owned();
    let asked: u64 =
        request.split("points=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    assert!((100..=1000).contains(&asked), "{request}");
    let answer = browser.eval(&format!("fetch({}).then(r => r.json())", json!(request)));
    assert_eq!(answer["bucket_ms"], json!(bucket_7d), "{request}");
    let points = answer["points"].as_array().unwrap();
    assert!(points.len() as u64 <= asked, "{} points for {asked}", points.len());
    let spike = points.iter().find(|p| p["max"].as_f64().unwrap() > 23.0).unwrap();
    assert!(spike["celsius"].as_f64().unwrap() < spike["max"].as_f64().unwrap(), "{spike}");
    let legend = browser.eval(&format!(
        "[...{}.closest('.card').querySelectorAll('.u-legend .u-series')]\
         .map(s => [s.querySelector('.u-label').textContent, s.classList.contains('band-edge')])",
        in_card(KITCHEN, ".chart")
    ));
    assert_eq!(
        legend,
        json!([["Time", false], ["room", false], ["room min", true], ["room max", true]])
    );
    // Live: a reading now joins the newest bucket (a 30 °C spike becomes its maximum), read
    // from the legend with the cursor at the chart's right edge.
    let points_before = browser.eval(&history_state(KITCHEN))[4].as_i64().unwrap();
    accept(&mut ingest, kitchen.frame(&temperature("room", 30_000), support::now_ms()));
    browser.wait_for(
        "the live reading on the card",
        &format!("{}.textContent === '30.0 °C'", in_card(KITCHEN, "[data-sensor=room] .celsius")),
    );
    hover_chart(&mut browser, KITCHEN, 0.999);
    browser.wait_for(
        "the spike in the newest bucket",
        &format!(
            "[...{}.closest('.card').querySelectorAll('.u-legend .u-value')][1]\
             .textContent.endsWith(' to 30.00)')",
            in_card(KITCHEN, ".chart")
        ),
    );
    // At most one new bucket (and the oldest may have slid out of the 7 days meanwhile).
    let points_after = browser.eval(&history_state(KITCHEN))[4].as_i64().unwrap();
    assert!((points_after - points_before).abs() <= 1, "{points_before} then {points_after}");
    // Dates under the time axis.
    let ticks = browser.eval(&format!("{}.dataset.ticks", in_card(KITCHEN, ".chart")));
    let ticks = ticks.as_str().unwrap();
    assert!(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .iter()
            .any(|month| ticks.contains(month)),
        "{ticks}"
    );

    // Zoom: a drag across a third of the chart asks for that part again, in finer buckets.
    drag_across_chart(&mut browser, KITCHEN, 0.3, 0.6);
    let card = format!("{}.closest('.card')", in_card(KITCHEN, ".chart"));
    browser.wait_for(
        "the zoomed range",
        &format!("{card}.dataset.zoomed === 'true' && {card}.dataset.history === 'loaded'"),
    );
    let zoomed = browser.eval(&history_state(KITCHEN));
    assert_eq!(zoomed[2], "true", "{zoomed}");
    assert_eq!(zoomed[1], "false", "a zoomed range is not live: {zoomed}");
    assert!(zoomed[3].as_u64().unwrap() < bucket_7d, "finer: {zoomed} after {bucket_7d}");
    let span = browser
        .eval(&format!("Date.parse({card}.dataset.until) - Date.parse({card}.dataset.since)"));
    let span = span.as_f64().unwrap();
    assert!((1.5 * DAY_MS as f64..2.7 * DAY_MS as f64).contains(&span), "{span} ms zoomed");
    let reset = in_card(KITCHEN, ".reset-zoom");
    assert_eq!(browser.eval(&format!("{reset}.hidden")), json!(false));
    browser.click(&reset);
    browser.wait_for(
        "the whole 7 days again",
        &format!("{card}.dataset.zoomed === 'false' && {card}.dataset.history === 'loaded'"),
    );
    assert_eq!(browser.eval(&history_state(KITCHEN))[3], json!(bucket_7d));

    // A custom day, in the past: the LED's change on its timeline, where and when it was.
    browser.click(&in_card(KITCHEN, "button[data-range=custom]"));
    let day_start = browser.eval(&format!("new Date({day}).toISOString().slice(0, 16)"));
    let day_end = browser.eval(&format!("new Date({}).toISOString().slice(0, 16)", day + DAY_MS));
    browser.eval(&format!(
        "(() => {{ const c = {0}; c.querySelector('input[name=from]').value = {1}; \
         c.querySelector('input[name=to]').value = {2}; return 0; }})()",
        card, day_start, day_end
    ));
    browser.click(&in_card(KITCHEN, ".show-range"));
    wait_for_range(&mut browser, KITCHEN, "custom", "the custom day");
    let state = browser.eval(&history_state(KITCHEN));
    let day_points = state[4].clone();
    assert_eq!(
        state.as_array().unwrap()[..4],
        [json!("custom"), json!("false"), json!("false"), json!(0)]
    );
    assert!((144..=145).contains(&day_points.as_u64().unwrap()), "a day of raw readings: {state}");
    assert_eq!(state[5], 0, "{state}");
    let span = browser.eval(&format!(
        "[...{card}.querySelectorAll('.led-row')].map(r => [r.dataset.led, \
         [...r.querySelectorAll('.led-on')].map(s => [s.dataset.from, s.dataset.until, \
         Math.round(parseFloat(s.style.left) * 100), s.title])])"
    ));
    let iso = |ms: i64| browser_iso(ms);
    let left = ((on - day) as f64 * 10_000.0 / DAY_MS as f64).round() as u64;
    let (day_name, date) = (browser_day(day), browser_date(day, now));
    assert_eq!(
        span,
        json!([[
            "red",
            [[
                iso(on),
                iso(off),
                left,
                format!("red: on {day_name} {date} 12:34:56, off {day_name} {date} 15:00:00"),
            ]]
        ]]),
    );
    let changes = browser
        .eval(&format!("[...{card}.querySelectorAll('.led-change')].map(c => c.textContent)"));
    assert_eq!(
        changes,
        json!([
            format!("{day_name} {date} 15:00:00 red off"),
            format!("{day_name} {date} 12:34:56 red on"),
        ])
    );
    // Hovering over the chart at 14:00 reads the LED's state then.
    hover_chart(&mut browser, KITCHEN, 14.0 / 24.0);
    browser.wait_for(
        "the LED's state under the cursor",
        &format!("{}.textContent.endsWith('LEDs: red on')", in_card(KITCHEN, ".cursor-readout")),
    );
    // A past range stays as it was: new readings and switches do not join it.
    accept(&mut ingest, kitchen.frame(&temperature("room", 25_000), support::now_ms()));
    accept(&mut ingest, kitchen.frame(&led("red", true), support::now_ms()));
    browser.wait_for(
        "the new reading on the card",
        &format!("{}.textContent === '25.0 °C'", in_card(KITCHEN, "[data-sensor=room] .celsius")),
    );
    browser.wait_for(
        "the LED on",
        &format!("{}.dataset.on === 'true'", in_card(KITCHEN, "[data-led=red]")),
    );
    assert_eq!(browser.eval(&history_state(KITCHEN))[4], day_points);
    assert_eq!(browser.eval(&format!("{card}.querySelectorAll('.led-on').length")), 1);

    // The CSV of the shown day, downloaded as a user does.
    let downloads = tempfile::tempdir().unwrap();
    browser.call_browser(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": downloads.path(), "eventsEnabled": true}),
    );
    let link = in_card(KITCHEN, "a.csv[data-kind=temperature]");
    let href = browser.eval(&format!("{link}.getAttribute('href')"));
    assert_eq!(
        href,
        format!(
            "/api/devices/{KITCHEN}/temperature.csv?since={}&until={}",
            iso(day).replace(':', "%3A"),
            iso(day + DAY_MS).replace(':', "%3A")
        )
    );
    browser.click(&link);
    let csv = downloaded(downloads.path());
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("at,sensor,celsius"), "{csv}");
    let first_line = lines.next().unwrap();
    let fields: Vec<&str> = first_line.split(',').collect();
    assert_eq!(fields.len(), 3, "{first_line}");
    let first_at = browser.eval(&format!("Date.parse({})", json!(fields[0])));
    let i = ((day - first) / (10 * MINUTE_MS)) as i32;
    assert_eq!(first_at, json!(day), "{first_line}");
    assert_eq!(fields[1], "room");
    let celsius: f64 = fields[2].parse().unwrap();
    assert!((celsius - f64::from(room_milli(i)) / 1000.0).abs() < 1e-9, "{first_line}");
    assert!((144..=145).contains(&csv.lines().count().saturating_sub(1)), "{csv}");
    // The LED changes of the day, through the other link.
    let leds = browser.eval(&format!(
        "fetch({}.href).then(async r => [r.status, r.headers.get('content-type'), await r.text()])",
        in_card(KITCHEN, "a.csv[data-kind=leds]")
    ));
    assert_eq!(leds[0], 200, "{leds}");
    assert!(leds[1].as_str().unwrap().starts_with("text/csv"), "{leds}");
    let body = leds[2].as_str().unwrap();
    assert!(body.lines().any(|l| l.contains(&iso(on)[..19]) && l.contains("red")), "{body}");

    // A custom range that ends in the future is live.
    let from = now - 2 * HOUR_MS;
    browser.eval(&format!(
        "(() => {{ const c = {card}; \
         c.querySelector('input[name=from]').value = new Date({from}).toISOString().slice(0, 16); \
         c.querySelector('input[name=to]').value = new Date({}).toISOString().slice(0, 16); \
         return 0; }})()",
        now + HOUR_MS
    ));
    browser.click(&in_card(KITCHEN, ".show-range"));
    browser.wait_for(
        "the custom range up to the next hour",
        &format!(
            "{card}.dataset.history === 'loaded' && {card}.dataset.live === 'true' \
             && {card}.dataset.range === 'custom'"
        ),
    );
    let before = browser.eval(&history_state(KITCHEN))[4].as_u64().unwrap();
    accept(&mut ingest, kitchen.frame(&temperature("room", 26_000), support::now_ms()));
    browser.wait_for(
        "the reading in the range",
        &format!("Number({}.dataset.points) === {}", in_card(KITCHEN, ".chart"), before + 1),
    );

    // Back to a range that ends now: live again, and a switch now extends its timeline.
    browser.click(&in_card(KITCHEN, "button[data-range='24h']"));
    wait_for_range(&mut browser, KITCHEN, "24h", "the last 24 hours");
    assert_eq!(browser.eval(&history_state(KITCHEN))[1], "true");
    accept(&mut ingest, kitchen.frame(&led("red", false), support::now_ms()));
    browser.wait_for(
        "the switch on the timeline",
        &format!(
            "[...{card}.querySelectorAll('.led-on')].some(s => s.dataset.until !== '') \
             && {card}.querySelector('.led-change').textContent.endsWith('red off')"
        ),
    );

    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    drop(browser);
    eprintln!("range browser test took {:?}", started.elapsed());
}

/// `ms` as `Date.prototype.toISOString` writes it.
fn browser_iso(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    let rest = ms.rem_euclid(DAY_MS);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / HOUR_MS,
        rest % HOUR_MS / MINUTE_MS,
        rest % MINUTE_MS / 1000,
        rest % 1000
    )
}

/// The page's weekday name for the UTC day of `ms`.
fn browser_day(ms: i64) -> &'static str {
    // 1970-01-01 was a Thursday.
    ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][ms.div_euclid(DAY_MS).rem_euclid(7) as usize]
}

/// The page's "24 Nov" for the UTC day of `ms`, "29 Dec 2025" when that is not in the year of
/// `now`.
fn browser_date(ms: i64, now: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY_MS));
    let months =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let this_year = civil_from_days(now.div_euclid(DAY_MS)).0;
    let year = if year == this_year { String::new() } else { format!(" {year}") };
    format!("{day} {}{year}", months[month as usize - 1])
}

/// Howard Hinnant's days-to-civil: (year, month 1-12, day 1-31) of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The one file Chromium downloaded into `dir`, once complete.
fn downloaded(dir: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let files: Vec<PathBuf> =
            std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
        if let [file] = files.as_slice()
            && file.extension().is_none_or(|e| e != "crdownload")
        {
            let text = std::fs::read_to_string(file).unwrap();
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "no download in {}: {files:?}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dates_are_written_as_the_page_writes_them() {
    let vectors = [
        (0, "1970-01-01T00:00:00.000Z", "Thu"),
        (951_827_696_789, "2000-02-29T12:34:56.789Z", "Tue"),
        (1_795_910_400_000, "2026-11-29T00:00:00.000Z", "Sun"),
        (-1, "1969-12-31T23:59:59.999Z", "Wed"),
    ];
    for (ms, iso, weekday) in vectors {
        assert_eq!(browser_iso(ms), iso, "{ms}");
        assert_eq!(browser_day(ms), weekday, "{ms}");
    }
    assert_eq!(browser_date(1_795_910_400_000, 1_795_910_400_000), "29 Nov");
    assert_eq!(browser_date(951_827_696_789, 1_795_910_400_000), "29 Feb 2000");
}
