//! The minimum-group release (`policy-model.md` §5): a plan node of its own directly above the
//! aggregate that groups or aggregates an aggregate-only column.
//!
//! It passes the groups that cover at least k distinct subjects and drops the hidden counts; a
//! global aggregate's one group gets NULL aggregates below k. Being an extension node, DataFusion's
//! optimizer pushes no predicate, projection or limit below it (its defaults), and physically no
//! filter or dynamic filter passes it: HAVING, outer filters, join conditions and projections only
//! ever see released groups.
//!
//! ```text
//! before (the user's plan):                after:
//!   Filter: CAST(diagnosis AS BIGINT) > 0    Filter: CAST(diagnosis AS BIGINT) > 0
//!     Aggregate: groupBy=[diagnosis]           MinGroupRelease: k0 >= 10
//!       aggr=[count(*)]                          Aggregate: groupBy=[diagnosis]
//!       TableScan: health.visits                   aggr=[count(*), count(DISTINCT __lakegate_subject) AS k0]
//!                                                  TableScan: health.visits (+ __lakegate_subject)
//! ```

use std::any::Any;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{filter_record_batch, nullif};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Suppressed;

/// The prefix of the hidden per-group subject counts the release reads.
pub(crate) const K_PREFIX: &str = "__lakegate_k";

/// One minimum-group condition: the hidden count column (by name) and its k.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub(crate) struct Check {
    pub(crate) column: String,
    pub(crate) k: u64,
}

/// The logical release node over an aggregate whose last columns are the hidden counts.
#[derive(Debug, Clone)]
pub(crate) struct MinGroupRelease {
    input: LogicalPlan,
    checks: Vec<Check>,
    /// No GROUP BY: the one group is kept, with NULL aggregates below k.
    global: bool,
    schema: DFSchemaRef,
    suppressed: Suppressed,
}

impl PartialEq for MinGroupRelease {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.checks == other.checks && self.global == other.global
    }
}
impl Eq for MinGroupRelease {}
impl Hash for MinGroupRelease {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.checks.hash(state);
        self.global.hash(state);
    }
}
impl PartialOrd for MinGroupRelease {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.input.partial_cmp(&other.input) {
            Some(Ordering::Equal) => self.checks.partial_cmp(&other.checks),
            o => o,
        }
    }
}

impl MinGroupRelease {
    /// The release over `input` (an aggregate carrying the `checks` columns).
    pub(crate) fn try_new(
        input: LogicalPlan,
        checks: Vec<Check>,
        global: bool,
        suppressed: Suppressed,
    ) -> Result<Self> {
        let schema = released_schema(input.schema(), &checks, global)?;
        Ok(Self {
            input,
            checks,
            global,
            schema,
            suppressed,
        })
    }

    /// This node as a plan.
    pub(crate) fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The release node a plan node is, if it is one.
    pub(crate) fn of(plan: &LogicalPlan) -> Option<&MinGroupRelease> {
        match plan {
            LogicalPlan::Extension(e) => {
                let any: &dyn Any = e.node.as_any();
                any.downcast_ref::<MinGroupRelease>()
            }
            _ => None,
        }
    }

    pub(crate) fn input(&self) -> &LogicalPlan {
        &self.input
    }

    pub(crate) fn checks(&self) -> &[Check] {
        &self.checks
    }

    pub(crate) fn global(&self) -> bool {
        self.global
    }

    pub(crate) fn suppressed(&self) -> &Suppressed {
        &self.suppressed
    }

    /// The released columns with their qualifiers.
    pub(crate) fn schema_fields(
        &self,
    ) -> Vec<(
        Option<datafusion::common::TableReference>,
        datafusion::arrow::datatypes::FieldRef,
    )> {
        self.schema
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect()
    }
}

/// The input's columns without the hidden counts (nullable for a global aggregate).
fn released_schema(input: &DFSchemaRef, checks: &[Check], global: bool) -> Result<DFSchemaRef> {
    let fields = input
        .iter()
        .filter(|(_, f)| !checks.iter().any(|c| &c.column == f.name()))
        .map(|(q, f)| {
            let f = if global {
                Arc::new(f.as_ref().clone().with_nullable(true))
            } else {
                f.clone()
            };
            (q.cloned(), f)
        })
        .collect();
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        input.metadata().clone(),
    )?))
}

impl UserDefinedLogicalNodeCore for MinGroupRelease {
    fn name(&self) -> &str {
        "MinGroupRelease"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        // None: no rule may rewrite what the release tests.
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let conditions: Vec<String> = self
            .checks
            .iter()
            .map(|c| format!("{} >= {}", c.column, c.k))
            .collect();
        write!(
            f,
            "MinGroupRelease: {}{}",
            conditions.join(" AND "),
            if self.global { ", else NULL" } else { "" }
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("MinGroupRelease has one input".into()))?;
        Self::try_new(
            input,
            self.checks.clone(),
            self.global,
            self.suppressed.clone(),
        )
    }
}

