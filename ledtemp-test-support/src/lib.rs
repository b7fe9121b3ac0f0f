//! `ledtemp-test-support`: the set-up that ledtemp's tests and benches share, in one place.
//!
//! A dev-dependency only (`publish = false`): the integration tests of every crate and the benches
//! use it; nothing ships with it. Each module is one concern:
//!
//! - [`net`]: a free port, and waiting until one accepts connections.
//! - [`mosquitto`]: finding Mosquitto's programs, and [`Mosquitto`](mosquitto::Mosquitto), a
//!   broker process of a test's own: the one way every Mosquitto here is started.
//! - [`broker`]: [`TestBroker`](broker::TestBroker), the broker of a plain test (Mosquitto, or
//!   rumqttd in-process when Mosquitto is not installed), which a test can stop and resume.
//! - [`secure_broker`]: [`SecureBroker`](secure_broker::SecureBroker), Mosquitto locked down as
//!   `docs/broker.md` describes (TLS with rcgen certificates, password accounts, an ACL).
//! - [`proxy`]: a TCP [`Proxy`](proxy::Proxy) a test can cut and restore, and that can record
//!   what an eavesdropper on the link sees.
//! - [`mqtt`]: a [`Subscriber`](mqtt::Subscriber) on every ledtemp topic, and a
//!   [`FrameChecker`](mqtt::FrameChecker) that opens frames as the server does.
//! - [`keys`]: [`TempKeyring`](keys::TempKeyring), fresh keys in a keyring file of their own.
//! - [`node`]: nodes run with `ledtemp_tokio::run_node`: a [`SimulatedNode`](node::SimulatedNode),
//!   a node on a thread of its own ([`NodeThread`](node::NodeThread)), a node run until a test is
//!   done ([`run_node_until`](node::run_node_until)).
//!
//! - [`server`]: the server's side: the test keyring, sealed frames, a pipeline on a database of
//!   its own, a server's settings and start, a raw MQTT publisher, an HTTP and event-stream client.
//! - [`postgres`]: a PostgreSQL database of a test's own
//!   ([`TestDatabase`](postgres::TestDatabase)), and [`Backend`](postgres::Backend) with
//!   [`on_both_backends!`], one test body run on SQLite and on PostgreSQL.
//! - [`delivery`]: counting frames end to end: what the nodes published
//!   ([`RecordingCodec`](delivery::RecordingCodec)), what the broker routed
//!   ([`Observer`](delivery::Observer)), and whether a store holds each exactly once
//!   ([`SequenceTally`](delivery::SequenceTally)); nodes that stop cleanly
//!   ([`Fleet`](delivery::Fleet)), and the server as a process
//!   ([`ServerProcess`](delivery::ServerProcess)).
//! - [`twilio`]: [`TwilioStandIn`](twilio::TwilioStandIn), a local stand-in for Twilio's SMS API
//!   that records what the alert notifier sends.
//!
//! The clock, delay and TCP connector a node needs are `ledtemp-tokio`'s, never copies.
//!
//! Set-up failures panic, which fails the test with the reason; every wait ends after [`WAIT`].
//!
//! # Environment
//!
//! - `LEDTEMP_REQUIRE_MOSQUITTO=1` (CI sets it): a missing Mosquitto fails the test, instead of
//!   [`TestBroker`](broker::TestBroker) falling back to rumqttd or a Mosquitto-only test skipping.
//! - `LEDTEMP_TEST_BROKER=rumqttd`: [`TestBroker`](broker::TestBroker) uses rumqttd even where
//!   Mosquitto is installed, to try the fallback.
//! - `LEDTEMP_REQUIRE_POSTGRES=1` (CI sets it): a PostgreSQL that cannot be reached fails the
//!   test, instead of its PostgreSQL half skipping.
//! - `LEDTEMP_TEST_POSTGRES_URL`: the PostgreSQL server test databases are made on (by default
//!   `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`).
//!
//! # Example
//!
//! A simulated node's first frame, read back through a broker of the test's own:
//!
//! ```
//! use ledtemp_core::{Algorithm, Message};
//! use ledtemp_test_support::WAIT;
//! use ledtemp_test_support::broker::TestBroker;
//! use ledtemp_test_support::keys::TempKeyring;
//! use ledtemp_test_support::mqtt::{FrameChecker, Subscriber};
//! use ledtemp_test_support::node::SimulatedNode;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let broker = TestBroker::start().await;
//! let mut subscriber = Subscriber::start(broker.port).await;
//! let keys = TempKeyring::generate(&[("sim-1", Algorithm::Aes128Gcm)]);
//! let mut checker = FrameChecker::new(keys.codec("sim-1"));
//!
//! let node = SimulatedNode::new("sim-1", keys.codec("sim-1")).run(broker.address("sim-1"));
//! let received = tokio::select! {
//!     stopped = node => match stopped {},
//!     received = subscriber.next(WAIT) => received.expect("a frame"),
//! };
//! let first = checker.check(&received).expect("not a replay");
//! assert_eq!(first.topic, "ledtemp/sim-1/status");
//! assert!(matches!(first.message, Message::Status(_)));
//! # }
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a set-up that fails panics, and so fails the test with the reason"
)]

use std::time::Duration;

pub mod broker;
pub mod delivery;
pub mod keys;
pub mod mosquitto;
pub mod mqtt;
pub mod net;
pub mod node;
pub mod postgres;
pub mod proxy;
pub mod secure_broker;
pub mod server;
pub mod twilio;

/// Every wait in the helpers (a port opening, a subscription, a frame) ends after this at the
/// latest, and tests bound their own waits with it.
pub const WAIT: Duration = Duration::from_secs(15);

/// A test that cannot run here: panics when `require_env` is set to `1` (as `.ci/run` sets it,
/// so a missing tool fails there), and otherwise says on the process's standard error that `what`
/// is skipped and why. The line is written to the stream itself, not through `eprintln!`, which
/// the test harness captures and hides for a passing test: the skip shows in `cargo test`'s
/// output next to the test's `ok`.
pub fn skip_unless_required(require_env: &str, what: &str, why: &str) {
    use std::io::Write;
    assert!(std::env::var(require_env).as_deref() != Ok("1"), "{require_env}=1 but {why}");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {what}: {why}");
}
