//! The audit lifecycle of a query on the gateway: its decision record (prepared, refused), its
//! completion and metadata records, the ε it spends, and the chain's anchors.

use crate::*;

impl Gateway {
    /// Prepares `sql` for `who` (parse, check, plan), with the decision on the audit trail (fsynced) before the query can
    /// run: allowed with the tables, columns, versions and policies, or refused with the reason.
    /// A refusal is on disk when this returns; an allowed decision is written beside what
    /// follows, and [`Query::execute`] and [`Query::physical_plan`] wait for it. A failing audit
    /// write refuses the query: here for a refusal, at execution for an allowed one.
    pub async fn prepare_audited(
        &self,
        who: &Principal,
        sql: &str,
        client: Option<String>,
    ) -> Result<Query, GatewayError> {
        let query_id = uuid::Uuid::new_v4().to_string();
        // Text first: planning a long statement costs, and an allowed one's text is kept whole.
        let within =
            self.statement_budget
                .take(&who.user, sql.len() as u64, std::time::Instant::now());
        let planned = match within {
            Ok(()) => self.prepare(who, sql, &query_id).await,
            Err(why) => Err(GatewayError::RateLimited(why)),
        };
        let result = planned.map(|mut q| {
            let grants = q.grants();
            let stamps = q.stamps();
            q.set_origin(query::Origin {
                who: who.clone(),
                sql: sql.to_string(),
                client: client.clone(),
                grants,
                stamps,
            });
            q
        });
        let mut record = audit::AuditRecord::new(
            audit::RecordKind::Decision,
            audit::Decision::Refused,
            &query_id,
            &who.user,
            sql,
        );
        record.scenario = who.scenario.clone();
        record.client = client.clone();
        record.policy_set = self.policies().hash().to_string();
        // A differentially private release must fit what is left of the budget.
        let result = result.and_then(|q| {
            let epsilon = q.epsilon();
            if epsilon.0 > 0 {
                let scenario = self.scenario_of(who)?;
                let budget = self
                    .policies()
                    .scenario(&scenario)
                    .and_then(|s| s.epsilon_budget);
                self.ledger.check(&who.user, &scenario, epsilon, budget)?;
            }
            Ok(q)
        });
        let mut query = match result {
            Ok(q) => q,
            Err(e) => {
                record.decision = audit::Decision::Refused;
                record.sql = audit::refused_statement(sql);
                record.reason = Some(e.to_string());
                self.audit
                    .append(record)
                    .map_err(|e| GatewayError::Audit(e.to_string()))?;
                return Err(e);
            }
        };
        // The allowed decision is described (the plan written back as SQL: seconds for a large
        // plan) in the user's planning turn, on the query runtime; then written beside what
        // follows (the reply, the physical planning): execution waits for the record before
        // any batch, and its failure refuses the query then.
        let described = query.clone();
        let info = query
            .executor()?
            .spawn(async move { described.describe() })
            .await
            .map_err(joined)?;
        let audit = self.audit.clone();
        let written = tokio::task::spawn_blocking(move || {
            record.decision = audit::Decision::Allowed;
            record.rewritten_sql = info
                .rewritten_sql
                .as_deref()
                .map(audit::rewritten_statement);
            record.policy_ids = info.policy_ids;
            record.tables = info.tables;
            record.products = info.products;
            audit
                .append(record.clone())
                .map(|_| Arc::new(record))
                .map_err(|e| e.to_string())
        });
        let decision = async move { written.await.map_err(|e| e.to_string())? };
        if let Ok(scenario) = self.scenario_of(who) {
            query.set_charge(query::PrivacyCharge {
                ledger: self.ledger.clone(),
                audit: self.audit.clone(),
                user: who.user.clone(),
                policies: self.policies.clone(),
                scenario,
                query_id: query_id.clone(),
            });
        }
        query.set_audit(audit::AuditContext {
            query_id,
            decision: futures::FutureExt::shared(futures::FutureExt::boxed(decision)),
            max_rows: who
                .scenario
                .as_deref()
                .and_then(|s| self.policies().scenario(s))
                .and_then(|s| s.max_rows),
            max_bytes: self.max_result_bytes,
        });
        Ok(query)
    }

