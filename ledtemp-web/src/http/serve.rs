//! The HTTP accept loop: axum's router on hyper's HTTP/1, with the two limits `axum::serve`
//! lacks. Without them an idle or slow-header connection is never closed, and about a thousand of
//! them use up a process's 1,024 file descriptors, after which nothing (not even `/healthz`)
//! answers.
//!
//! - **Header-read timeout** ([`HttpLimits::header_read_timeout`]): a connection that has not sent
//!   a request's complete header within it is closed. The clock runs whenever the connection waits
//!   for a request, so it is also the keep-alive idle timeout. A response that streams (the event
//!   stream) is not limited by it.
//! - **Connection limit** ([`HttpLimits::max_connections`]): a connection accepted beyond it is
//!   closed at once (the client sees a reset and may retry), so the server never holds more
//!   descriptors for HTTP than the limit. Connections already served keep their place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long a connection may take to send a request's header, or stay idle between requests.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP connections served at once by default: room for every event stream a household's
/// dashboards open, well below the common limit of 1,024 open files.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// After a failed `accept` (for example out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits on the HTTP side's connections (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request's complete header, and the idle timeout between requests.
    pub header_read_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` turns true; then stops accepting,
/// asks every connection to finish its request and close, and returns when they have (a stream
/// that never ends keeps it waiting: the caller bounds the wait). Each request carries the
/// client's address as [`ConnectInfo<SocketAddr>`].
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("accepting an HTTP connection failed: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    limit = limits.max_connections,
                    refused,
                    "HTTP connection limit reached: closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(
            router.clone().layer(axum::Extension(ConnectInfo::<SocketAddr>(client))),
        );
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%client, "HTTP connection ended: {error}");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
