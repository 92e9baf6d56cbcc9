//! The query path of lakegate: parse, plan, ask `policy`, put the secure scan in front of every
//! table, execute.
//!
//! A [`Gateway`] is opened once per server from the [`lake_config::Config`]; every request names
//! a [`Principal`] (user and scenario) and gets its own DataFusion session whose `lake` catalog
//! shows only what that principal may read under that scenario. This crate knows nothing of
//! Flight or tonic.

pub mod audit;
mod batch_width;
mod bounded_aggregates;
mod bounded_functions;
mod enforce;
pub mod error;
pub mod executor;
mod expansion;
mod explain;
mod guard;
mod parse_budget;
mod query;
mod query_memory;
mod row_size;
mod statement;
mod unparse;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::catalog::TableProvider;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionConfig;

use catalog::{Lake, LakeCatalogProvider, TableRef, LAKE_CATALOG};
use lake_config::Config;
use policy::{CedarType, ColumnDescription, LakeDescription, PolicySet, TableDescription};

pub use enforce::aggregate_only::Suppressed;
pub use enforce::codec::SecureScanCodec;
pub use enforce::dp_release::{DpReleaseExec, EPSILON_KEY, SCALE_KEY};
pub use enforce::min_group::MinGroupReleaseExec;
pub use enforce::secure_exec::SecureScanExec;
pub use enforce::secure_scan::{SecureTable, SUBJECT_COLUMN};
use enforce::session_gate::SessionGate;
pub use error::GatewayError;
pub use executor::Executor;
pub use guard::GuardExec;
pub use query::{scan_metrics, served_schema, AuditContext, Completion, Outcome, Query};

/// How many of the last grants a reloaded policy set decides before it serves (at about 0.5 ms
/// each when nothing is memoized yet).
const WARM_GRANTS: usize = 2_000;

/// Who asks: the authenticated user and the scenario the session works under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name (`Lake::User::"<name>"`).
    pub user: String,
    /// The scenario id (`Lake::Scenario::"<id>"`), if the session declared one.
    pub scenario: Option<String>,
}

/// A table a principal may query, with its columns as served.
#[derive(Debug, Clone)]
pub struct VisibleTable {
    /// `schema.table`.
    pub table: TableRef,
    /// The served schema (hidden columns absent, types as sent on the wire).
    pub schema: SchemaRef,
}

/// The query gateway over one lake and one policy folder.
pub struct Gateway {
    lake: Arc<Lake>,
    audit: Arc<audit::AuditLog>,
    last_anchor: tokio::sync::Mutex<u64>,
    /// The last audit segment exported to `lakegate_audit.queries`.
    last_exported: tokio::sync::Mutex<u64>,
    /// Usage of the closed segments counted so far, and the last one counted: each export adds
    /// the newly closed segments instead of reading the whole trail again.
    usage_totals: tokio::sync::Mutex<(u64, audit::UsageTotals)>,
    max_result_bytes: Option<u64>,
    /// The serving policy set; shared with queries that read it again when they run.
    policies: Arc<RwLock<Arc<PolicySet>>>,
    policy_dir: PathBuf,
    /// What the policy folder looked like when the current set was loaded.
    policy_fingerprint: std::sync::Mutex<Vec<(PathBuf, u64, SystemTime)>>,
    mask_key: Option<Arc<[u8]>>,
    /// What every query's session starts from: configuration, runtime, DataFusion's functions
    /// and rules. Built once and cloned per query (building one registers every built-in
    /// function: a fifth of planning a query), never given a catalog.
    template: datafusion::execution::SessionState,
    /// `[execution] query_memory_limit_bytes`, resolved: one query's cap in the shared pool.
    query_memory: usize,
    limits: statement::StatementLimits,
    /// ε spent per (user, scenario), replayed from the audit trail.
    ledger: Arc<audit::budget::PrivacyLedger>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("lake", &self.lake)
            .field("policy_dir", &self.policy_dir)
            .finish()
    }
}

