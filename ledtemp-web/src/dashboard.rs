//! The dashboard: one HTML page, its script and style sheet, and the vendored chart library
//! (uPlot 1.6.32, MIT), all embedded in the binary so the server needs no files and no CDN.
//!
//! The page builds every device, LED and sensor name into the DOM with `textContent`, never as
//! markup, and has no inline script or style, so it works under the strict
//! `Content-Security-Policy` that [`crate::app`] puts on every response (with `nosniff` and the
//! other security headers; these routes add only caching headers).

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Revalidate every time (cheap: an `ETag` answers 304). For files whose name does not change
/// when their content does, so a new server version is picked up at once.
const REVALIDATE: &str = "no-cache";
/// For files whose name carries their version: never changes under that name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One embedded file.
struct Asset {
    /// The last path segment under `/assets/` (the page itself is served at `/`).
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
    /// A strong validator computed at compile time from the bytes.
    etag: u64,
}

impl Asset {
    const fn new(
        name: &'static str,
        bytes: &'static [u8],
        content_type: &'static str,
        cache_control: &'static str,
    ) -> Self {
        Asset { name, bytes, content_type, cache_control, etag: fnv1a(bytes) }
    }

    fn response(&self, request_headers: &HeaderMap) -> Response {
        let etag = format!("\"{:016x}\"", self.etag);
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(self.cache_control));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(ETAG, value);
        }
        let not_modified = request_headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == etag
            });
        if not_modified {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        (headers, self.bytes).into_response()
    }
}

/// FNV-1a, 64 bits: good enough to tell two versions of a file apart, and `const`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

const INDEX: Asset = Asset::new(
    "index.html",
    include_bytes!("../assets/index.html"),
    "text/html; charset=utf-8",
    REVALIDATE,
);

const LOGIN: Asset = Asset::new(
    "login.html",
    include_bytes!("../assets/login.html"),
    "text/html; charset=utf-8",
    REVALIDATE,
);

/// The login page (served at `/login` by the access control, which decides when to show it).
pub(crate) fn login_page(request_headers: &HeaderMap) -> Response {
    LOGIN.response(request_headers)
}

/// Everything under `/assets/`. The vendored names carry the uPlot version; bump them together
/// with the files in `assets/vendor/uplot/` and the references in `index.html`.
const ASSETS: &[Asset] = &[
    Asset::new(
        "dashboard.js",
        include_bytes!("../assets/dashboard.js"),
        "text/javascript; charset=utf-8",
        REVALIDATE,
    ),
    Asset::new(
        "dashboard.css",
        include_bytes!("../assets/dashboard.css"),
        "text/css; charset=utf-8",
        REVALIDATE,
    ),
    Asset::new("favicon.svg", include_bytes!("../assets/favicon.svg"), "image/svg+xml", REVALIDATE),
    Asset::new(
        "login.js",
        include_bytes!("../assets/login.js"),
        "text/javascript; charset=utf-8",
        REVALIDATE,
    ),
    Asset::new(
        "login.css",
        include_bytes!("../assets/login.css"),
        "text/css; charset=utf-8",
        REVALIDATE,
    ),
    Asset::new(
        "uplot-1.6.32.min.js",
        include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
        "text/javascript; charset=utf-8",
        IMMUTABLE,
    ),
    Asset::new(
        "uplot-1.6.32.min.css",
        include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
        "text/css; charset=utf-8",
        IMMUTABLE,
    ),
    Asset::new(
        "uplot-LICENSE.txt",
        include_bytes!("../assets/vendor/uplot/LICENSE"),
        "text/plain; charset=utf-8",
        REVALIDATE,
    ),
];

/// The dashboard page, `GET /`. Merge into the application's router behind the login; the route
/// needs no state.
pub fn page_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index))
}

/// The dashboard's static files, `GET /assets/{file}` (its script, style sheet and the vendored
/// chart library, with its licence at `/assets/uplot-LICENSE.txt`), public. Any other file
/// under `/assets/` is a 404.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/assets/{file}", get(asset))
}

async fn index(request_headers: HeaderMap) -> Response {
    INDEX.response(&request_headers)
}

