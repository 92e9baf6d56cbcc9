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
mod plan_depth;
mod planning_deadline;
mod products;
mod query;
mod query_memory;
mod row_size;
mod session;
mod statement;
mod type_depth;
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

pub use audit::lifecycle::verify_audit;
pub use audit::QueryToken;
pub use audit::{AuditContext, Completion, Outcome};
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
pub use products::{ProductCallExec, ProductSummary};
pub use query::{scan_metrics, served_schema, Query};

/// The bytes of values the widest row of `batch` stands for: dictionary keys, string views and
/// list views counted as the values they repeat, not as what they send. What binding a row of
/// parameter values may build (a 136 KB dictionary-encoded list stood for 954 MB, attacker
/// round 24 H1).
pub fn logical_row_bytes(batch: &datafusion::arrow::record_batch::RecordBatch) -> u64 {
    row_size::widest_row(batch)
}
use session::{query_memory_limit, runtime_env, session_template};

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
    /// `[products] dir`, if the deployment has data products.
    product_dir: Option<PathBuf>,
    /// What the policy and product folders looked like when the current sets were loaded.
    policy_fingerprint: std::sync::Mutex<Vec<(PathBuf, u64, SystemTime)>>,
    /// What statements are planned with (lake, policies, products, session template, limits).
    sessions: Arc<session::Sessions>,
    /// ε spent per (user, scenario), replayed from the audit trail.
    ledger: Arc<audit::budget::PrivacyLedger>,
    /// Statement text per user per minute (`[audit] max_sql_bytes_per_user_minute`).
    statement_budget: audit::statement_budget::StatementBudget,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("lake", &self.lake)
            .field("policy_dir", &self.policy_dir)
            .finish()
    }
}

/// How often a server looks for new versions of its listed accelerated tables (queries see a
/// new commit at once from Parquet; this bounds how long until it is served from memory).
pub const ACCELERATION_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

impl Gateway {
    /// Opens the lake and loads the policy folder named by `config`; every data product must
    /// plan under its own grants (`lakegate product check`, and anything that opens a gateway
    /// to inspect it).
    pub async fn open(config: &Config) -> Result<Self, GatewayError> {
        Self::open_with(config, true).await
    }

    /// [`Gateway::open`] for a server: a data product that does not plan is left out and
    /// logged (it cannot be called), as on a reload, so that a server restarted after a
    /// revocation that broke a product still starts and still enforces the revocation.
    pub async fn open_serving(config: &Config) -> Result<Self, GatewayError> {
        Self::open_with(config, false).await
    }

    async fn open_with(config: &Config, strict: bool) -> Result<Self, GatewayError> {
        let mut lake = Lake::open(&config.lake)
            .await?
            .with_parquet_pushdown(config.execution.parquet_pushdown);
        if let Some(accel) = &config.acceleration {
            lake = lake.with_acceleration(accel);
        }
        let lake = Arc::new(lake);
        if !strict {
            // A server keeps its listed tables loaded; commands that only inspect do not load.
            lake.keep_accelerated(ACCELERATION_REFRESH);
        }
        let product_dir = config.products.as_ref().map(|p| p.dir.clone());
        let product_files = if strict {
            products::read_files(product_dir.as_deref())?
        } else {
            products::read_files_serving(product_dir.as_deref(), None)?
        };
        let mut description = describe_lake(&lake).await?;
        description.products = product_files.iter().map(|p| p.name.clone()).collect();
        let policies = PolicySet::load(&config.policy.dir, &description)?;
        let audit = audit::AuditLog::open(&config.audit.dir, config.audit.segment_bytes)
            .map(|log| log.with_min_free(config.audit.min_free_bytes))
            .map_err(|e| GatewayError::Audit(e.to_string()))?;
        let ledger = audit::budget::PrivacyLedger::replay(&config.audit.dir)
            .map_err(|e| GatewayError::Audit(e.to_string()))?;
        let policies = Arc::new(RwLock::new(Arc::new(policies)));
        let audit = Arc::new(audit);
        let sessions = Arc::new(session::Sessions {
            audit: audit.clone(),
            lake: lake.clone(),
            policies: policies.clone(),
            products: Arc::default(),
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
            calls: Arc::new(
                audit::calls::CallLedger::replay(&config.audit.dir)
                    .map_err(|e| GatewayError::Audit(e.to_string()))?,
            ),
        });
        let loaded = if strict {
            products::ProductSet::load(product_files, &sessions).await?
        } else {
            products::ProductSet::load_serving(product_files, &sessions, &Default::default()).await
        };
        let serving = sessions.policies();
        tracing::info!(
            tables = description.tables.len(),
            policies = serving.policy_count(),
            products = loaded.len(),
            policy_hash = serving.hash(),
            "gateway ready"
        );
        *sessions.products.write().expect("product lock poisoned") = Arc::new(loaded);
        let gateway = Self {
            statement_budget: audit::statement_budget::StatementBudget::new(
                config.audit.max_sql_bytes_per_user_minute,
            ),
            ledger: Arc::new(ledger),
            lake,
            audit,
            last_anchor: tokio::sync::Mutex::new(0),
            last_exported: tokio::sync::Mutex::new(0),
            usage_totals: tokio::sync::Mutex::new((0, audit::UsageTotals::new())),
            max_result_bytes: config.audit.max_result_bytes,
            policies,
            policy_fingerprint: std::sync::Mutex::new(Vec::new()),
            policy_dir: config.policy.dir.clone(),
            product_dir,
            sessions,
        };
        *gateway.policy_fingerprint.lock().expect("fingerprint lock") = gateway.fingerprint_now();
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

    /// Loads the policy folder and the data products again (and the lake's tables, for the
    /// generated schema). A policy set that fails validation, or a product that does not plan
    /// under it, refuses both, and the last good sets keep serving.
    pub async fn reload_policies(&self) -> Result<(), GatewayError> {
        *self.policy_fingerprint.lock().expect("fingerprint lock") = self.fingerprint_now();
        match self.load_sets().await {
            Ok((set, files, warmed)) => {
                // The policies serve at once: a revocation must not wait for the products to
                // be planned, which needs the query runtime (a query computing without pause
                // held a revocation back 69 s, attacker round 29). A call meanwhile is decided
                // and planned under the new set as every call is.
                *self.policies.write().expect("policy lock poisoned") = set.clone();
                let products = products::ProductSet::load_serving(
                    files,
                    &self.sessions.with_policies(set.clone()),
                    &self.sessions.products(),
                )
                .await;
                tracing::info!(
                    policies = set.policy_count(),
                    products = products.len(),
                    policy_hash = set.hash(),
                    warmed,
                    "policy set reloaded"
                );
                *self
                    .sessions
                    .products
                    .write()
                    .expect("product lock poisoned") = Arc::new(products);
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    policy_hash = self.policies().hash(),
                    "policy set refused, the last good set keeps serving: {e}"
                );
                Err(e)
            }
        }
    }

