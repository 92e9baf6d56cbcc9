//! A planned query: its served schema, its parameters, and its execution.

use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

use crate::audit::AuditContext;
use crate::GatewayError;

/// One planned read statement for one principal.
#[derive(Clone)]
pub struct Query {
    state: Arc<SessionState>,
    plan: LogicalPlan,
    schema: SchemaRef,
    parameters: SchemaRef,
    audit: Option<Arc<AuditContext>>,
    suppressed: crate::Suppressed,
    origin: Option<Arc<Origin>>,
    /// The values bound with [`Query::bind`], to bind again after a re-plan.
    bound: Option<Vec<ScalarValue>>,
    /// What the bound values make once copied wherever the plan names them.
    bound_bytes: u64,
    /// Who pays for its differentially private releases.
    charge: Option<Arc<PrivacyCharge>>,
}

/// The budget a query's differentially private releases are paid from, once per execution.
pub(crate) struct PrivacyCharge {
    pub(crate) ledger: Arc<crate::audit::budget::PrivacyLedger>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) user: String,
    pub(crate) scenario: String,
    /// The serving policy set, whose scenario budget is read when the query runs: a budget
    /// cut after a statement was prepared holds for its next execution.
    pub(crate) policies: Arc<std::sync::RwLock<Arc<policy::PolicySet>>>,
    pub(crate) query_id: String,
}

/// Where an audited query came from: enough to decide it again at execution.
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) who: crate::Principal,
    pub(crate) sql: String,
    pub(crate) client: Option<String>,
    /// The grant of every table the plan reads, as decided at planning.
    pub(crate) grants: Vec<(catalog::TableRef, policy::Grant)>,
    /// The version of every table the plan reads, as its stamp (`TableSnapshot::stamp`: the
    /// number, and which table it is).
    pub(crate) stamps: Vec<(catalog::TableRef, u64)>,
}

/// What one field of a plan node's schema holds, counted high (measured: 77–94 bytes per
/// field for 100- and 120-way joins, attacker round 26 H1).
pub const FIELD_BYTES: usize = 128;

/// The most bytes the bound values of a prepared statement may make once copied into its plan
/// (the parameter upload itself is bounded by twice the default `max_sql_bytes`).
pub const MAX_BOUND_BYTES: u64 = 2 << 20;

/// What a plan reads, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct QueryDescription {
    /// Tables with versions and column treatments.
    pub tables: Vec<crate::audit::TableRead>,
    /// The determining policies of every table read.
    pub policy_ids: Vec<String>,
    /// The plan as SQL, when the unparser can print it.
    pub rewritten_sql: Option<String>,
    /// The data products it calls, each `name@version(arguments)`.
    pub products: Vec<String>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("schema", &self.schema)
            .field("parameters", &self.parameters)
            .finish()
    }
}

impl Query {
    pub(crate) fn new(state: Arc<SessionState>, plan: LogicalPlan) -> Result<Self, GatewayError> {
        let mut schema = served_schema(plan.schema().inner());
        let epsilon = plan_epsilon(&plan);
        if epsilon.0 > 0 {
            // The result says it is noisy, and what it spent.
            let metadata = [(crate::EPSILON_KEY.to_string(), epsilon.to_string())].into();
            schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
        }
        let parameters = parameter_schema(&plan)?;
        Ok(Self {
            state,
            plan,
            schema,
            parameters,
            audit: None,
            suppressed: crate::Suppressed::default(),
            origin: None,
            charge: None,
            bound: None,
            bound_bytes: 0,
        })
    }

    pub(crate) fn set_charge(&mut self, charge: PrivacyCharge) {
        self.charge = Some(Arc::new(charge));
    }

    /// What one execution spends on differentially private releases.
    pub fn epsilon(&self) -> policy::Epsilon {
        plan_epsilon(&self.plan)
    }

    pub(crate) fn set_origin(&mut self, origin: Origin) {
        self.origin = Some(Arc::new(origin));
    }

    pub(crate) fn origin(&self) -> Option<&Origin> {
        self.origin.as_deref()
    }

    /// The bytes the bound values make once copied wherever the plan names them (0 unbound):
    /// what a kept prepared statement holds beyond its text.
    pub fn bound_bytes(&self) -> u64 {
        self.bound_bytes
    }

    pub(crate) fn bound_values(&self) -> Option<&[ScalarValue]> {
        self.bound.as_deref()
    }

