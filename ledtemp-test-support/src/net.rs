//! Ports of 127.0.0.1: every broker, proxy and server in a test listens on one of its own.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::WAIT;

/// A TCP port of 127.0.0.1 that was free a moment ago (the kernel chose it for a listener that
/// is closed again). Another process could take it before the caller binds it; on a test machine
/// that does not happen in practice.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether something accepts TCP connections on `127.0.0.1:port` now.
pub async fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`; panics after [`WAIT`].
pub async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !accepts(port).await {
        assert!(tokio::time::Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
