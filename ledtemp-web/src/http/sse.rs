//! `GET /api/events`: verified updates as Server-Sent Events, with keep-alive.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::AppState;
use crate::state::LiveState;

/// Counts an open stream; the count drops when the client goes away and axum drops the stream.
struct ClientGuard(Arc<LiveState>);

impl ClientGuard {
    fn new(live: Arc<LiveState>) -> ClientGuard {
        live.stats.sse_client_opened();
        ClientGuard(live)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.stats.sse_client_closed();
    }
}

pub(crate) async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let guard = ClientGuard::new(Arc::clone(&state.live));
    let receiver = state.live.subscribe();
    // A client that falls more than the channel's capacity behind skips what it missed (and
    // reloads through the API if it cares); it is never disconnected for it.
    let stream = BroadcastStream::new(receiver).filter_map(move |item| {
        let _alive = &guard;
        item.ok().map(|event| Ok(Event::default().event(event.name()).data(event.to_json())))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
