//! A real broker per test: mosquitto (on `PATH`, or `/usr/sbin/mosquitto`) started on a free port
//! of 127.0.0.1 with a config file of its own; without mosquitto, rumqttd in-process behind a TCP
//! proxy that can be cut. `LEDTEMP_REQUIRE_MOSQUITTO=1` turns a missing mosquitto into a failure
//! (CI sets it); `LEDTEMP_TEST_BROKER=rumqttd` forces the fallback. The same approach as
//! `ledtemp-core/tests/support/broker.rs`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every wait in these tests ends after this at the latest.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn mosquitto_binary() -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("mosquitto")).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].map(PathBuf::from))
        .find(|path| path.is_file())
}

/// Which broker a test got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// A mosquitto process of this test's own.
    Mosquitto,
    /// rumqttd in this process, behind a TCP proxy that can be cut.
    Rumqttd,
}

/// A broker on `127.0.0.1:port` that a test can stop and start again on the same port.
pub struct TestBroker {
    pub kind: BrokerKind,
    pub port: u16,
    mosquitto: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
    proxy: Option<Proxy>,
}

impl TestBroker {
    /// Starts mosquitto, or rumqttd when mosquitto is missing (see the module docs).
    pub async fn start() -> TestBroker {
        let forced_fallback = std::env::var("LEDTEMP_TEST_BROKER").as_deref() == Ok("rumqttd");
        let required = std::env::var("LEDTEMP_REQUIRE_MOSQUITTO").as_deref() == Ok("1");
        let binary = mosquitto_binary();
        match binary {
            Some(binary) if !forced_fallback => TestBroker::start_mosquitto(binary).await,
            _ => {
                assert!(
                    !required,
                    "LEDTEMP_REQUIRE_MOSQUITTO=1 but mosquitto is not installed \
                     (apt-get install mosquitto)"
                );
                TestBroker::start_rumqttd().await
            }
        }
    }

    async fn start_mosquitto(binary: PathBuf) -> TestBroker {
        let port = free_port();
        let config = std::env::temp_dir()
            .join(format!("ledtemp-mosquitto-{}-{port}.conf", std::process::id()));
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut broker = TestBroker {
            kind: BrokerKind::Mosquitto,
            port,
            mosquitto: Some((binary, config)),
            child: None,
            proxy: None,
        };
        broker.resume().await;
        broker
    }

    async fn start_rumqttd() -> TestBroker {
        let inner = free_port();
        let listen: SocketAddr = ([127, 0, 0, 1], inner).into();
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: 4_096,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = rumqttd::ServerSettings {
            name: "v5".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        let config = rumqttd::Config {
            router: rumqttd::RouterConfig {
                max_connections: 100,
                max_outgoing_packet_count: 200,
                max_segment_size: 1 << 20,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v5: Some(HashMap::from([("v5".to_owned(), server)])),
            ..Default::default()
        };
        // rumqttd has no way to stop a running broker: it runs on its own thread until the test
        // process exits, and `stop` cuts the proxy in front of it instead.
        std::thread::spawn(move || {
            if let Err(error) = rumqttd::Broker::new(config).start() {
                eprintln!("rumqttd stopped: {error:?}");
            }
        });
        wait_for_port(inner).await;
        let mut proxy = Proxy { port: free_port(), target: inner, tasks: Default::default() };
        proxy.start();
        let port = proxy.port;
        let broker = TestBroker {
            kind: BrokerKind::Rumqttd,
            port,
            mosquitto: None,
            child: None,
            proxy: Some(proxy),
        };
        wait_for_port(port).await;
        broker
    }

    /// Stops the broker abruptly: mosquitto is killed; rumqttd's proxy closes its port and cuts
    /// every connection.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.stop();
        }
    }

    /// Starts the broker again on the same port and waits until it accepts connections.
    pub async fn resume(&mut self) {
        if let Some((binary, config)) = &self.mosquitto {
            let child = Command::new(binary)
                .arg("-c")
                .arg(config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.child = Some(child);
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.start();
        }
        wait_for_port(self.port).await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
        if let Some((_, config)) = &self.mosquitto {
            let _ = std::fs::remove_file(config);
        }
    }
}

async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "broker did not open port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy from `port` to `target` that can be cut and restored.
struct Proxy {
    port: u16,
    target: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn start(&mut self) {
        let listener = StdTcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let (target, tasks) = (self.target, Arc::clone(&self.tasks));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(link);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn stop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
