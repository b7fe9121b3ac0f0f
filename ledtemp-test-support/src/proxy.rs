//! A TCP proxy on 127.0.0.1: a link a test can cut and restore, and record.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::net::wait_for_port;

/// A TCP proxy from a port of its own to `127.0.0.1:target`, one upstream connection per client.
///
/// [`close`](Self::close) cuts the link (the port refuses connections and every open connection
/// is dropped, as when a network goes down), [`open`](Self::open) restores it on the same port.
/// A proxy made with [`recording`](Self::recording) keeps every byte it forwards: what an
/// eavesdropper on the link sees. Closed when dropped. Lives on the tokio runtime that made it.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    target: u16,
    recorded: Option<Arc<Mutex<Vec<u8>>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:target`, open.
    pub async fn start(target: u16) -> Proxy {
        Proxy::new(target, None).await
    }

    /// A proxy to `127.0.0.1:target` that records, open.
    pub async fn recording(target: u16) -> Proxy {
        Proxy::new(target, Some(Arc::default())).await
    }

    async fn new(target: u16, recorded: Option<Arc<Mutex<Vec<u8>>>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy { port, target, recorded, tasks: Arc::default() };
        proxy.serve(listener);
        proxy
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything forwarded so far, both directions interleaved; empty unless it records.
    pub fn recorded(&self) -> Vec<u8> {
        self.recorded.as_ref().map(|bytes| bytes.lock().unwrap().clone()).unwrap_or_default()
    }

    /// Cuts the link: refuses new connections and drops the open ones.
    pub fn close(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Restores the link on the same port (after [`close`](Self::close)), and waits until it
    /// accepts connections.
    pub async fn open(&mut self) {
        self.close();
        // A closed listener is dropped when the runtime next runs its aborted task, so binding
        // the port again may need a few tries.
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot listen on port {} again: {error}",
                        self.port
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        };
        self.serve(listener);
        wait_for_port(self.port).await;
    }

    fn serve(&self, listener: TcpListener) {
        let (target, recorded, tasks) =
            (self.target, self.recorded.clone(), Arc::clone(&self.tasks));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let recorded = recorded.clone();
                let link = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    // A proxy in the path adds no delay of its own (ledtemp-tokio's connector sets TCP_NODELAY too).
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, recorded.clone()),
                        pump(server_read, client_write, recorded),
                    );
                });
                tasks.lock().unwrap().push(link);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close();
    }
}

/// Copies `from` to `to` until either side closes, then closes `to` for writing.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    recorded: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(recorded) = &recorded {
            recorded.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    }
    let _ = to.shutdown().await;
}

/// Whether `haystack` contains `needle` (a secret in recorded bytes, say).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