impl Gateway {
    /// Opens the lake and loads the policy folder named by `config`.
    pub async fn open(config: &Config) -> Result<Self, GatewayError> {
        let lake = Arc::new(
            Lake::open(&config.lake)
                .await?
                .with_parquet_pushdown(config.execution.parquet_pushdown),
        );
        let description = describe_lake(&lake).await?;
        let policies = PolicySet::load(&config.policy.dir, &description)?;
        tracing::info!(
            tables = description.tables.len(),
            policies = policies.policy_count(),
            policy_hash = policies.hash(),
            "gateway ready"
        );
        let audit = audit::AuditLog::open(&config.audit.dir, config.audit.segment_bytes)
            .map_err(|e| GatewayError::Audit(e.to_string()))?;
        let ledger = audit::budget::PrivacyLedger::replay(&config.audit.dir)
            .map_err(|e| GatewayError::Audit(e.to_string()))?;
        let gateway = Self {
            ledger: Arc::new(ledger),
            lake,
            audit: Arc::new(audit),
            last_anchor: tokio::sync::Mutex::new(0),
            last_exported: tokio::sync::Mutex::new(0),
            usage_totals: tokio::sync::Mutex::new((0, audit::UsageTotals::new())),
            max_result_bytes: config.audit.max_result_bytes,
            policies: Arc::new(RwLock::new(Arc::new(policies))),
            policy_fingerprint: std::sync::Mutex::new(fingerprint(&config.policy.dir)),
            policy_dir: config.policy.dir.clone(),
            mask_key: config
                .policy
                .mask_key
                .as_ref()
                .map(|k| Arc::from(k.as_bytes())),
            query_memory: query_memory_limit(&config.execution),
            template: session_template(
                runtime_env(&config.execution)?,
                config.execution.sort_merge_joins,
                Arc::new(
                    Executor::new(config.execution.threads, config.execution.max_batch_bytes)
                        .map_err(|e| {
                            GatewayError::Config(format!(
                                "cannot start the query runtime ({e}); check [execution] threads"
                            ))
                        })?,
                ),
            ),
            limits: statement::StatementLimits {
                max_sql_bytes: config.execution.max_sql_bytes,
                max_depth: config.execution.max_expression_depth,
            },
        };
        gateway.load_export_state().await?;
        Ok(gateway)
    }