    /// About how many bytes the planned statement holds: every plan node's schema fields and
    /// every expression node, at [`FIELD_BYTES`] each (a join's schema repeats its inputs'
    /// fields, so a long join chain holds tables² × columns of them; a CTE used many times
    /// is inlined, so its expressions are held once per use: 256 copies of a 700-value IN
    /// list held 23 MB, attacker round 28 F2). An upper estimate, for bounds on what clients
    /// may keep planned.
    pub fn footprint(&self) -> usize {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        let mut nodes = 0usize;
        let _ = self.plan.apply_with_subqueries(|p| {
            nodes = nodes.saturating_add(p.schema().fields().len());
            p.apply_expressions(|e| {
                e.apply(|_| {
                    nodes = nodes.saturating_add(1);
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
            Ok(TreeNodeRecursion::Continue)
        });
        nodes.saturating_mul(FIELD_BYTES)
    }

    /// The stamp of every lake table the plan reads (its version, and which table it is).
    pub(crate) fn stamps(&self) -> Vec<(catalog::TableRef, u64)> {
        self.per_table(|t| t.snapshot().stamp)
    }

    /// `of` each secure table the plan reads, once per table.
    fn per_table<T>(&self, of: impl Fn(&crate::SecureTable) -> T) -> Vec<(catalog::TableRef, T)> {
        use datafusion::catalog::default_table_source::source_as_provider;
        use datafusion::common::tree_node::TreeNodeRecursion;
        let mut out: Vec<(catalog::TableRef, T)> = Vec::new();
        let _ = self.plan.apply_with_subqueries(|p| {
            if let LogicalPlan::TableScan(scan) = p {
                if let Ok(provider) = source_as_provider(&scan.source) {
                    let any: &dyn std::any::Any = provider.as_ref();
                    if let Some(t) = any.downcast_ref::<crate::SecureTable>() {
                        let table = t.snapshot().table.clone();
                        if !out.iter().any(|(r, _)| *r == table) {
                            out.push((table, of(t)));
                        }
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        out
    }

    /// The grant of every secure table the plan reads.
    pub(crate) fn grants(&self) -> Vec<(catalog::TableRef, policy::Grant)> {
        self.per_table(|t| t.grant().clone())
    }

    pub(crate) fn set_suppressed(&mut self, suppressed: crate::Suppressed) {
        self.suppressed = suppressed;
    }

    /// Groups the minimum-group rule has withheld from this query's results so far.
    pub fn suppressed_groups(&self) -> u64 {
        self.suppressed.get()
    }

    pub(crate) fn set_audit(&mut self, ctx: AuditContext) {
        self.audit = Some(Arc::new(ctx));
    }

    /// The audit context, when the query was prepared with [`crate::Gateway::prepare_audited`].
    pub fn audit_context(&self) -> Option<&AuditContext> {
        self.audit.as_deref()
    }

    /// The tables, columns, versions and policies the plan reads.
    pub fn describe(&self) -> QueryDescription {
        use datafusion::catalog::default_table_source::source_as_provider;
        use datafusion::common::tree_node::TreeNodeRecursion;
        let mut d = QueryDescription::default();
        let _ = self.plan.apply_with_subqueries(|p| {
            if let Some(call) = crate::products::ProductCall::of(p) {
                d.products.push(call.describe());
            }
            if let LogicalPlan::TableScan(scan) = p {
                if let Ok(provider) = source_as_provider(&scan.source) {
                    let any: &dyn std::any::Any = provider.as_ref();
                    if let Some(t) = any.downcast_ref::<crate::SecureTable>() {
                        let grant = t.grant();
                        let snapshot = t.snapshot();
                        let columns = snapshot
                            .schema
                            .fields()
                            .iter()
                            .filter_map(|f| {
                                let what = match grant.column(f.name()) {
                                    policy::ColumnTreatment::Hidden => return None,
                                    t => t.to_string(),
                                };
                                Some(format!("{}: {what}", f.name()))
                            })
                            .collect();
                        let rows = match &grant.rows {
                            policy::RowPredicate::All => "all".to_string(),
                            policy::RowPredicate::None => "none".to_string(),
                            policy::RowPredicate::Where(p) => p.to_string(),
                        };
                        d.policy_ids.extend(grant.policy_ids());
                        let read = crate::audit::TableRead {
                            table: snapshot.table.to_string(),
                            version: snapshot.version,
                            columns,
                            rows,
                        };
                        if !d.tables.contains(&read) {
                            d.tables.push(read);
                        }
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        d.policy_ids.sort();
        d.policy_ids.dedup();
        d.rewritten_sql = crate::unparse::plan_sql(&self.plan).ok();
        d
    }

    /// The schema of the result as it is sent: exactly the schema of every batch
    /// [`Query::execute`] yields.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One field per placeholder, `$1` first. A type DataFusion could not infer is `Null`.
    pub fn parameter_schema(&self) -> SchemaRef {
        self.parameters.clone()
    }

    /// The logical plan (after policy rewriting).
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Refuses values that, copied wherever the plan names their placeholder, would make more
    /// than [`MAX_BOUND_BYTES`]: a statement naming `$1` a hundred thousand times made as
    /// many copies of one 16 KB value (attacker round 12).
    fn check_bound_copies(&self, values: &[ScalarValue]) -> Result<u64, GatewayError> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::logical_expr::Expr;
        let mut uses: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let _ = self.plan.apply_with_subqueries(|p| {
            for e in p.expressions() {
                let _ = e.apply(|e| {
                    if let Expr::Placeholder(ph) = e {
                        *uses.entry(ph.id.clone()).or_default() += 1;
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let mut bytes = 0u64;
        for (i, v) in values.iter().enumerate() {
            let copies = uses.get(&format!("${}", i + 1)).copied().unwrap_or(1);
            bytes = bytes.saturating_add(copies.saturating_mul(v.size() as u64));
        }
        if bytes > MAX_BOUND_BYTES {
            return Err(GatewayError::Parameters(format!(
                "the values bound, copied wherever the statement names them, make {bytes} \
                 bytes, more than {MAX_BOUND_BYTES}: name a parameter fewer times"
            )));
        }
        Ok(bytes)
    }

    /// [`Query::bind`] on the query runtime, as planning is: binding walks the whole plan (and
    /// types every expression again), which for a large statement is planning's order of work
    /// and must not hold the threads that serve clients.
    pub async fn bind_on_runtime(&self, values: Vec<ScalarValue>) -> Result<Query, GatewayError> {
        let query = self.clone();
        self.executor()?
            .spawn(async move { query.bind(values) })
            .await
            .map_err(crate::joined)?
    }

    /// This query with `values` bound to its placeholders in order.
    pub fn bind(&self, values: Vec<ScalarValue>) -> Result<Query, GatewayError> {
        let expected = self.parameters.fields().len();
        if values.len() != expected {
            return Err(GatewayError::Parameters(format!(
                "the statement has {expected} parameter(s) but {} value(s) were bound",
                values.len()
            )));
        }
        // Cast each value to the type the plan inferred, so that `?` compared with an Int64
        // column accepts an Int32 from the client.
        let mut cast_values = Vec::with_capacity(values.len());
        for (v, f) in values.into_iter().zip(self.parameters.fields()) {
            let t = f.data_type();
            if let Some(kind) = f.metadata().get(crate::products::PARAM_KIND_KEY) {
                if !crate::products::accepts_kind(kind, &v.data_type()) {
                    let argument = f
                        .metadata()
                        .get(crate::products::PARAM_NAME_KEY)
                        .cloned()
                        .unwrap_or_else(|| "a data product argument".into());
                    return Err(GatewayError::Parameters(format!(
                        "parameter {}: {argument} must be {}, not {}",
                        f.name(),
                        crate::products::a_word(kind),
                        v.data_type()
                    )));
                }
            }
            if *t == DataType::Null || v.data_type() == *t {
                cast_values.push(v);
            } else {
                cast_values.push(v.cast_to(t).map_err(|e| {
                    GatewayError::Parameters(format!(
                        "parameter {}: cannot use the value as {t}: {}",
                        f.name(),
                        e.strip_backtrace()
                    ))
                })?);
            }
        }
        let bound_bytes = self.check_bound_copies(&cast_values)?;
        let cast_values_kept = cast_values.clone();
        let plan = self
            .plan
            .clone()
            .with_param_values(ParamValues::List(
                cast_values.into_iter().map(Into::into).collect(),
            ))
            .map_err(|e| GatewayError::Parameters(e.strip_backtrace()))?;
        let mut bound = Query::new(self.state.clone(), plan)?;
        bound.audit = self.audit.clone();
        bound.suppressed = self.suppressed.clone();
        bound.origin = self.origin.clone();
        bound.charge = self.charge.clone();
        bound.bound = Some(cast_values_kept);
        bound.bound_bytes = bound_bytes;
        Ok(bound)
    }

    /// Optimizes the plan and checks it as execution will (on the query runtime), without
    /// planning it physically or spending anything: what `explain` shows is what would run.
    pub(crate) async fn check_optimized(&self) -> Result<(), GatewayError> {
        let executor = self.executor()?;
        let limit = executor.max_batch_bytes();
        let (state, plan) = (self.state.clone(), self.plan.clone());
        executor
            .spawn(async move { optimized_and_checked(&state, &plan, limit).map(|_| ()) })
            .await
            .unwrap_or_else(|e| Err(crate::joined(e)))
    }

    /// The physical plan (for serialization to executors; [`Query::execute`] plans its own).
    pub async fn physical_plan(
        &self,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, GatewayError> {
        // Planning evaluates constant expressions: it runs on the query runtime too, never
        // on the threads that serve clients.
        let executor = self.executor()?;
        let limit = executor.max_batch_bytes();
        let (state, plan) = (self.state.clone(), self.plan.clone());
        let planned = executor.spawn(async move {
            let optimized = optimized_and_checked(&state, &plan, limit)?;
            state
                .query_planner()
                .create_physical_plan(&optimized, state.as_ref())
                .await
                .map_err(GatewayError::from_planning)
        });
        let planned = async { planned.await.unwrap_or_else(|e| Err(crate::joined(e))) };
        let (physical, recorded) = futures::join!(planned, self.recorded());
        recorded?;
        let physical = physical?;
        self.pay(&physical).await?;
        Ok(physical)
    }

    /// Spends the ε of the plan's differentially private releases (what will run, not what was
    /// planned) before any of them runs; refused past the budget or without one.
    async fn pay(
        &self,
        physical: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    ) -> Result<(), GatewayError> {
        let mut total = 0u64;
        use datafusion::common::tree_node::TreeNode;
        let _ = physical.apply(|p| {
            let any: &dyn std::any::Any = p.as_ref();
            if let Some(dp) = any.downcast_ref::<crate::DpReleaseExec>() {
                total = total.saturating_add(dp.epsilon().0);
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        if total == 0 {
            return Ok(());
        }
        let Some(charge) = self.charge.clone() else {
            return Err(GatewayError::PrivacyBudget(
                "a differentially private release runs only in a query with a user and a scenario"
                    .into(),
            ));
        };
        let budget = charge
            .policies
            .read()
            .expect("policy lock poisoned")
            .scenario(&charge.scenario)
            .and_then(|s| s.epsilon_budget);
        tokio::task::spawn_blocking(move || {
            charge.ledger.spend(
                &charge.audit,
                &charge.user,
                &charge.scenario,
                &charge.query_id,
                policy::Epsilon(total),
                budget,
            )
        })
        .await
        .map_err(|e| GatewayError::Audit(e.to_string()))?
        .map(|_| ())
    }

    /// Waits for the decision record of an audited query (nothing to wait for otherwise).
    async fn recorded(&self) -> Result<(), GatewayError> {
        match &self.audit {
            Some(ctx) => ctx.recorded().await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// The runtime the gateway's queries execute on.
    pub(crate) fn executor(&self) -> Result<Arc<crate::Executor>, GatewayError> {
        self.state
            .config()
            .get_extension::<crate::Executor>()
            .ok_or_else(|| GatewayError::Config("the session has no query runtime".into()))
    }

    /// The task context plans of this query run in.
    pub fn task_context(&self) -> Arc<datafusion::execution::TaskContext> {
        self.state.task_ctx()
    }

    /// Runs the query. Every batch of the stream has exactly [`Query::schema`].
    pub async fn execute(&self) -> Result<SendableRecordBatchStream, GatewayError> {
        self.execute_with_plan().await.map(|(s, _)| s)
    }

    /// [`Query::execute`], with the physical plan that runs, for its metrics afterwards
    /// ([`scan_metrics`]).
    pub async fn execute_with_plan(
        &self,
    ) -> Result<
        (
            SendableRecordBatchStream,
            Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        ),
        GatewayError,
    > {
        if !self.parameters.fields().is_empty() {
            return Err(GatewayError::Parameters(format!(
                "the statement has {} unbound parameter(s): bind values before executing",
                self.parameters.fields().len()
            )));
        }
        // The decision record is written while the plan is made; nothing runs before it is.
        let physical = self.physical_plan().await?;
        let executor = self.executor()?;
        let physical = executor
            .prepare(physical)
            .map_err(GatewayError::Execution)?;
        let stream = executor.run(physical.clone(), self.state.task_ctx());
        let schema = self.schema.clone();
        let conformed = stream.map(move |batch| batch.and_then(|b| conform(b, &schema)));
        Ok((
            Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                conformed,
            )),
            physical,
        ))
    }
}

/// Raw rows read by the plan's secure scans, and the compute time of its operators
/// (milliseconds, summed over partitions): the meter's "rows scanned" and "CPU time".
pub fn scan_metrics(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> (u64, u64) {
    let mut rows = 0u64;
    let mut nanos = 0u64;
    let mut stack = vec![plan.clone()];
    while let Some(p) = stack.pop() {
        if let Some(m) = p.metrics() {
            nanos += m.elapsed_compute().unwrap_or(0) as u64;
            rows += m
                .sum_by_name(crate::enforce::secure_exec::ROWS_SCANNED)
                .map(|v| v.as_usize() as u64)
                .unwrap_or(0);
        }
        stack.extend(p.children().into_iter().cloned());
    }
    (rows, nanos / 1_000_000)
}

/// The schema as sent to clients: view types become their plain forms, which every Flight SQL
/// client reads.
pub fn served_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Utf8View => DataType::Utf8,
                DataType::BinaryView => DataType::Binary,
                other => other.clone(),
            };
            Field::new(f.name(), t, true).with_metadata(f.metadata().clone())
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The ε of every differentially private release in `plan`.
fn plan_epsilon(plan: &LogicalPlan) -> policy::Epsilon {
    let mut total = 0u64;
    let _ = plan.apply_with_subqueries(|p| {
        if let Some(dp) = crate::enforce::dp_release::DpRelease::of(p) {
            total = total.saturating_add(dp.epsilon().0);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    policy::Epsilon(total)
}

/// Casts a batch to the served schema (types and field names).
fn conform(batch: RecordBatch, schema: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)
}

fn parameter_schema(plan: &LogicalPlan) -> Result<SchemaRef, GatewayError> {
    let fields = plan
        .get_parameter_fields()
        .map_err(|e| GatewayError::Parameters(e.strip_backtrace()))?;
    let mut numbered = Vec::with_capacity(fields.len());
    for (name, field) in fields {
        let n: usize = name
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                GatewayError::Parameters(format!(
                    "placeholder `{name}` is not positional: write `?` or `$1`, `$2`, ..."
                ))
            })?;
        numbered.push((n, name, field));
    }
    numbered.sort_by_key(|(n, _, _)| *n);
    for (i, (n, _, _)) in numbered.iter().enumerate() {
        if *n != i + 1 {
            return Err(GatewayError::Parameters(format!(
                "placeholder ${} is missing: number placeholders $1, $2, ... without gaps",
                i + 1
            )));
        }
    }
    Ok(Arc::new(Schema::new(
        numbered
            .into_iter()
            .map(|(_, name, field)| {
                let t = field
                    .as_ref()
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Null);
                // Kept: a data product argument's kind (binding is strict for it).
                let metadata = field.map(|f| f.metadata().clone()).unwrap_or_default();
                Field::new(name, t, true).with_metadata(metadata)
            })
            .collect::<Vec<_>>(),
    )))
}

/// `plan` through DataFusion's optimizer, with the checks that must hold before and after it.
pub(crate) fn optimized_and_checked(
    state: &SessionState,
    plan: &LogicalPlan,
    limit: usize,
) -> Result<LogicalPlan, GatewayError> {
    // Literals as written and bound (folding may hide them), and as folded.
    crate::batch_width::check_literals(plan, limit, state.config().batch_size())
        .map_err(GatewayError::Execution)?;
    // Patterns as written too: the optimizer compiles constant ones while it folds them (200
    // folded `regexp_like('abc', '\w{200}...')` took 12 s of planning).
    crate::bounded_functions::patterns::check(plan).map_err(GatewayError::Execution)?;
    // Checked again after DataFusion's optimizer: nothing it moved may get under a release or
    // use an aggregate-only column.
    let optimized =
        crate::planning_deadline::within(crate::planning_deadline::PLANNING_DEADLINE, || {
            let _folding = crate::batch_width::Planning::begin();
            state.optimize(plan)
        })
        .map_err(GatewayError::from_planning)?;
    crate::enforce::aggregate_only::verify(&optimized)?;
    crate::batch_width::check_literals(&optimized, limit, state.config().batch_size())
        .map_err(GatewayError::Execution)?;
    crate::bounded_functions::patterns::check(&optimized).map_err(GatewayError::Execution)?;
    Ok(optimized)
}
