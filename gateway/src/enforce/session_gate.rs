//! The per-request gate between the lake catalog and the policy decisions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use datafusion::catalog::TableProvider;
use datafusion::error::{DataFusionError, Result};

use catalog::{Lake, TableGate, TableRef, TableSnapshot};
use policy::{Grant, PolicySet};

use crate::{GatewayError, SecureTable};

/// Grants for one (principal, scenario) at one instant, decided once per table per request.
/// The principal is the user, or a data product planning its own query (definer rights).
#[derive(Debug)]
pub(crate) struct SessionGate {
    policies: Arc<PolicySet>,
    who: policy::Principal,
    scenario: String,
    now: SystemTime,
    mask_key: Option<Arc<[u8]>>,
    storage: Arc<HashMap<String, String>>,
    grants: Mutex<HashMap<TableRef, Arc<Grant>>>,
}

impl SessionGate {
    pub(crate) fn new(
        policies: Arc<PolicySet>,
        who: policy::Principal,
        scenario: &str,
        now: SystemTime,
        mask_key: Option<Arc<[u8]>>,
        storage: Arc<HashMap<String, String>>,
    ) -> Self {
        Self {
            policies,
            who,
            scenario: scenario.to_string(),
            now,
            mask_key,
            storage,
            grants: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn grant(&self, t: &TableRef) -> Result<Arc<Grant>, policy::PolicyError> {
        if let Some(g) = self.grants.lock().expect("grant cache poisoned").get(t) {
            return Ok(g.clone());
        }
        let g = self
            .policies
            .grant_for(&self.who, &self.scenario, &t.to_string(), self.now)?;
        self.grants
            .lock()
            .expect("grant cache poisoned")
            .insert(t.clone(), g.clone());
        Ok(g)
    }

    /// The secure table for `t`, or `None` when the principal may not query it.
    pub(crate) async fn secure_table(
        &self,
        lake: &Lake,
        t: &TableRef,
    ) -> Result<Option<SecureTable>, GatewayError> {
        if !self.lists(t) {
            return Ok(None);
        }
        let Some(snapshot) = lake.snapshot(t).await? else {
            return Ok(None);
        };
        let grant = self.grant(t)?;
        SecureTable::try_new(snapshot, grant, self.mask_key.clone(), self.storage.clone())
            .map(Some)
            .map_err(GatewayError::Sql)
    }
}

impl TableGate for SessionGate {
    fn lists(&self, table: &TableRef) -> bool {
        match self.grant(table) {
            Ok(g) => g.allowed,
            Err(e) => {
                // Fail closed: a table we cannot decide on does not exist for the session.
                tracing::warn!(principal = %self.who, scenario = %self.scenario, %table, "cannot decide: {e}");
                false
            }
        }
    }

    fn admit(&self, snapshot: TableSnapshot) -> Result<Option<Arc<dyn TableProvider>>> {
        let grant = self
            .grant(&snapshot.table)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if !grant.allowed {
            return Ok(None);
        }
        Ok(Some(Arc::new(SecureTable::try_new(
            snapshot,
            grant,
            self.mask_key.clone(),
            self.storage.clone(),
        )?)))
    }
}