async fn asset(Path(file): Path<String>, request_headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => asset.response(&request_headers),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_with(uri: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let routes = page_routes::<()>().merge(asset_routes());
        let response = routes.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, headers, body)
    }

    async fn get(uri: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        get_with(uri, &[]).await
    }

    fn header(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> &str {
        headers.get(name).unwrap().to_str().unwrap()
    }

    fn page() -> &'static str {
        include_str!("../assets/index.html")
    }

    /// Every `src="..."` and `href="..."` value in the page.
    fn references(html: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in html.match_indices(attribute) {
                let rest = &html[at + attribute.len()..];
                found.push(&rest[..rest.find('"').unwrap()]);
            }
        }
        found
    }

    #[tokio::test]
    async fn the_page_is_html_revalidated_on_each_load() {
        let (status, headers, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&headers, CACHE_CONTROL), "no-cache");
        assert!(headers.contains_key(ETAG));
        assert_eq!(body, page().as_bytes());
    }

    #[tokio::test]
    async fn each_asset_has_its_content_type_and_cache_policy() {
        let cases = [
            ("dashboard.js", "text/javascript; charset=utf-8", "no-cache"),
            ("dashboard.css", "text/css; charset=utf-8", "no-cache"),
            ("favicon.svg", "image/svg+xml", "no-cache"),
            ("login.js", "text/javascript; charset=utf-8", "no-cache"),
            ("login.css", "text/css; charset=utf-8", "no-cache"),
            ("uplot-1.6.32.min.js", "text/javascript; charset=utf-8", IMMUTABLE),
            ("uplot-1.6.32.min.css", "text/css; charset=utf-8", IMMUTABLE),
            ("uplot-LICENSE.txt", "text/plain; charset=utf-8", "no-cache"),
        ];
        assert_eq!(cases.len(), ASSETS.len());
        for (name, content_type, cache) in cases {
            let (status, headers, body) = get(&format!("/assets/{name}")).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert_eq!(header(&headers, CONTENT_TYPE), content_type, "{name}");
            assert_eq!(header(&headers, CACHE_CONTROL), cache, "{name}");
            assert!(!body.is_empty(), "{name}");
        }
    }

    #[tokio::test]
    async fn the_vendored_library_ships_with_its_licence() {
        let (_, _, licence) = get("/assets/uplot-LICENSE.txt").await;
        let licence = String::from_utf8(licence).unwrap();
        assert!(licence.contains("The MIT License"), "{licence}");
        let (_, _, library) = get("/assets/uplot-1.6.32.min.js").await;
        assert!(String::from_utf8(library).unwrap().contains("(v1.6.32)"));
    }

    #[tokio::test]
    async fn a_matching_etag_answers_not_modified() {
        let (_, headers, _) = get("/assets/dashboard.js").await;
        let etag = header(&headers, ETAG).to_owned();
        let (status, headers, body) =
            get_with("/assets/dashboard.js", &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(header(&headers, ETAG), etag);
        assert!(body.is_empty());
        let (status, _, _) = get_with("/assets/dashboard.js", &[("if-none-match", "\"0\"")]).await;
        assert_eq!(status, StatusCode::OK);
        let (_, page_headers, _) = get("/").await;
        assert_ne!(header(&page_headers, ETAG), etag);
    }

    #[tokio::test]
    async fn anything_else_is_not_found() {
        for uri in [
            "/assets/nope.js",
            "/assets/",
            "/assets/vendor/uplot/LICENSE",
            "/assets/..%2Fsrc%2Flib.rs",
            "/index.html",
            "/dashboard.js",
        ] {
            let (status, _, _) = get(uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        }
    }

    #[tokio::test]
    async fn the_page_references_only_served_assets() {
        let references = references(page());
        assert!(references.len() >= 5, "{references:?}");
        for reference in references {
            assert!(reference.starts_with("/assets/"), "{reference}");
            let (status, _, _) = get(reference).await;
            assert_eq!(status, StatusCode::OK, "{reference}");
        }
    }

    fn login() -> &'static str {
        include_str!("../assets/login.html")
    }

    #[test]
    fn the_pages_have_no_inline_script_or_style() {
        for (html, expected_scripts) in [(page(), 2), (login(), 1)] {
            no_inline_script_or_style(&html.to_ascii_lowercase(), expected_scripts);
        }
    }

    fn no_inline_script_or_style(html: &str, expected_scripts: usize) {
        assert!(!html.contains("style="), "style attribute");
        assert!(!html.contains("<style"), "style element");
        assert!(!html.contains("javascript:"));
        // No event-handler attributes (onclick=, onload=, ...).
        for (at, _) in html.match_indices(" on") {
            let word: String =
                html[at + 1..].chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            assert!(!html[at + 1 + word.len()..].starts_with('='), "handler attribute {word}");
        }
        let mut scripts = 0;
        for (at, _) in html.match_indices("<script") {
            scripts += 1;
            let tag_end = at + html[at..].find('>').unwrap();
            assert!(html[at..tag_end].contains(" src=\"/assets/"), "script without src");
            assert!(html[tag_end + 1..].starts_with("</script>"), "inline script code");
        }
        assert_eq!(scripts, expected_scripts);
    }

    #[tokio::test]
    async fn the_login_page_references_only_served_assets() {
        let response = login_page(&HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(response.headers(), CONTENT_TYPE), "text/html; charset=utf-8");
        for reference in references(login()) {
            assert!(reference.starts_with("/assets/"), "{reference}");
            assert_eq!(get(reference).await.0, StatusCode::OK, "{reference}");
        }
    }

    #[test]
    fn the_script_never_writes_markup() {
        let login = include_str!("../assets/login.js");
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!login.contains(sink), "login.js uses {sink}");
        }
        let script = include_str!("../assets/dashboard.js");
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!script.contains(sink), "dashboard.js uses {sink}");
        }
        assert!(script.contains("textContent"));
        // Exactly one event stream for the whole page.
        assert_eq!(script.matches("new EventSource(").count(), 1);
    }
}
