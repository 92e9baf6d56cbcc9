//! Data product calls per (user, scenario, UTC day): the meter of `max_calls_per_day`
//! (`policy-model.md` §7), kept on the audit trail so that it survives restarts.
//!
//! A call counts when it is admitted to run (before anything of the product runs; its `call`
//! record follows, released or failed: a failure tells the caller as much as an output),
//! under one lock with the check, so concurrent calls cannot both take the last one. A batch
//! call counts once per value of its list. A call refused by the quota, or never run (EXPLAIN,
//! a ticket never redeemed), does not count. On start the counts are the day's `call` records.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::audit::{AuditError, AuditRecord, RecordKind};

/// Calls by (user, scenario, day `YYYY-MM-DD`).
#[derive(Debug, Default)]
pub struct CallLedger {
    counts: Mutex<HashMap<(String, String, String), u64>>,
}

/// The UTC day of `now`, `YYYY-MM-DD`.
pub fn day_of(now: SystemTime) -> String {
    let at: chrono::DateTime<chrono::Utc> = now.into();
    at.format("%Y-%m-%d").to_string()
}

impl CallLedger {
    /// The counts of the audit folder `dir`: every completed call on the trail.
    pub fn replay(dir: &Path) -> Result<Self, AuditError> {
        let ledger = Self::default();
        {
            let mut counts = ledger.counts.lock().expect("call ledger lock");
            for (_, path) in crate::audit::segments(dir)? {
                let file = std::fs::File::open(&path).map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                })?;
                for line in std::io::BufReader::new(file).lines() {
                    let Ok(line) = line else { break };
                    // Most records call no product: skip them before parsing.
                    if !line.contains("\"products\"") {
                        continue;
                    }
                    let Ok(r) = serde_json::from_str::<AuditRecord>(&line) else {
                        continue;
                    };
                    if r.kind != RecordKind::Call {
                        continue;
                    }
                    let (Some(s), Some(day)) = (r.scenario, r.time.get(..10)) else {
                        continue;
                    };
                    *counts.entry((r.user, s, day.to_string())).or_default() +=
                        r.calls.unwrap_or(1);
                }
            }
        }
        Ok(ledger)
    }

    /// Calls `user` made under `scenario` on the day of `now`.
    pub fn count(&self, user: &str, scenario: &str, now: SystemTime) -> u64 {
        self.counts
            .lock()
            .expect("call ledger lock")
            .get(&(user.to_string(), scenario.to_string(), day_of(now)))
            .copied()
            .unwrap_or(0)
    }

    /// Takes back `calls` counted at `now` whose release did not happen.
    pub fn give_back(&self, user: &str, scenario: &str, calls: u64, now: SystemTime) {
        let mut counts = self.counts.lock().expect("call ledger lock");
        if let Some(slot) = counts.get_mut(&(user.to_string(), scenario.to_string(), day_of(now))) {
            *slot = slot.saturating_sub(calls);
        }
    }

    /// Counts `calls` more for (user, scenario) today, or refuses, naming the limit, when
    /// they would pass `limit` (nothing is counted then).
    pub fn take(
        &self,
        user: &str,
        scenario: &str,
        calls: u64,
        limit: Option<u64>,
        now: SystemTime,
    ) -> Result<(), String> {
        let mut counts = self.counts.lock().expect("call ledger lock");
        let slot = counts
            .entry((user.to_string(), scenario.to_string(), day_of(now)))
            .or_default();
        if let Some(limit) = limit {
            if slot.saturating_add(calls) > limit {
                return Err(format!(
                    "user {user} has made {slot} data product call(s) under scenario {scenario} \
                     today (UTC); {calls} more would pass its max_calls_per_day = {limit}; \
                     calls resume at 00:00 UTC"
                ));
            }
        }
        *slot = slot.saturating_add(calls);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Decision};

    #[test]
    fn calls_are_counted_per_day_refused_past_the_limit_and_replayed() {
        let now = SystemTime::now();
        let ledger = CallLedger::default();
        ledger.take("alice", "s", 2, Some(3), now).unwrap();
        let err = ledger.take("alice", "s", 2, Some(3), now).unwrap_err();
        assert!(err.contains("max_calls_per_day = 3"), "{err}");
        ledger.take("alice", "s", 1, Some(3), now).unwrap();
        assert_eq!(ledger.count("alice", "s", now), 3);
        // Another user, scenario or day has its own count; no limit, no refusal.
        ledger.take("bob", "s", 3, Some(3), now).unwrap();
        ledger.take("alice", "t", 3, Some(3), now).unwrap();
        let tomorrow = now + std::time::Duration::from_secs(86_400);
        ledger.take("alice", "s", 3, Some(3), tomorrow).unwrap();
        ledger.take("alice", "s", 100, None, now).unwrap();

        // Replayed: call records only (one per released call).
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
        let record = |kind, decision, products: &[&str]| {
            let mut r = AuditRecord::new(kind, decision, "q", "alice", "SELECT 1");
            r.scenario = Some("s".into());
            r.products = products.iter().map(|p| p.to_string()).collect();
            r
        };
        for r in [
            record(
                RecordKind::Decision,
                Decision::Allowed,
                &["p@1(1)", "q@2(2)"],
            ),
            record(RecordKind::Call, Decision::Allowed, &["p@1(1)"]),
            record(RecordKind::Call, Decision::Allowed, &["q@2(2)"]),
            {
                // A batch call of 40 values counts 40.
                let mut r = record(RecordKind::Call, Decision::Allowed, &["b@3([1, 2])"]);
                r.calls = Some(40);
                r
            },
            record(
                RecordKind::Completion,
                Decision::Completed,
                &["p@1(1)", "q@2(2)"],
            ),
        ] {
            log.append(r).unwrap();
        }
        let replayed = CallLedger::replay(dir.path()).unwrap();
        assert_eq!(replayed.count("alice", "s", SystemTime::now()), 42);
    }
}
