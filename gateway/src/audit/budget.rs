//! The privacy budget (`policy-model.md` §5): the ε each (user, scenario) has spent on
//! differentially private releases, kept on the audit trail so that it survives restarts.
//!
//! A spend is a `privacy` record, fsynced before the release runs; on start the ledger is the
//! sum of those records. Spending and checking happen under one lock, so concurrent queries
//! cannot both take the last of a budget.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Mutex;

use policy::Epsilon;

use crate::audit::{AuditError, AuditLog, AuditRecord, Decision, RecordKind};
use crate::GatewayError;

/// Spent ε by (user, scenario).
#[derive(Debug, Default)]
pub struct PrivacyLedger {
    spent: Mutex<HashMap<(String, String), Epsilon>>,
}

impl PrivacyLedger {
    /// The ledger of the audit folder `dir`: every spend recorded there.
    pub fn replay(dir: &Path) -> Result<Self, AuditError> {
        let mut spent: HashMap<(String, String), Epsilon> = HashMap::new();
        for (_, path) in crate::audit::segments(dir)? {
            let file = std::fs::File::open(&path).map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?;
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                let Ok(r) = serde_json::from_str::<AuditRecord>(&line) else {
                    continue;
                };
                if r.kind != RecordKind::Privacy {
                    continue;
                }
                let (Some(s), Some(e)) = (r.scenario, r.epsilon) else {
                    continue;
                };
                let e = Epsilon::parse_amount(&e).map_err(|why| AuditError::Broken {
                    location: path.display().to_string(),
                    problem: format!("record {}: ε `{e}`: {why}", r.seq),
                })?;
                let slot = spent.entry((r.user, s)).or_default();
                slot.0 = slot.0.saturating_add(e.0);
            }
        }
        Ok(Self {
            spent: Mutex::new(spent),
        })
    }

    /// What `user` has spent under `scenario`.
    pub fn spent(&self, user: &str, scenario: &str) -> Epsilon {
        self.spent
            .lock()
            .expect("ledger lock")
            .get(&(user.to_string(), scenario.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Refuses, naming the budget, when `amount` does not fit what is left.
    pub fn check(
        &self,
        user: &str,
        scenario: &str,
        amount: Epsilon,
        budget: Option<Epsilon>,
    ) -> Result<(), GatewayError> {
        fits(self.spent(user, scenario), amount, budget, scenario)
    }

    /// Spends `amount` for `query_id`: on the audit trail (fsynced) first, then here. Refused
    /// when it does not fit the budget or cannot be recorded.
    pub fn spend(
        &self,
        audit: &AuditLog,
        user: &str,
        scenario: &str,
        query_id: &str,
        amount: Epsilon,
        budget: Option<Epsilon>,
    ) -> Result<Epsilon, GatewayError> {
        let mut spent = self.spent.lock().expect("ledger lock");
        let key = (user.to_string(), scenario.to_string());
        let before = spent.get(&key).copied().unwrap_or_default();
        fits(before, amount, budget, scenario)?;
        let after = Epsilon(before.0 + amount.0);
        let mut record = AuditRecord::new(RecordKind::Privacy, Decision::Spent, query_id, user, "");
        record.scenario = Some(scenario.to_string());
        record.epsilon = Some(amount.to_string());
        record.reason = Some(format!(
            "spent ε={amount}; {after} of {} used",
            budget.unwrap_or_default()
        ));
        audit
            .append(record)
            .map_err(|e| GatewayError::Audit(e.to_string()))?;
        spent.insert(key, after);
        Ok(after)
    }
}

fn fits(
    spent: Epsilon,
    amount: Epsilon,
    budget: Option<Epsilon>,
    scenario: &str,
) -> Result<(), GatewayError> {
    let Some(budget) = budget else {
        return Err(GatewayError::PrivacyBudget(format!(
            "scenario `{scenario}` has no epsilon_budget, so it releases nothing with differential privacy"
        )));
    };
    if spent.0.saturating_add(amount.0) > budget.0 {
        let left = Epsilon(budget.0.saturating_sub(spent.0));
        return Err(GatewayError::PrivacyBudget(format!(
            "the query needs ε={amount}, but only ε={left} of scenario `{scenario}`'s epsilon_budget {budget} is left for this user"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_survive_a_restart_and_refuse_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Some(Epsilon(1_000_000));
        {
            let log = AuditLog::open(dir.path(), 1 << 20).unwrap();
            let ledger = PrivacyLedger::replay(dir.path()).unwrap();
            for _ in 0..3 {
                ledger
                    .spend(&log, "alice", "s", "q", Epsilon(300_000), budget)
                    .unwrap();
            }
            let err = ledger
                .spend(&log, "alice", "s", "q", Epsilon(300_000), budget)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("epsilon_budget 1") && err.contains("ε=0.1"),
                "{err}"
            );
            // Another user and another scenario have their own budgets.
            ledger
                .spend(&log, "bob", "s", "q", Epsilon(300_000), budget)
                .unwrap();
            ledger
                .spend(&log, "alice", "t", "q", Epsilon(300_000), budget)
                .unwrap();
        }
        let ledger = PrivacyLedger::replay(dir.path()).unwrap();
        assert_eq!(ledger.spent("alice", "s"), Epsilon(900_000));
        assert!(ledger
            .check("alice", "s", Epsilon(200_000), budget)
            .is_err());
        assert!(ledger.check("alice", "s", Epsilon(100_000), budget).is_ok());
        assert!(ledger.check("alice", "s", Epsilon(1), None).is_err());
        assert!(crate::audit::verify(dir.path()).is_ok());
    }
}