    /// The policy set and product files as the folders hold them now, with how many recent
    /// grants the new set decided before it serves.
    async fn load_sets(
        &self,
    ) -> Result<
        (
            Arc<PolicySet>,
            Vec<lake_config::products::ProductFile>,
            usize,
        ),
        GatewayError,
    > {
        self.lake.refresh().await?;
        // A product folder that does not read does not hold back the policies: the files
        // last loaded are planned again under them.
        let files = match products::read_files_serving(
            self.product_dir.as_deref(),
            Some(&self.sessions.products()),
        ) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!("{e}; the data products last loaded keep serving");
                self.sessions.products().files()
            }
        };
        let mut description = describe_lake(&self.lake).await?;
        description.products = files.iter().map(|p| p.name.clone()).collect();
        let (dir, serving) = (self.policy_dir.clone(), self.policies());
        // Parsing, validating and warming are CPU work: off the runtime's workers. The old set
        // keeps serving while the new one decides what was asked lately, so the first queries
        // after a policy change find their decisions made.
        let (set, warmed) = tokio::task::spawn_blocking(move || {
            PolicySet::load(&dir, &description).map(|set| {
                let warmed = set.warm(&serving.recent_grants(WARM_GRANTS), SystemTime::now());
                (set, warmed)
            })
        })
        .await
        .map_err(|e| GatewayError::Config(format!("policy reload stopped: {e}")))??;
        Ok((Arc::new(set), files, warmed))
    }

    /// Names, sizes and modification times of the policy and product folders' files.
    fn fingerprint_now(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut seen = fingerprint(&self.policy_dir);
        if let Some(dir) = &self.product_dir {
            seen.extend(fingerprint(dir));
        }
        seen
    }

    /// Reloads when a file of the policy or product folder changed since the last load.
    /// Returns whether it tried.
    pub async fn reload_if_changed(&self) -> Option<Result<(), GatewayError>> {
        let now = self.fingerprint_now();
        let changed = *self.policy_fingerprint.lock().expect("fingerprint lock") != now;
        if changed {
            Some(self.reload_policies().await)
        } else {
            None
        }
    }

    /// Checks that `scenario` is declared in the policy entities (for people explaining
    /// decisions; clients get [`Gateway::check_scenario_for`]).
    pub(crate) fn check_scenario(&self, scenario: &str) -> Result<(), GatewayError> {
        match self.policies().scenario(scenario) {
            Some(_) => Ok(()),
            None => Err(GatewayError::UnknownScenario(scenario.to_string())),
        }
    }

    /// Checks that `scenario` is one `user` may work under now: declared in the policy
    /// entities and granting the user some table. Another organisation's scenario, or one whose
    /// time is up, is refused exactly as an id that does not exist (one could confirm others'
    /// scenario ids, attacker round 19 I1).
    pub fn check_scenario_for(&self, user: &str, scenario: &str) -> Result<(), GatewayError> {
        let policies = self.policies();
        let usable = policies.scenario(scenario).is_some()
            && policies.grants_anything(user, scenario, SystemTime::now())?;
        match usable {
            true => Ok(()),
            false => Err(GatewayError::UnknownScenario(scenario.to_string())),
        }
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
        if self.grants_unchanged(query)? && self.versions_current(origin).await {
            return Ok(query.clone());
        }
        tracing::info!(user = %origin.who.user, scenario = ?origin.who.scenario, "grants or table versions changed since planning: planning again");
        let fresh = self
            .prepare_audited(&origin.who, &origin.sql, origin.client.clone())
            .await?;
        // Bound as the statement was before its columns are compared: a bare parameter's
        // column is typed by its value (attacker round 28 F9).
        let fresh = match query.bound_values() {
            Some(values) => fresh.bind(values.to_vec())?,
            None => fresh,
        };
        if fresh.schema() != query.schema() {
            return Err(GatewayError::PolicyChanged(
                "the result's columns are not the same any more; prepare or execute the statement again"
                    .into(),
            ));
        }
        Ok(fresh)
    }

    /// Whether every table `origin`'s plan reads is still at the version it was planned on: a
    /// department's commit (an erasure) reaches a prepared statement's next execution, as it
    /// reaches the next query (attacker round 26 L2). One listing of each table's log.
    async fn versions_current(&self, origin: &query::Origin) -> bool {
        for (t, stamp) in &origin.stamps {
            // The same number is not enough: a table rewritten up to it is another table
            // (attacker round 28 F1).
            if !matches!(self.lake().stamp(t).await, Ok(Some(s)) if s == *stamp) {
                return false;
            }
        }
        true
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
        // The scenario's output review is part of what was decided (attacker round 26 M1: a
        // max_rows cut after prepare did not reach the prepared statement).
        let max_rows = policies.scenario(&scenario).and_then(|s| s.max_rows);
        if query.audit_context().map(|c| c.max_rows) != Some(max_rows) {
            return Ok(false);
        }
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

    /// Parses, checks and plans one read statement for `who` (the data product calls it makes
    /// are recorded under `query_id`). Placeholders (`?` or `$n`) stay unbound until
    /// [`Query::bind`]. Not public: every query a client can run is prepared
    /// with its decision record ([`Gateway::prepare_audited`]).
    pub(crate) async fn prepare(
        &self,
        who: &Principal,
        sql: &str,
        query_id: &str,
    ) -> Result<Query, GatewayError> {
        let scenario = self.scenario_of(who)?;
        let calls = products::Calls::for_user(&self.sessions, &who.user, &scenario, query_id);
        let planned = match self
            .sessions
            .plan_read(
                policy::Principal::User(who.user.clone()),
                &scenario,
                sql,
                Some(calls),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => return Err(self.suggest_table(who, e).await),
        };
        let mut query = Query::new(Arc::new(planned.state), planned.plan)?;
        query.set_suppressed(planned.suppressed);
        Ok(query)
    }

    /// The tables `who` may query, with their served schemas, and `lakegate.products` (the
    /// data products the session may call), so BI tools discover it as they discover tables.
    /// Empty without a scenario.
    pub async fn visible_tables(&self, who: &Principal) -> Result<Vec<VisibleTable>, GatewayError> {
        let Some(scenario) = &who.scenario else {
            return Ok(Vec::new());
        };
        self.check_scenario_for(&who.user, scenario)?;
        self.lake.refresh().await?;
        let gate = SessionGate::new(
            self.policies(),
            policy::Principal::User(who.user.clone()),
            scenario,
            SystemTime::now(),
            self.sessions.mask_key.clone(),
            Arc::new(self.lake.storage_options().clone()),
        );
        let mut out = Vec::new();
        for t in self.lake.tables() {
            match gate.secure_table(&self.lake, &t).await {
                Ok(Some(table)) => out.push(VisibleTable {
                    schema: served_schema(&table.schema()),
                    table: t,
                }),
                Ok(None) => {}
                // One table that cannot be read is left out of the listing, not the listing
                // of every table beside it (attacker round 31 M1).
                Err(e) => {
                    tracing::warn!(table = %t, error = %e, "left out of a listing: it cannot be read")
                }
            }
        }
        out.push(VisibleTable {
            table: TableRef::new(products::LISTING_SCHEMA, products::LISTING_TABLE),
            schema: products::listing_schema(),
        });
        Ok(out)
    }

    fn scenario_of(&self, who: &Principal) -> Result<String, GatewayError> {
        let scenario = who.scenario.as_deref().ok_or(GatewayError::NoScenario)?;
        self.check_scenario_for(&who.user, scenario)?;
        Ok(scenario.to_string())
    }
}

/// A task of the query runtime that did not finish (panicked or cancelled).
pub(crate) fn joined(e: tokio::task::JoinError) -> GatewayError {
    GatewayError::Execution(datafusion::error::DataFusionError::External(e.into()))
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
    Ok(LakeDescription {
        tables,
        products: vec![],
    })
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