    /// The lake this gateway serves.
    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    /// The policy set decisions are made against now.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.read().expect("policy lock poisoned").clone()
    }

    /// Loads the policy folder again (and the lake's tables, for the generated schema). A set
    /// that fails validation is refused and the last good set keeps serving.
    pub async fn reload_policies(&self) -> Result<(), GatewayError> {
        let seen = fingerprint(&self.policy_dir);
        *self.policy_fingerprint.lock().expect("fingerprint lock") = seen;
        self.lake.refresh().await?;
        let description = describe_lake(&self.lake).await?;
        let (dir, serving) = (self.policy_dir.clone(), self.policies());
        // Parsing, validating and warming are CPU work: off the runtime's workers. The old set
        // keeps serving while the new one decides what was asked lately, so the first queries
        // after a policy change find their decisions made.
        let loaded = tokio::task::spawn_blocking(move || {
            PolicySet::load(&dir, &description).map(|set| {
                let warmed = set.warm(&serving.recent_grants(WARM_GRANTS), SystemTime::now());
                (set, warmed)
            })
        })
        .await
        .map_err(|e| GatewayError::Config(format!("policy reload stopped: {e}")))?;
        match loaded {
            Ok((set, warmed)) => {
                tracing::info!(
                    policies = set.policy_count(),
                    policy_hash = set.hash(),
                    warmed,
                    "policy set reloaded"
                );
                *self.policies.write().expect("policy lock poisoned") = Arc::new(set);
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    policy_hash = self.policies().hash(),
                    "policy set refused, the last good set keeps serving: {e}"
                );
                Err(e.into())
            }
        }
    }

    /// Reloads when a file of the policy folder changed since the last load. Returns whether it
    /// tried.
    pub async fn reload_if_changed(&self) -> Option<Result<(), GatewayError>> {
        let now = fingerprint(&self.policy_dir);
        let changed = *self.policy_fingerprint.lock().expect("fingerprint lock") != now;
        if changed {
            Some(self.reload_policies().await)
        } else {
            None
        }
    }

    /// Checks that `scenario` is declared in the policy entities.
    pub fn check_scenario(&self, scenario: &str) -> Result<(), GatewayError> {
        match self.policies().scenario(scenario) {
            Some(_) => Ok(()),
            None => Err(GatewayError::UnknownScenario(scenario.to_string())),
        }
    }

    /// [`Gateway::prepare`], with the decision on the audit trail (fsynced) before the query can
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
        let result = self.prepare(who, sql).await.map(|mut q| {
            let grants = q.grants();
            q.set_origin(query::Origin {
                who: who.clone(),
                sql: sql.to_string(),
                client: client.clone(),
                grants,
            });
            q
        });
        let mut record = audit::AuditRecord::new("decision", &query_id, &who.user, sql);
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
                record.decision = "refused".into();
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
            record.decision = "allowed".into();
            record.rewritten_sql = info.rewritten_sql;
            record.policy_ids = info.policy_ids;
            record.tables = info.tables;
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
        query.set_audit(query::AuditContext {
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

    /// Decides an audited query again before it runs (a DoGet of a ticket, an execution of a
    /// prepared statement): the grants of the tables it reads under the current policy set and
    /// time (cached decisions, so cheap). Unchanged: the query as planned. Changed: the
    /// statement is planned again under the current policies (a denied table then fails as at
    /// planning); a re-planned result with other columns is refused, since the client holds the
    /// old schema. A query not made by [`Gateway::prepare_audited`] is refused.
    pub async fn revalidate(&self, query: &Query) -> Result<Query, GatewayError> {
        // Fail closed: a query that does not record what it was granted cannot be re-decided.
        let Some(origin) = query.origin() else {
            return Err(GatewayError::PolicyChanged(
                "the statement carries no record of its grants; prepare it again".into(),
            ));
        };
        if self.grants_unchanged(query)? {
            return Ok(query.clone());
        }
        tracing::info!(user = %origin.who.user, scenario = ?origin.who.scenario, "grants changed since planning: planning again");
        let fresh = self
            .prepare_audited(&origin.who, &origin.sql, origin.client.clone())
            .await?;
        if fresh.schema() != query.schema() {
            return Err(GatewayError::PolicyChanged(
                "the result's columns are not the same any more; prepare or execute the statement again"
                    .into(),
            ));
        }
        match query.bound_values() {
            Some(values) => fresh.bind(values.to_vec()),
            None => Ok(fresh),
        }
    }

    /// Whether the policies in force now grant `query`'s user and scenario exactly what they
    /// granted when it was planned (the cached decisions of the current set). Fails closed: a
    /// query that does not record its grants, or whose scenario is gone, is not unchanged.
    pub fn grants_unchanged(&self, query: &Query) -> Result<bool, GatewayError> {
        let Some(origin) = query.origin() else {
            return Ok(false);
        };
        let scenario = self.scenario_of(&origin.who)?;
        let policies = self.policies();
        let now = SystemTime::now();
        for (table, planned) in &origin.grants {
            let current = policies.grant(&origin.who.user, &scenario, &table.to_string(), now)?;
            if *current != *planned {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `error` with a "did you mean" when it names a table that is not found and a table the
    /// principal may see is spelt nearly so. Only visible tables are suggested, so a denied
    /// table's error stays the same as a misspelt one's.
    async fn suggest_table(&self, who: &Principal, error: GatewayError) -> GatewayError {
        let GatewayError::Sql(e) = &error else {
            return error;
        };
        let text = e.strip_backtrace();
        let Some(name) = text
            .split_once("table '")
            .and_then(|(_, rest)| rest.split_once("' not found"))
            .map(|(name, _)| name.to_string())
        else {
            return error;
        };
        let Ok(visible) = self.visible_tables(who).await else {
            return error;
        };
        let asked = name.strip_prefix("lake.").unwrap_or(&name).to_lowercase();
        let best = visible
            .iter()
            .map(|t| t.table.to_string())
            .map(|t| {
                let d = datafusion::common::utils::datafusion_strsim::levenshtein(&asked, &t);
                (d, t)
            })
            .filter(|(d, t)| *d > 0 && *d <= (t.len() / 4).max(2))
            .min();
        match best {
            Some((_, t)) => GatewayError::Sql(datafusion::error::DataFusionError::Plan(format!(
                "{}; did you mean {t}?",
                text.trim_start_matches("Error during planning: ")
            ))),
            None => error,
        }
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
            "decision",
            &uuid::Uuid::new_v4().to_string(),
            &who.user,
            request,
        );
        record.scenario = who.scenario.clone();
        record.client = client;
        record.policy_set = self.policies().hash().to_string();
        match outcome {
            Ok(n) => {
                record.decision = "allowed".into();
                record.rows_out = Some(n);
            }
            Err(e) => {
                record.decision = "refused".into();
                record.reason = Some(e);
            }
        }
        self.audit
            .append(record)
            .map(|_| ())
            .map_err(|e| GatewayError::Audit(e.to_string()))
    }

    /// Records how an executed query ended (after its stream ended, failed or was dropped).
    pub fn record_completion(
        &self,
        query: &Query,
        completion: query::Completion,
    ) -> Result<(), GatewayError> {
        let Some(ctx) = query.audit_context() else {
            return Ok(());
        };
        let mut record = ctx.decision_record()?.as_ref().clone();
        record.kind = "completion".into();
        record.decision = completion.outcome.as_str().into();
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

    /// ε `user` has spent under `scenario` on differentially private releases.
    pub fn epsilon_spent(&self, user: &str, scenario: &str) -> policy::Epsilon {
        self.ledger.spent(user, scenario)
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

    /// Parses, checks and plans one read statement for `who`. Placeholders (`?` or `$n`) stay
    /// unbound until [`Query::bind`].
    pub async fn prepare(&self, who: &Principal, sql: &str) -> Result<Query, GatewayError> {
        let scenario = self.scenario_of(who)?;
        let (state, lake, gate) = self.session(&who.user, &scenario);
        // Parsing and planning take seconds for a 1 MiB statement: on the query runtime, never
        // on the threads that serve clients (twelve concurrent 1 MiB statements held another
        // user's login and query for 25 s, attacker round 7).
        let executor = state
            .config()
            .get_extension::<Executor>()
            .ok_or_else(|| GatewayError::Config("the session has no query runtime".into()))?;
        let (text, limits) = (sql.to_string(), self.limits);
        // Parsing, `SELECT *`'s rewrite and naming the tables all walk the whole statement.
        let (statement, state, named) = executor
            .spawn(async move {
                let mut statement = statement::parse_read_statement(&text, limits)?;
                exclude_aggregate_only(&mut statement, &gate);
                let named = state
                    .resolve_table_references(&statement)
                    .map_err(GatewayError::from_planning)?;
                Ok::<_, GatewayError>((statement, state, named))
            })
            .await
            .map_err(joined)??;
        // Fresh snapshots of every named lake table at once; planning then takes them in turn.
        let catalog = &state.config_options().catalog;
        lake.prefetch(named.into_iter().filter_map(|r| {
            let r = r.resolve(&catalog.default_catalog, &catalog.default_schema);
            (*r.catalog == *LAKE_CATALOG).then(|| TableRef::new(&*r.schema, &*r.table))
        }))
        .await;
        let planned = executor
            .spawn(async move {
                let plan = state.statement_to_plan(statement).await;
                (state, plan)
            })
            .await
            .map_err(joined)?;
        let (state, plan) = match planned {
            (state, Ok(plan)) => (state, plan),
            (_, Err(e)) => {
                return Err(self
                    .suggest_table(who, GatewayError::from_planning(e))
                    .await)
            }
        };
        statement::verify_read_plan(&plan)?;
        let suppressed = enforce::aggregate_only::Suppressed::default();
        let (plan, suppressed) = executor
            .spawn(async move {
                (
                    enforce::aggregate_only::enforce(plan, &suppressed),
                    suppressed,
                )
            })
            .await
            .map_err(joined)?;
        let plan = plan?;
        let mut query = Query::new(Arc::new(state), plan)?;
        query.set_suppressed(suppressed);
        Ok(query)
    }

    /// The tables `who` may query, with their served schemas. Empty without a scenario.
    pub async fn visible_tables(&self, who: &Principal) -> Result<Vec<VisibleTable>, GatewayError> {
        let Some(scenario) = &who.scenario else {
            return Ok(Vec::new());
        };
        self.check_scenario(scenario)?;
        self.lake.refresh().await?;
        let gate = SessionGate::new(
            self.policies(),
            &who.user,
            scenario,
            SystemTime::now(),
            self.mask_key.clone(),
            Arc::new(self.lake.storage_options().clone()),
        );
        let mut out = Vec::new();
        for t in self.lake.tables() {
            if let Some(table) = gate.secure_table(&self.lake, &t).await? {
                out.push(VisibleTable {
                    schema: served_schema(&table.schema()),
                    table: t,
                });
            }
        }
        Ok(out)
    }

    fn scenario_of(&self, who: &Principal) -> Result<String, GatewayError> {
        let scenario = who.scenario.as_deref().ok_or(GatewayError::NoScenario)?;
        self.check_scenario(scenario)?;
        Ok(scenario.to_string())
    }

    /// A DataFusion session for one request: the `lake` catalog behind this principal's gate,
    /// no other catalog, no URL tables, no information_schema.
    fn session(
        &self,
        user: &str,
        scenario: &str,
    ) -> (
        datafusion::execution::SessionState,
        Arc<LakeCatalogProvider>,
        Arc<SessionGate>,
    ) {
        let gate = Arc::new(SessionGate::new(
            self.policies(),
            user,
            scenario,
            SystemTime::now(),
            self.mask_key.clone(),
            Arc::new(self.lake.storage_options().clone()),
        ));
        let lake = Arc::new(LakeCatalogProvider::new(self.lake.clone(), gate.clone()));
        (
            session_from(&self.template, lake.clone(), self.query_memory),
            lake,
            gate,
        )
    }
}

/// A task of the query runtime that did not finish (panicked or cancelled).
pub(crate) fn joined(e: tokio::task::JoinError) -> GatewayError {
    GatewayError::Execution(datafusion::error::DataFusionError::External(e.into()))
}

/// `SELECT *` over a table with aggregate-only columns leaves them out ([`wildcard`]).
fn exclude_aggregate_only(statement: &mut datafusion::sql::parser::Statement, gate: &SessionGate) {
    use datafusion::sql::parser::Statement;
    use datafusion::sql::sqlparser::ast::ObjectName;
    let inner = match statement {
        Statement::Statement(s) => s.as_mut(),
        Statement::Explain(e) => match e.statement.as_mut() {
            Statement::Statement(s) => s.as_mut(),
            _ => return,
        },
        _ => return,
    };
    let lookup = |name: &ObjectName| -> Option<enforce::wildcard::Served> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| {
                p.as_ident().map(|i| match i.quote_style {
                    Some(_) => i.value.clone(),
                    None => i.value.to_lowercase(),
                })
            })
            .collect::<Option<_>>()?;
        let t = match parts.as_slice() {
            [schema, table] => TableRef::new(schema, table),
            [catalog, schema, table] if catalog.as_str() == LAKE_CATALOG => {
                TableRef::new(schema, table)
            }
            _ => return None,
        };
        let grant = gate.grant(&t).ok()?;
        if !grant.allowed {
            return None;
        }
        let mut served = enforce::wildcard::Served {
            columns: Vec::new(),
            aggregate_only: Vec::new(),
        };
        for (c, treatment) in &grant.columns {
            match treatment {
                policy::ColumnTreatment::Hidden => {}
                policy::ColumnTreatment::AggregateOnly { .. } => {
                    served.columns.push(c.clone());
                    served.aggregate_only.push(c.clone());
                }
                _ => served.columns.push(c.clone()),
            }
        }
        Some(served)
    };
    enforce::wildcard::exclude_aggregate_only(inner, &lookup);
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

/// Names, sizes and modification times of the policy folder's files.
fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// What the policy layer needs to know of the lake: tables, subject keys, column types.
pub async fn describe_lake(lake: &Lake) -> Result<LakeDescription, GatewayError> {
    let mut tables = Vec::new();
    for t in lake.tables() {
        let Some(snapshot) = lake.snapshot(&t).await? else {
            continue;
        };
        let columns = snapshot
            .schema
            .fields()
            .iter()
            .map(|f| ColumnDescription {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                cedar_type: cedar_type(f.data_type()),
            })
            .collect();
        tables.push(TableDescription {
            schema: t.schema.clone(),
            table: t.table.clone(),
            subject_key: snapshot.subject_key.clone(),
            columns,
        });
    }
    Ok(LakeDescription { tables })
}

/// The Cedar type a column has in its table's row type, where Cedar can express it.
fn cedar_type(t: &DataType) -> Option<CedarType> {
    use DataType::*;
    match t {
        Utf8 | LargeUtf8 | Utf8View => Some(CedarType::String),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => Some(CedarType::Long),
        Boolean => Some(CedarType::Bool),
        Decimal128(p, s) if *s >= 0 && *s <= 4 && *p <= 18 => Some(CedarType::Decimal),
        Date32 | Date64 | Timestamp(_, _) => Some(CedarType::Datetime),
        Dictionary(_, v) => cedar_type(v),
        _ => None,
    }
}

/// The session [`Gateway::session`] clones: the lake catalog as default, no information schema,
/// DataFusion's built-in functions and rules, every function call bounded, and the
/// [`Executor`] its queries run on (a config extension).
fn session_template(
    runtime: Arc<RuntimeEnv>,
    sort_merge_joins: bool,
    executor: Arc<Executor>,
) -> datafusion::execution::SessionState {
    let limit = executor.max_batch_bytes();
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(LAKE_CATALOG, "public")
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(false)
        .with_extension(executor);
    if sort_merge_joins {
        config.options_mut().optimizer.prefer_hash_join = false;
    }
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(Arc::new(enforce::min_group::LakegateQueryPlanner))
        .build();
    state.add_analyzer_rule(Arc::new(bounded_functions::BoundFunctions { limit }));
    state
}

/// A clone of `template` whose only catalog is `lake`, in a catalog list of its own: the
/// template's list (shared by every clone) stays empty, so no session sees another's gate.
/// Its runtime draws from the template's memory pool through a [`query_memory::QueryPool`] of
/// its own, capped at `query_memory` bytes.
fn session_from(
    template: &datafusion::execution::SessionState,
    lake: Arc<dyn datafusion::catalog::CatalogProvider>,
    query_memory: usize,
) -> datafusion::execution::SessionState {
    let shared = template.runtime_env();
    let mut runtime = RuntimeEnv::clone(shared);
    runtime.memory_pool = Arc::new(query_memory::QueryPool::new(
        shared.memory_pool.clone(),
        query_memory,
    ));
    let mut state = SessionStateBuilder::new_from_existing(template.clone())
        .with_runtime_env(Arc::new(runtime))
        .build();
    state.register_catalog_list(Arc::new(MemoryCatalogProviderList::new()));
    state
        .catalog_list()
        .register_catalog(LAKE_CATALOG.to_string(), lake);
    state
}

/// The memory pool when `[execution] memory_limit_bytes` is not set: half of the machine's
/// memory (4 GiB where it cannot be read), so that one query fails with "resources exhausted"
/// before it takes the machine.
pub fn default_memory_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    match total {
        Some(bytes) => (bytes / 2).max(lake_config::MIN_MEMORY_LIMIT),
        None => 4 << 30,
    }
}

/// One query's cap: `[execution] query_memory_limit_bytes`, or a quarter of the pool (at least
/// 64 MiB, at most the pool).
fn query_memory_limit(config: &lake_config::ExecutionConfig) -> usize {
    let pool = config
        .memory_limit_bytes
        .unwrap_or_else(default_memory_limit);
    let limit = config
        .query_memory_limit_bytes
        .unwrap_or((pool / 4).max(lake_config::MIN_MEMORY_LIMIT));
    limit.min(pool) as usize
}

/// The runtime all of one gateway's queries share: `[execution]`'s memory pool and spill folder.
fn runtime_env(config: &lake_config::ExecutionConfig) -> Result<Arc<RuntimeEnv>, GatewayError> {
    let mut builder = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    let limit = config
        .memory_limit_bytes
        .unwrap_or_else(default_memory_limit);
    builder = builder.with_memory_limit(limit as usize, 1.0);
    if let Some(dir) = &config.spill_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc().map_err(|e| {
        GatewayError::Config(format!(
            "cannot set up query execution ({e}); check [execution] spill_dir"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};

    fn test_executor() -> Arc<Executor> {
        Arc::new(Executor::new(Some(1), lake_config::DEFAULT_MAX_BATCH_BYTES).unwrap())
    }

    #[test]
    fn sessions_cloned_from_the_template_see_only_their_own_catalog() {
        let template = session_template(Arc::new(RuntimeEnv::default()), false, test_executor());
        let (a, b): (Arc<dyn CatalogProvider>, Arc<dyn CatalogProvider>) = (
            Arc::new(MemoryCatalogProvider::new()),
            Arc::new(MemoryCatalogProvider::new()),
        );
        let first = session_from(&template, a.clone(), 1 << 30);
        let second = session_from(&template, b.clone(), 1 << 30);
        let lake = |s: &datafusion::execution::SessionState| {
            s.catalog_list()
                .catalog(LAKE_CATALOG)
                .expect("a lake catalog")
        };
        assert!(Arc::ptr_eq(&lake(&first), &a));
        assert!(Arc::ptr_eq(&lake(&second), &b));
        assert!(template.catalog_list().catalog_names().is_empty());
        assert_eq!(first.catalog_list().catalog_names(), [LAKE_CATALOG]);
        // The clones keep the template's configuration.
        let options = first.config().options();
        assert_eq!(options.catalog.default_catalog, LAKE_CATALOG);
        assert!(!options.catalog.information_schema);
        assert!(options.optimizer.prefer_hash_join);
        let merge = session_template(Arc::new(RuntimeEnv::default()), true, test_executor());
        assert!(!merge.config().options().optimizer.prefer_hash_join);
    }
}
