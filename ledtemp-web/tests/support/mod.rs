//! The server's integration tests share the workspace's test support: its `server` module (keys,
//! sealed frames, pipelines, servers, HTTP and MQTT clients), its brokers, and its databases
//! (a test body run on SQLite and on PostgreSQL: [`Backend`], [`on_both_backends!`]).
#![allow(unused_imports, reason = "each test file uses part of it")]

/// A broker of the test's own, and a subscriber that checks what reaches it.
pub mod broker {
    pub use ledtemp_test_support::broker::*;
    pub use ledtemp_test_support::mqtt::*;
}

pub use ledtemp_test_support::WAIT;
pub use ledtemp_test_support::on_both_backends;
pub use ledtemp_test_support::postgres::{Backend, BackendDatabase, TestDatabase};
pub use ledtemp_test_support::server::*;
