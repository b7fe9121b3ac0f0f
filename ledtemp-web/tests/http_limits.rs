//! The HTTP side under idle and slow connections: more than a process's common limit of 1,024
//! open files are opened and left idle, and some send their header a byte at a time; the server
//! closes what is over its connection limit at once and the rest at its header-read timeout, and
//! `/healthz` keeps answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use ledtemp_web::{HttpLimits, KeyTable, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections opened: more than 1,024 descriptors' worth.
const IDLE: usize = 1_200;
/// Connections that send a request header one byte at a time, never finishing it.
const SLOW: usize = 20;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the server closed `stream` within `limit` (a read returns end of file or an error).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response (the server's 408 for a header that never finished) comes first.
            Ok(Ok(_)) => {}
        }
    }
}

/// The status of `GET /healthz`, or `None` when the connection was closed without an answer.
async fn healthz(addr: std::net::SocketAddr) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_healthz_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    // No broker listens there: the server keeps retrying, which does not matter here.
    let mut config = support::serve_config(dir.path(), 9);
    config.http = HttpLimits { header_read_timeout: HEADER_READ_TIMEOUT, ..HttpLimits::default() };
    let limit = config.http.max_connections;
    let server = Server::start(config, KeyTable::new()).await.unwrap();
    let addr = server.http_addr();

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            for stream in &mut slow {
                let _ = stream.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });

    // Over the limit: closed at once. The rest: closed at the header-read timeout.
    let mut closed = 0;
    for stream in &mut idle {
        if closed_within(stream, HEADER_READ_TIMEOUT * 3).await {
            closed += 1;
        }
    }
    assert_eq!(closed, IDLE, "idle connections left open");
    // Meanwhile: the probe answers within the timeout, retrying while the slots are full.
    let deadline = Instant::now() + HEADER_READ_TIMEOUT * 3;
    while healthz(addr).await.is_none() {
        assert!(Instant::now() < deadline, "/healthz did not answer during the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut slow = trickle.await.unwrap();
    for stream in &mut slow {
        assert!(closed_within(stream, Duration::from_millis(100)).await, "a slow header was kept");
    }

    // After: the probe answers (503: no broker listens here, which is what it reports).
    assert_eq!(healthz(addr).await, Some(503));
    assert!(limit < IDLE);
    server.shutdown().await.unwrap();
}
