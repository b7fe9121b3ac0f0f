//! `GET /api/events`: verified updates as Server-Sent Events, with keep-alive. A stream opened
//! with a session ends within [`SESSION_RECHECK`](super::SESSION_RECHECK) of that session's
//! logout or expiry.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};
use tokio_stream::{Stream, StreamExt};

use super::AppState;
use super::auth::{AccessControl, SESSION_RECHECK, SessionContext};
use crate::live::{LiveEvent, LiveState};

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

/// What the stream carries before it becomes SSE: an event, or a moment to check the session.
enum Item {
    Live(LiveEvent),
    Recheck,
}

pub(crate) async fn events(
    State(state): State<AppState>,
    session: Option<Extension<SessionContext>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let guard = ClientGuard::new(Arc::clone(&state.live));
    let receiver = state.live.subscribe();
    // A client that falls more than the channel's capacity behind skips what it missed (and
    // reloads through the API if it cares); it is never disconnected for it.
    let live = BroadcastStream::new(receiver).filter_map(|item| item.ok().map(Item::Live));
    let mut interval = tokio::time::interval(SESSION_RECHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rechecks = IntervalStream::new(interval).map(|_| Item::Recheck);
    let access: Arc<AccessControl> = Arc::clone(&state.access);
    let session = session.map(|Extension(session)| session.key);
    let stream = live
        .merge(rechecks)
        .take_while(move |_| session.is_none_or(|key| access.session_open(&key)))
        .filter_map(move |item| {
            let _alive = &guard;
            match item {
                Item::Live(event) => {
                    Some(Ok(Event::default().event(event.name()).data(event.to_json())))
                }
                Item::Recheck => None,
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
