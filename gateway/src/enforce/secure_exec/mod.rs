//! The physical barrier: a leaf that reads the raw Delta scan, applies the row predicate on raw
//! values, then the masks, and yields the served columns. Nothing can be planned below it.
//!
//! It is serializable with [`SecureScanCodec`] (a DataFusion physical extension codec) so that it
//! can run on Ballista executors: what crosses the wire is the table's URL and version, the raw
//! columns to read, the pushed filters, the row predicate and the masks — never the mask key or
//! storage credentials, which each executor's codec brings from its own configuration. An
//! executor re-plans the Delta scan when it first executes the node.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::ExecutionProps;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::Expr;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::physical_expr::utils::{conjunction, reassign_expr_columns};
use datafusion::physical_expr::{
    create_physical_expr, EquivalenceProperties, Partitioning, PhysicalExpr,
};
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    apply_expression_roots, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

use catalog::ColumnBounds;
use policy::{Mask, Predicate};

use crate::enforce::{masks, row_filter};

/// The metric counting the raw rows a secure scan read (before its row predicate).
pub const ROWS_SCANNED: &str = "rows_scanned";

/// What a secure scan reads and how it secures it: everything that crosses the wire.
#[derive(Debug, Clone)]
pub(crate) struct ScanSpec {
    /// `schema.table`, for display and errors.
    pub table: String,
    /// The table's folder.
    pub url: url::Url,
    /// The Delta version the query was planned against.
    pub version: u64,
    /// Raw column indices the Delta scan reads.
    pub raw_projection: Vec<usize>,
    /// User filters pushed into the Delta scan (only when everything is served raw).
    pub filters: Vec<Expr>,
    /// A limit pushed into the Delta scan (only without a row predicate).
    pub limit: Option<usize>,
    /// The grant's row predicate.
    pub predicate: Option<Predicate>,
    /// Per output column: the raw column's name and its mask.
    pub outputs: Vec<(String, Option<Mask>)>,
    /// The partition count of the Delta scan as planned.
    pub partitions: usize,
    /// The target partition count the optimizer split the Delta scan's files for, if it did
    /// (an executor re-plans the scan and splits it the same way).
    pub repartition: Option<usize>,
    /// Whether the Delta scan evaluates `filters` inside the Parquet reader
    /// (`[execution] parquet_pushdown` where the query was planned).
    pub parquet_pushdown: bool,
    /// How the raw rows are read when not from Parquet, for display: the held version in
    /// memory (`[acceleration]`), and whether by key lookup. Not sent over the wire: a decoded
    /// scan reads Parquet.
    pub accelerated: Option<String>,
}

/// The Delta scan as planned in this process, and the compiled row predicate.
#[derive(Clone)]
pub(super) struct Planned {
    input: Arc<dyn ExecutionPlan>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    outputs: Vec<(usize, Option<Mask>)>,
    /// Dynamic filters passed into `input` (see `handle_child_pushdown_result`). Reported as
    /// this node's expressions: a hash join computes its filter only when its probe side shows
    /// a consumer.
    dynamic: Vec<Arc<dyn PhysicalExpr>>,
    /// Bounds from the Delta log per column of `input` (empty after decoding: statistics
    /// serve planning only).
    bounds: Arc<[Option<ColumnBounds>]>,
}

/// The barrier node.
pub struct SecureScanExec {
    pub(super) spec: Arc<ScanSpec>,
    pub(super) schema: SchemaRef,
    mask_key: Option<Arc<[u8]>>,
    /// Delta-rs storage options of this process, for re-planning after decoding.
    storage: Arc<HashMap<String, String>>,
    planned: Option<Planned>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// Whether the table is served exactly as stored (every column raw, every row, nothing
    /// aggregate-only): only then are the raw scan's statistics reported and dynamic filters
    /// passed into it.
    as_stored: bool,
}

impl fmt::Debug for SecureScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the mask key or storage options.
        f.debug_struct("SecureScanExec")
            .field("spec", &self.spec)
            .finish()
    }
}

mod barrier;
use barrier::secure;

impl DisplayAs for SecureScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SecureScanExec: table={}", self.spec.table)?;
        if let Some(p) = &self.spec.predicate {
            write!(f, ", rows={p}")?;
        }
        let masked: Vec<String> = self
            .spec
            .outputs
            .iter()
            .filter_map(|(name, m)| m.as_ref().map(|m| format!("{name}={m}")))
            .collect();
        if !masked.is_empty() {
            write!(f, ", masks=[{}]", masked.join(", "))?;
        }
        if let Some(a) = &self.spec.accelerated {
            write!(f, ", {a}")?;
        }
        if !self.spec.filters.is_empty() {
            let filters: Vec<String> = self.spec.filters.iter().map(|e| e.to_string()).collect();
            write!(f, ", pushed=[{}]", filters.join(", "))?;
            if self.spec.parquet_pushdown {
                write!(f, " into the Parquet reader")?;
            }
        }
        Ok(())
    }
}

