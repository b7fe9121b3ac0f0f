//! The rate-limited log of rejected frames.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::{Error, RejectReason};

/// Logs the first rejection per (device, reason) and then one summary per minute, so that a flood
/// of bad frames cannot flood the log. Device names from unparsable topics count as `-`.
#[derive(Debug)]
pub(crate) struct RejectLog {
    logged: HashSet<(String, RejectReason)>,
    suppressed: BTreeMap<RejectReason, u64>,
    last_summary: Instant,
}

impl RejectLog {
    /// Most (device, reason) pairs remembered; past it every rejection goes into the summary (an
    /// attacker can invent any number of device names).
    const MAX_REMEMBERED: usize = 1024;
    const SUMMARY_PERIOD: Duration = Duration::from_secs(60);

    pub(crate) fn new() -> RejectLog {
        RejectLog {
            logged: HashSet::new(),
            suppressed: BTreeMap::new(),
            last_summary: Instant::now(),
        }
    }

    pub(crate) fn record(&mut self, device: Option<&str>, error: &Error) {
        let Some(reason) = error.reject_reason() else { return };
        let key = (device.unwrap_or("-").to_owned(), reason);
        if self.logged.len() < Self::MAX_REMEMBERED && !self.logged.contains(&key) {
            tracing::warn!(
                device = %key.0,
                %reason,
                "{error}; further rejections of this kind are summarised"
            );
            self.logged.insert(key);
        } else {
            *self.suppressed.entry(reason).or_default() += 1;
        }
        self.maybe_summarise();
    }

    pub(crate) fn maybe_summarise(&mut self) {
        if self.last_summary.elapsed() < Self::SUMMARY_PERIOD {
            return;
        }
        self.last_summary = Instant::now();
        if self.suppressed.is_empty() {
            return;
        }
        let summary: Vec<String> =
            self.suppressed.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        tracing::warn!(
            "rejected frames in the last minute (not logged one by one): {}",
            summary.join(" ")
        );
        self.suppressed.clear();
    }
}
