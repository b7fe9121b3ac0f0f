//! `ledtemp-web` will hold the reference server: an MQTT subscriber that opens and verifies
//! frames, the store, the dashboard and the alerts.
//!
//! It is empty today and exports nothing; it is a workspace member so that the layout is fixed
//! before its code lands. Do not depend on it yet.
#![forbid(unsafe_code)]
