//! `GET /api/devices/{id}/temperature.csv` (`at,sensor,celsius`, every raw reading in the
//! range) and `GET /api/devices/{id}/leds.csv` (`at,led,on`, every stored LED change), as
//! downloads.
//!
//! Streamed: a blocking task reads the range a page at a time
//! ([`HistoryStore::export_temperatures`](crate::HistoryStore::export_temperatures)) and hands
//! each page, as CSV text, to the response body through a channel of [`CHUNKS_IN_FLIGHT`]
//! chunks. The server holds at most those few pages whatever the range (30 days of 1 Hz is 2.6
//! million lines per sensor); a slow client slows the reader down, and a client that goes away
//! stops it. A database error after the first bytes ends the body early (the client sees a cut
//! chunked transfer, never a short file that looks whole).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;

use super::api::{HistoryParams, range_query};
use super::{AppError, AppState};
use crate::Error;
use crate::history::{
    ExportSink, LED_CSV_HEADER, RangeQuery, TEMPERATURE_CSV_HEADER, led_csv_line,
    temperature_csv_line,
};
use crate::model::UnixMillis;

/// How many CSV chunks (a page of rows each) may wait for the client.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// The temperature export of a device's range (of one sensor with `sensor=`).
pub(crate) async fn temperature_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, AppError> {
    let query = range_query(&state, &id, params)?;
    let history = Arc::clone(&state.history);
    let name = file_name(&query, "temperature");
    let body = csv_body(TEMPERATURE_CSV_HEADER, temperature_csv_line, move |sink| {
        history.export_temperatures(&query, sink)
    });
    Ok(download(name, body))
}

/// The LED changes export of a device's range.
pub(crate) async fn leds_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, AppError> {
    let query = range_query(&state, &id, params)?;
    let history = Arc::clone(&state.history);
    let name = file_name(&query, "leds");
    let body =
        csv_body(LED_CSV_HEADER, led_csv_line, move |sink| history.export_leds(&query, sink));
    Ok(download(name, body))
}

/// `<device>-<what>-<since>-<until>.csv`, the times as `20261129T154500Z` (no characters a file
/// system or a header would object to: device ids are letters, digits, `-` and `_`).
fn file_name(query: &RangeQuery, what: &str) -> String {
    let stamp = |at: UnixMillis| {
        jiff::Timestamp::from_millisecond(at.0)
            .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_default()
    };
    format!("{}-{what}-{}-{}.csv", query.device.as_str(), stamp(query.since), stamp(query.until))
}

fn download(name: String, body: Body) -> Response {
    let disposition = format!("attachment; filename=\"{name}\"");
    (
        [(CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (CONTENT_DISPOSITION, disposition)],
        body,
    )
        .into_response()
}

/// A body that is `header` and then one `line` per row `export` hands its sink, page by page.
fn csv_body<T: Send + 'static>(
    header: &'static str,
    line: fn(&T, &mut String),
    export: impl FnOnce(&mut ExportSink<'_, T>) -> Result<(), Error> + Send + 'static,
) -> Body {
    let (chunks, body) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        if chunks.blocking_send(Ok(Bytes::from_static(header.as_bytes()))).is_err() {
            return;
        }
        let mut gone = false;
        let mut sink = |page: Vec<T>| {
            let mut text = String::with_capacity(page.len() * 48);
            for row in &page {
                line(row, &mut text);
            }
            chunks.blocking_send(Ok(Bytes::from(text))).map_err(|_| {
                gone = true;
                Error::TaskFailed("the client went away".into())
            })
        };
        let exported = export(&mut sink);
        if let Err(error) = exported
            && !gone
        {
            tracing::error!("a CSV export failed: {error}");
            let cut = std::io::Error::other("the export failed");
            let _ = chunks.blocking_send(Err(cut));
        }
    });
    Body::from_stream(ReceiverStream::new(body))
}