    /// Records a metadata request (GetDbSchemas, GetTables) that lists the lake for `who`:
    /// what was asked, how many entries were listed, or why it failed.
    pub fn record_metadata(
        &self,
        who: &Principal,
        request: &str,
        client: Option<String>,
        outcome: Result<u64, String>,
    ) -> Result<(), GatewayError> {
        let mut record = audit::AuditRecord::new(
            audit::RecordKind::Decision,
            audit::Decision::Refused,
            &uuid::Uuid::new_v4().to_string(),
            &who.user,
            request,
        );
        record.scenario = who.scenario.clone();
        record.client = client;
        record.policy_set = self.policies().hash().to_string();
        match outcome {
            Ok(n) => {
                record.decision = audit::Decision::Allowed;
                record.rows_out = Some(n);
            }
            Err(e) => {
                record.decision = audit::Decision::Refused;
                record.reason = Some(e);
            }
        }
        self.audit
            .append(record)
            .map(|_| ())
            .map_err(|e| GatewayError::Audit(e.to_string()))
    }

    /// Records how an executed query ended (after its stream ended, failed or was dropped):
    /// written by the query's [`audit::QueryToken`].
    pub(crate) fn record_completion(
        &self,
        query: &Query,
        completion: audit::Completion,
    ) -> Result<(), GatewayError> {
        let Some(ctx) = query.audit_context() else {
            return Ok(());
        };
        let mut record = ctx.decision_record()?.as_ref().clone();
        record.kind = audit::RecordKind::Completion;
        record.sql = audit::repeated_statement(&record.sql);
        record.rewritten_sql = record
            .rewritten_sql
            .as_deref()
            .map(audit::repeated_statement);
        record.decision = completion.outcome.into();
        record.reason = completion.reason;
        record.rows_out = Some(completion.rows);
        record.bytes_out = Some(completion.bytes);
        record.duration_ms = Some(completion.duration.as_millis() as u64);
        record.result_digest = Some(completion.digest);
        record.rows_scanned = completion.rows_scanned;
        record.suppressed_groups = Some(query.suppressed_groups());
        record.cpu_ms = completion.cpu_ms;
        self.audit
            .append(record)
            .map(|_| ())
            .map_err(|e| GatewayError::Audit(e.to_string()))
    }

    /// The audit log.
    pub fn audit_log(&self) -> &audit::AuditLog {
        &self.audit
    }

    /// Writes the end of the audit chain to the lake's object store
    /// (`_lakegate/audit-anchors/<seq>.json`) when a segment was closed or `force` is set and
    /// there are records since the last anchor.
    pub async fn anchor_audit(&self, force: bool) -> Result<Option<audit::Anchor>, GatewayError> {
        let (head, rotated) = self.audit.head();
        let mut last = self.last_anchor.lock().await;
        if head.seq == 0 || head.seq == *last || !(force || rotated) {
            return Ok(None);
        }
        let body = serde_json::to_vec(&head).expect("anchors serialize");
        self.lake
            .put_own_file(&format!("audit-anchors/{:012}.json", head.seq), body)
            .await?;
        *last = head.seq;
        Ok(Some(head))
    }
}

/// Checks the audit trail of `config` against its chain and the anchors in the lake.
pub async fn verify_audit(config: &Config) -> Result<audit::Verified, GatewayError> {
    let lake = Lake::open(&config.lake).await?;
    let anchors = lake
        .own_files("audit-anchors/")
        .await?
        .into_iter()
        .map(|(name, bytes)| {
            serde_json::from_slice::<audit::Anchor>(&bytes)
                .map_err(|e| GatewayError::Audit(format!("anchor {name} is unreadable: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    audit::verify_with_anchors(&config.audit.dir, &anchors)
        .map_err(|e| GatewayError::Audit(e.to_string()))
}