impl ExecutionPlan for SecureScanExec {
    fn name(&self) -> &str {
        "SecureScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // A leaf: no optimizer rule can put anything between the raw scan and the barrier.
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // Only the dynamic filters it took in, never the row predicate or masks: those stay
        // out of reach of rules that rewrite a plan's expressions.
        match &self.planned {
            Some(planned) => apply_expression_roots(planned.dynamic.iter(), f),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal("SecureScanExec is a leaf".into()));
        }
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        // Plan walks do not see the raw scan below this leaf: reset it here, as a recursive
        // CTE or a scalar subquery resets every node it runs again (a Delta scan's file queue
        // is used up by its first run).
        match &self.planned {
            Some(planned) => {
                let mut planned = planned.clone();
                planned.input =
                    datafusion::physical_plan::execution_plan::reset_plan_states(planned.input)?;
                Ok(self.replanned((*self.spec).clone(), planned))
            }
            None => Ok(self),
        }
    }

    /// Splits the raw scan's files over more partitions, as the optimizer does for a bare Delta
    /// scan (it cannot reach through this leaf). The barrier works batch by batch, so it holds
    /// the same on any partitioning.
    fn repartitioned(
        &self,
        target_partitions: usize,
        config: &datafusion::config::ConfigOptions,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(planned) = &self.planned else {
            return Ok(None);
        };
        let Some(input) = planned.input.repartitioned(target_partitions, config)? else {
            return Ok(None);
        };
        let mut spec = (*self.spec).clone();
        spec.partitions = input.output_partitioning().partition_count();
        spec.repartition = Some(target_partitions);
        let planned = Planned {
            input,
            ..planned.clone()
        };
        Ok(Some(self.replanned(spec, planned)))
    }

    /// The raw scan's statistics (its row count, and whatever else the Delta scan knows), with
    /// the Delta log's bounds as inexact minimum and maximum where the scan has none, when the
    /// table is served exactly as stored: joins then pick their build side from them. Under a
    /// row predicate, a mask or an aggregate-only column they would describe rows and values the
    /// user may not see (and EXPLAIN could print them), so they stay unknown. Inexact values
    /// never answer a query (DataFusion answers `min`, `max` and `count` only from exact ones).
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<datafusion::common::Statistics>],
        args: &datafusion::physical_plan::statistics::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        use datafusion::common::stats::Precision;
        let unknown = || {
            Ok(Arc::new(datafusion::common::Statistics::new_unknown(
                &self.schema,
            )))
        };
        let Some(planned) = &self.planned else {
            return unknown();
        };
        if !self.serves_raw_rows() {
            return unknown();
        }
        let raw = datafusion::physical_plan::statistics::StatisticsContext::new()
            .compute(planned.input.as_ref(), args)?;
        let input_schema = planned.input.schema();
        let known = raw.column_statistics.len() == input_schema.fields().len();
        let bound = |i: usize, pick: fn(&ColumnBounds) -> &ScalarValue| {
            let b = planned.bounds.get(i)?.as_ref()?;
            pick(b).cast_to(input_schema.field(i).data_type()).ok()
        };
        let mut stats = (*raw).clone();
        stats.column_statistics = planned
            .outputs
            .iter()
            .map(|&(i, _)| {
                let mut c = if known {
                    raw.column_statistics[i].clone()
                } else {
                    datafusion::common::ColumnStatistics::new_unknown()
                };
                if c.min_value == Precision::Absent {
                    if let Some(v) = bound(i, |b| &b.min) {
                        c.min_value = Precision::Inexact(v);
                    }
                }
                if c.max_value == Precision::Absent {
                    if let Some(v) = bound(i, |b| &b.max) {
                        c.max_value = Precision::Inexact(v);
                    }
                }
                c
            })
            .collect();
        Ok(Arc::new(stats))
    }

    /// Dynamic filters (a hash join's build-side bounds, a TopK's threshold) arriving after
    /// planning are passed into the raw scan, through DataFusion's own filter pushdown, only when
    /// the table is served exactly as stored: the raw rows are then the served rows, so pruning
    /// with a filter on them is pruning the served rows. The scan may use them to skip files, row
    /// groups and pages; it never reports a filter as applied, so its parents keep filtering. A
    /// decoded plan loses them (they are runtime state), which costs only the pruning.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &datafusion::config::ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<_> = child_pushdown_result
            .parent_filters
            .into_iter()
            .map(|f| f.filter)
            .collect();
        let mut propagation = FilterPushdownPropagation::with_parent_pushdown_result(vec![
                PushedDown::No;
                filters.len()
            ]);
        // The user's own filters reached the raw scan when it was planned (`Pre` is theirs).
        let Some(planned) = &self.planned else {
            return Ok(propagation);
        };
        if phase != FilterPushdownPhase::Post || filters.is_empty() || !self.serves_raw_rows() {
            return Ok(propagation);
        }
        // A filter that cannot be taken is only pruning not done: decline it, never fail.
        let (input, bound) = match with_filters(&planned.input, filters, config) {
            Ok(Some(taken)) => taken,
            Ok(None) => return Ok(propagation),
            Err(e) => {
                tracing::debug!(table = %self.spec.table, "dynamic filters not taken: {e}");
                return Ok(propagation);
            }
        };
        let mut dynamic = planned.dynamic.clone();
        dynamic.extend(bound);
        let planned = Planned {
            input,
            dynamic,
            ..planned.clone()
        };
        propagation.updated_node = Some(self.replanned((*self.spec).clone(), planned));
        Ok(propagation)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let key = self.mask_key.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let scanned = MetricBuilder::new(&self.metrics).counter(ROWS_SCANNED, partition);
        let stream = match &self.planned {
            Some(planned) => {
                let planned = planned.clone();
                let input = planned.input.execute(partition, context)?;
                let schema = schema.clone();
                input
                    .map(move |b| {
                        b.and_then(|b| {
                            secure(b, &planned, &schema, key.as_deref(), &baseline, &scanned)
                        })
                    })
                    .boxed()
            }
            None => {
                let (spec, storage, schema) =
                    (self.spec.clone(), self.storage.clone(), schema.clone());
                // A re-planned scan executes one partition per plan instance: without this,
                // DataFusion's file streams steal their siblings' files and every partition
                // returns every row (`enable_file_stream_work_stealing` is meant for one process
                // polling all partitions of one instance).
                let mut config = context.session_config().clone();
                config
                    .options_mut()
                    .execution
                    .enable_file_stream_work_stealing = false;
                let context = Arc::new(TaskContext::new(
                    context.task_id(),
                    context.session_id(),
                    config,
                    HashMap::new(),
                    HashMap::new(),
                    HashMap::new(),
                    HashMap::new(),
                    context.runtime_env(),
                ));
                futures::stream::once(async move {
                    let planned = Self::plan(spec, storage, key.clone(), context.clone()).await?;
                    let input = planned.input.execute(partition, context)?;
                    Ok::<_, DataFusionError>(input.map(move |b| {
                        b.and_then(|b| {
                            secure(b, &planned, &schema, key.as_deref(), &baseline, &scanned)
                        })
                    }))
                })
                .try_flatten()
                .boxed()
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// A raw scan with filters pushed into it, and those filters as bound to its columns.
type WithFilters = (Arc<dyn ExecutionPlan>, Vec<Arc<dyn PhysicalExpr>>);

/// `input` (a raw Delta scan) with `filters` pushed into it by DataFusion's own filter pushdown,
/// and the filters as bound to its columns; `None` when it takes none or changes shape. The
/// filters are on the served columns, which are the raw columns of the same names in another
/// order; the probe filter put over the scan to carry them is dropped again.
fn with_filters(
    input: &Arc<dyn ExecutionPlan>,
    filters: Vec<Arc<dyn PhysicalExpr>>,
    config: &datafusion::config::ConfigOptions,
) -> Result<Option<WithFilters>> {
    let raw_schema = input.schema();
    let bound = filters
        .into_iter()
        .map(|f| reassign_expr_columns(f, &raw_schema))
        .collect::<Result<Vec<_>>>()?;
    let probe: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(
        conjunction(bound.clone()),
        input.clone(),
    )?);
    let pushed = FilterPushdown::new().optimize(probe, config)?;
    let any: &dyn std::any::Any = pushed.as_ref();
    let taken = match any.downcast_ref::<FilterExec>() {
        Some(filter) => filter.input().clone(),
        None => pushed,
    };
    if Arc::ptr_eq(&taken, input)
        || taken.schema() != raw_schema
        || taken.output_partitioning().partition_count()
            != input.output_partitioning().partition_count()
    {
        return Ok(None);
    }
    Ok(Some((taken, bound)))
}
