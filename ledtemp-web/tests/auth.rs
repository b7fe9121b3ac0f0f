//! Login, sessions, API tokens, CSRF, the login rate limit and body limits, against a real
//! server (`Server::start`) on a free port, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use ledtemp_web::{
    AuthConfig, CONTENT_SECURITY_POLICY_VALUE, MAX_REQUEST_BODY, SESSION_RECHECK, Server,
    hash_password, new_api_token,
};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use support::{keys, serve_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery staple";

/// A server with login on, and a client that follows no redirects and keeps no cookies.
struct Site {
    server: Server,
    base: String,
    origin: String,
    client: reqwest::Client,
    /// A valid API token, for reading `/metrics`.
    token: String,
    _dir: tempfile::TempDir,
}

async fn start(auth: impl FnOnce(&mut AuthConfig)) -> Site {
    let dir = tempfile::tempdir().unwrap();
    // No broker listens on port 1: the subscriber keeps retrying, which HTTP does not mind.
    let mut config = serve_config(dir.path(), 1);
    let (token, token_hash) = new_api_token().unwrap();
    let mut hash = [0u8; 32];
    hex::decode_to_slice(token_hash, &mut hash).unwrap();
    config.auth.password_hash = Some(hash_password(PASSWORD).unwrap());
    config.auth.token_hashes = vec![hash];
    auth(&mut config.auth);
    let server = Server::start(config, keys()).await.unwrap();
    let addr = server.http_addr();
    Site {
        server,
        base: format!("http://{addr}"),
        origin: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        token,
        _dir: dir,
    }
}

/// `name=value` of the `Set-Cookie` headers for `name`, and the whole header.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).find_map(|header| {
        let pair = header.split(';').next().unwrap();
        pair.starts_with(&format!("{name}=")).then(|| (pair.to_owned(), header.to_owned()))
    })
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    async fn status(&self, path: &str, cookie: Option<&str>) -> StatusCode {
        self.get(path, cookie).await.status()
    }

    /// The login form's double-submit token: the cookie (`name=value`) and the body's value.
    async fn login_token(&self) -> (String, String) {
        let response = self.get("/auth/login-token", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let (cookie, _) = set_cookie(response.headers(), "__Host-ledtemp_login").unwrap();
        let body: Value = response.json().await.unwrap();
        (cookie, body["csrf"].as_str().unwrap().to_owned())
    }

    /// What the login page's script does: fetch a token, post the password with it.
    async fn login(&self, password: &str) -> reqwest::Response {
        let (cookie, csrf) = self.login_token().await;
        self.client
            .post(self.url("/auth/login"))
            .header("origin", &self.origin)
            .header("sec-fetch-site", "same-origin")
            .header("cookie", cookie)
            .json(&json!({ "password": password, "csrf": csrf }))
            .send()
            .await
            .unwrap()
    }

    /// Logs in; the session cookie (`name=value`) and its CSRF token.
    async fn session(&self) -> (String, String) {
        let response = self.login(PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let (cookie, _) = set_cookie(response.headers(), "__Host-ledtemp_session").unwrap();
        let body: Value = response.json().await.unwrap();
        (cookie, body["csrf"].as_str().unwrap().to_owned())
    }

    async fn logout(&self, cookie: &str, csrf: Option<&str>, origin: &str) -> StatusCode {
        let mut request = self
            .client
            .post(self.url("/auth/logout"))
            .header("cookie", cookie)
            .header("origin", origin);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send().await.unwrap().status()
    }

    /// One counter from `/metrics`, read with the API token.
    async fn metric(&self, name: &str) -> u64 {
        let response =
            self.client.get(self.url("/metrics")).bearer_auth(&self.token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_login_pages_go_to_the_login_and_programs_get_401() {
    let site = start(|_| {}).await;
    let page = site.get("/", None).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/login");
    for path in ["/api/devices", "/api/events", "/metrics", "/api/stats", "/auth/session"] {
        let response = site.get(path, None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "error": "login required" }), "{path}");
    }
    // A cookie that names no session is no better.
    let forged = format!("__Host-ledtemp_session={}", "ab".repeat(32));
    assert_eq!(site.status("/api/devices", Some(&forged)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(site.status("/", Some(&forged)).await, StatusCode::SEE_OTHER);
    // The probe stays open (503: no broker), and so do the login page and the static assets.
    assert_eq!(site.status("/healthz", None).await, StatusCode::SERVICE_UNAVAILABLE);
    for path in ["/login", "/assets/login.js", "/assets/login.css", "/assets/dashboard.css"] {
        assert_eq!(site.status(path, None).await, StatusCode::OK, "{path}");
    }
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_pages_forbid_inline_script_by_policy() {
    let site = start(|_| {}).await;
    let (cookie, _) = site.session().await;
    for (path, cookie) in [("/login", None), ("/", Some(cookie.as_str()))] {
        let response = site.get(path, cookie).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let policy = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert_eq!(policy, CONTENT_SECURITY_POLICY_VALUE, "{path}");
        // default-src 'self' with no script-src: scripts only from files of this origin.
        assert!(policy.split(';').any(|d| d.trim() == "default-src 'self'"), "{policy}");
        assert!(!policy.contains("script-src") && !policy.contains("unsafe"), "{policy}");
        let html = response.text().await.unwrap().to_ascii_lowercase();
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').unwrap()];
            assert!(tag.contains(" src=\"/assets/"), "{path}: {tag}");
            assert!(html[at + tag.len() + 1..].starts_with("</script>"), "{path}: inline code");
        }
        assert!(!html.contains(" onclick=") && !html.contains("javascript:"), "{path}");
    }
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_counted() {
    let site = start(|_| {}).await;
    let response = site.login("hunter2").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(response.headers(), "__Host-ledtemp_session").is_none());
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "error": "login failed" }));
    assert_eq!(site.metric("ledtemp_auth_failed_logins_total").await, 1);
    assert_eq!(site.metric("ledtemp_auth_rate_limited_logins_total").await, 0);
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_five_failures_logins_wait_even_with_the_right_password() {
    let site = start(|_| {}).await;
    for attempt in 0..5 {
        assert_eq!(site.login("guess").await.status(), StatusCode::UNAUTHORIZED, "{attempt}");
    }
    let limited = site.login("guess").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let right = site.login(PASSWORD).await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS, "the right password waits too");
    assert!(set_cookie(right.headers(), "__Host-ledtemp_session").is_none());
    assert_eq!(site.metric("ledtemp_auth_failed_logins_total").await, 5);
    assert_eq!(site.metric("ledtemp_auth_rate_limited_logins_total").await, 2);
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_sets_a_secure_strict_session_cookie() {
    let site = start(|_| {}).await;
    let response = site.login(PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (pair, header) = set_cookie(response.headers(), "__Host-ledtemp_session").unwrap();
    let id = pair.split_once('=').unwrap().1;
    assert_eq!(id.len(), 64, "256 bits, hex");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let attributes: Vec<&str> = header.split(';').skip(1).map(str::trim).collect();
    for expected in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure", "Max-Age=604800"] {
        assert!(attributes.contains(&expected), "{expected} missing: {header}");
    }
    assert!(!header.contains("Domain"), "{header}");
    // The login's double-submit cookie is deleted.
    let (_, login) = set_cookie(response.headers(), "__Host-ledtemp_login").unwrap();
    assert!(login.contains("Max-Age=0"), "{login}");
    // Two logins, two sessions.
    let (other, _) = site.session().await;
    assert_ne!(other, pair);
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_the_pages_the_api_the_event_stream_and_metrics() {
    let site = start(|_| {}).await;
    let (cookie, csrf) = site.session().await;
    let page = site.get("/", Some(&cookie)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("id=\"logout\""));
    let devices: Value = site.get("/api/devices", Some(&cookie)).await.json().await.unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 2);
    assert_eq!(site.status("/metrics", Some(&cookie)).await, StatusCode::OK);
    let session: Value = site.get("/auth/session", Some(&cookie)).await.json().await.unwrap();
    assert_eq!(session, json!({ "auth": true, "csrf": csrf }));
    let events = site.get("/api/events", Some(&cookie)).await;
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    // Logged in, the login page sends the browser on to the dashboard.
    let login = site.get("/login", Some(&cookie)).await;
    assert_eq!(
        (login.status(), &login.headers()["location"]),
        (StatusCode::SEE_OTHER, &HeaderValue::from_static("/"))
    );
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_so_a_replayed_cookie_is_refused() {
    let site = start(|_| {}).await;
    let (cookie, csrf) = site.session().await;
    let (other, _) = site.session().await;
    let mut events = site.get("/api/events", Some(&cookie)).await;
    assert_eq!(events.status(), StatusCode::OK);

    assert_eq!(site.logout(&cookie, Some(&csrf), &site.origin).await, StatusCode::NO_CONTENT);
    assert_eq!(site.status("/api/devices", Some(&cookie)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(site.status("/api/events", Some(&cookie)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(site.status("/", Some(&cookie)).await, StatusCode::SEE_OTHER);
    // The event stream opened with it ends too.
    let deadline = SESSION_RECHECK * 3;
    let started = Instant::now();
    let ended = tokio::time::timeout(deadline, async {
        while let Some(chunk) = events.chunk().await.unwrap_or(None) {
            let _ = chunk;
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session by {:?}", started.elapsed());
    // Another session is untouched.
    assert_eq!(site.status("/api/devices", Some(&other)).await, StatusCode::OK);
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_the_token_or_from_another_origin_are_forbidden_and_change_nothing() {
    let site = start(|_| {}).await;
    let (cookie, csrf) = site.session().await;
    let forbidden = [
        site.logout(&cookie, None, &site.origin).await,
        site.logout(&cookie, Some("0".repeat(64).as_str()), &site.origin).await,
        site.logout(&cookie, Some(&csrf), "http://evil.example").await,
        site.logout(&cookie, Some(&csrf), "null").await,
    ];
    assert_eq!(forbidden, [StatusCode::FORBIDDEN; 4]);
    // A browser's cross-site request, and a request naming no origin at all.
    let cross_site = site
        .client
        .post(site.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let anonymous = site
        .client
        .post(site.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
    assert_eq!(site.status("/api/devices", Some(&cookie)).await, StatusCode::OK, "still logged in");

    // Login: without the double-submit cookie, with another token, from another origin.
    let (login_cookie, token) = site.login_token().await;
    let post = |origin: &str, cookie: Option<&str>, csrf: &str| {
        let mut request = site.client.post(site.url("/auth/login")).header("origin", origin);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.json(&json!({ "password": PASSWORD, "csrf": csrf })).send()
    };
    for response in [
        post(&site.origin, None, &token).await.unwrap(),
        post(&site.origin, Some(&login_cookie), &"f".repeat(64)).await.unwrap(),
        post(&site.origin, Some(&login_cookie), "").await.unwrap(),
        post("http://evil.example", Some(&login_cookie), &token).await.unwrap(),
    ] {
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(set_cookie(response.headers(), "__Host-ledtemp_session").is_none());
    }
    assert_eq!(site.metric("ledtemp_auth_csrf_rejections_total").await, 10);
    assert_eq!(site.metric("ledtemp_auth_failed_logins_total").await, 0, "never checked");
    // Only POST changes anything: a GET of the logout route is not found.
    let get = site.get("/auth/logout", Some(&cookie)).await.status();
    assert_eq!(get, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(site.status("/api/devices", Some(&cookie)).await, StatusCode::OK);
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused() {
    let site = start(|_| {}).await;
    let (login_cookie, token) = site.login_token().await;
    let big = json!({ "password": "x".repeat(MAX_REQUEST_BODY), "csrf": token });
    let response = site
        .client
        .post(site.url("/auth/login"))
        .header("origin", &site.origin)
        .header("cookie", &login_cookie)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Any route, whatever the method or the login: a declared length over the limit is
    // refused before the body is read (sent here without the body it announces).
    let (cookie, csrf) = site.session().await;
    let addr = site.server.http_addr();
    for (method, path) in [("POST", "/auth/logout"), ("GET", "/api/devices"), ("GET", "/healthz")] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {}\r\nCookie: {cookie}\r\n\
             X-CSRF-Token: {csrf}\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n",
            site.origin
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 413 "), "{method} {path}: {response}");
    }
    assert_eq!(site.status("/api/devices", Some(&cookie)).await, StatusCode::OK, "no logout");
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_reads_everything_and_a_wrong_one_nothing() {
    let site = start(|_| {}).await;
    for path in ["/api/devices", "/api/stats", "/metrics", "/api/events"] {
        let right = site.client.get(site.url(path)).bearer_auth(&site.token).send().await.unwrap();
        assert_eq!(right.status(), StatusCode::OK, "{path}");
        let (wrong, _) = new_api_token().unwrap();
        for authorization in
            [format!("Bearer {wrong}"), format!("Basic {}", site.token), "Bearer".into()]
        {
            let response = site
                .client
                .get(site.url(path))
                .header("authorization", authorization.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} {authorization}");
        }
    }
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_alone_turn_the_login_on_and_password_logins_then_fail() {
    let site = start(|auth| auth.password_hash = None).await;
    assert_eq!(site.status("/api/devices", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(site.login(PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    site.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_without_login_does_not_start_unless_explicitly_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = serve_config(dir.path(), 1);
    config.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let error = match Server::start(config.clone(), keys()).await {
        Ok(_) => panic!("started without login on 0.0.0.0"),
        Err(error) => error.to_string(),
    };
    for what in ["0.0.0.0:0", "password_hash_file", "hash-password", "--insecure-no-auth"] {
        assert!(error.contains(what), "{what}: {error}");
    }
    config.auth.insecure_no_auth = true;
    let server = Server::start(config, keys()).await.unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], server.http_addr().port()));
    let response = reqwest::get(format!("http://{local}/api/devices")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "open, as asked");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_login_everything_stays_open_but_posts_are_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(serve_config(dir.path(), 1), keys()).await.unwrap();
    let base = format!("http://{}", server.http_addr());
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for path in ["/", "/api/devices", "/metrics"] {
        let status = client.get(format!("{base}{path}")).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let session: Value =
        client.get(format!("{base}/auth/session")).send().await.unwrap().json().await.unwrap();
    assert_eq!(session, json!({ "auth": false, "csrf": null }));
    let login = client.get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER, "no login page without a login");
    let cross = client
        .post(format!("{base}/auth/logout"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    server.shutdown().await.unwrap();
}

#[test]
fn hash_password_and_new_token_print_what_the_config_takes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let auth = ledtemp_web::AuthArgs { password_hash: Some(hash), ..Default::default() };
    let serve = ledtemp_web::ServeArgs { auth, ..Default::default() };
    assert!(serve.resolve().unwrap().auth.password_hash.is_some());

    let mut short = Command::new(env!("CARGO_BIN_EXE_ledtemp-web"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    short.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let output = short.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("too short"));

    let output = Command::new(env!("CARGO_BIN_EXE_ledtemp-web")).arg("new-token").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token: ")).unwrap();
    let hash = text.lines().find_map(|l| l.strip_prefix("hash:  ")).unwrap();
    assert!(token.starts_with("ltk_"));
    let auth =
        ledtemp_web::AuthArgs { api_token_hashes: vec![hash.to_owned()], ..Default::default() };
    let serve = ledtemp_web::ServeArgs { auth, ..Default::default() };
    assert_eq!(serve.resolve().unwrap().auth.token_hashes.len(), 1);
}