/// The physical release.
#[derive(Debug)]
pub struct MinGroupReleaseExec {
    input: Arc<dyn ExecutionPlan>,
    /// Input column index and k of each check.
    checks: Vec<(usize, u64)>,
    names: Vec<Check>,
    global: bool,
    /// The input columns that are output, in order.
    keep: Vec<usize>,
    schema: SchemaRef,
    suppressed: Suppressed,
    properties: Arc<PlanProperties>,
}

impl MinGroupReleaseExec {
    /// The release of `checks` over `input`, counting withheld groups into `suppressed`.
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        names: Vec<Check>,
        global: bool,
        suppressed: Suppressed,
    ) -> Result<Self> {
        let in_schema = input.schema();
        let mut checks = Vec::with_capacity(names.len());
        for c in &names {
            let i = in_schema.index_of(&c.column).map_err(|_| {
                DataFusionError::Internal(format!("the release misses its count {}", c.column))
            })?;
            checks.push((i, c.k));
        }
        let keep: Vec<usize> = (0..in_schema.fields().len())
            .filter(|i| !checks.iter().any(|(c, _)| c == i))
            .collect();
        let fields: Vec<Field> = keep
            .iter()
            .map(|&i| {
                let f = in_schema.field(i).clone();
                if global {
                    f.with_nullable(true)
                } else {
                    f
                }
            })
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            in_schema.metadata().clone(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Ok(Self {
            input,
            checks,
            names,
            global,
            keep,
            schema,
            suppressed,
            properties,
        })
    }

    /// What the codec writes: the checks and the global flag (the input travels as a child).
    pub(crate) fn wire(&self) -> (Vec<Check>, bool) {
        (self.names.clone(), self.global)
    }
}

impl DisplayAs for MinGroupReleaseExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let conditions: Vec<String> = self
            .names
            .iter()
            .map(|c| format!("{} >= {}", c.column, c.k))
            .collect();
        write!(
            f,
            "MinGroupReleaseExec: {}{}",
            conditions.join(" AND "),
            if self.global { ", else NULL" } else { "" }
        )
    }
}

/// Which rows of `batch` are released: every count at least its k (NULL is not).
fn released(batch: &RecordBatch, checks: &[(usize, u64)]) -> Result<BooleanArray> {
    let mut ok: Vec<bool> = vec![true; batch.num_rows()];
    for &(i, k) in checks {
        let counts = batch
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("the release's counts are Int64".into()))?;
        for (row, slot) in ok.iter_mut().enumerate() {
            *slot &= counts.is_valid(row) && counts.value(row) >= k as i64;
        }
    }
    Ok(BooleanArray::from(ok))
}

fn release_batch(
    batch: RecordBatch,
    checks: &[(usize, u64)],
    keep: &[usize],
    global: bool,
    schema: &SchemaRef,
    suppressed: &Suppressed,
) -> Result<RecordBatch> {
    let ok = released(&batch, checks)?;
    suppressed.add((ok.len() - ok.true_count()) as u64);
    let columns = if global {
        let withheld = not(&ok)?;
        keep.iter()
            .map(|&i| nullif(batch.column(i), &withheld))
            .collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        let kept = filter_record_batch(&batch, &ok)?;
        keep.iter().map(|&i| kept.column(i).clone()).collect()
    };
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl ExecutionPlan for MinGroupReleaseExec {
    fn name(&self) -> &str {
        "MinGroupReleaseExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("MinGroupReleaseExec has one child".into()))?;
        Ok(Arc::new(Self::try_new(
            input,
            self.names.clone(),
            self.global,
            self.suppressed.clone(),
        )?))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (checks, keep, global, schema, suppressed) = (
            self.checks.clone(),
            self.keep.clone(),
            self.global,
            self.schema.clone(),
            self.suppressed.clone(),
        );
        let out_schema = schema.clone();
        let stream = input.map(move |b| {
            b.and_then(|b| release_batch(b, &checks, &keep, global, &schema, &suppressed))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// Plans [`MinGroupRelease`] as [`MinGroupReleaseExec`] and the differentially private release
/// as its exec.
#[derive(Debug, Default)]
struct ReleasePlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for ReleasePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let any: &dyn Any = node.as_any();
        let [input] = physical_inputs else {
            return Ok(None);
        };
        if let Some(dp) = any.downcast_ref::<crate::enforce::dp_release::DpRelease>() {
            return crate::enforce::dp_release::plan(dp, input.clone()).map(Some);
        }
        let Some(release) = any.downcast_ref::<MinGroupRelease>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(MinGroupReleaseExec::try_new(
            input.clone(),
            release.checks.clone(),
            release.global,
            release.suppressed.clone(),
        )?)))
    }
}

/// DataFusion's query planner with the releases' and the data product calls' extension planners.
#[derive(Debug, Default)]
pub(crate) struct LakegateQueryPlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for LakegateQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(ReleasePlanner),
            Arc::new(crate::products::CallPlanner),
        ])
        .create_physical_plan(logical_plan, session_state)
        .await?;
        crate::enforce::leaves::check(&plan)?;
        crate::type_depth::check_physical(&plan)?;
        Ok(plan)
    }
}
