//! The execution guard: a [`GuardExec`] above every operator of a plan about to run.
//!
//! DataFusion's operators hand batches to each other without returning to the runtime while
//! their inputs are ready: a cross join of tables already in memory computes for hours inside
//! one poll, and no cancellation, timeout or drop of its stream reaches it. The guard spends the
//! Tokio task's cooperative budget for every batch an operator produces, so such a query yields
//! every few batches (and is cancelled at the next yield), and it refuses a batch larger than
//! `[execution] max_batch_bytes` before the next operator copies it.
//!
//! DataFusion 55's window operators and partial sort keep batches of their input without
//! reserving memory for them (a `last_value` over a 200,000-row frame of 10 KB values held
//! 6.4 GB outside the pool). The guard below such an operator reserves every batch it passes up
//! in the query's pool and keeps the reservation until the operator lets go of its input, so the
//! query is refused at `[execution] query_memory_limit_bytes` instead. This over-counts
//! operators that drop rows they no longer need (a sliding frame): fail closed.
//!
//! Before (the plan as optimized):
//! ```text
//! AggregateExec: count(*)
//!   CrossJoinExec
//!     SecureScanExec a
//!     SecureScanExec b
//! ```
//! After (the plan as run):
//! ```text
//! GuardExec
//!   AggregateExec: count(*)
//!     GuardExec
//!       CrossJoinExec
//!         GuardExec
//!           SecureScanExec a
//!         GuardExec
//!           SecureScanExec b
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::sorts::partial_sort::PartialSortExec;
use datafusion::physical_plan::spill::get_record_batch_memory_size;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

/// Puts a [`GuardExec`] above every node of `plan`; those below an operator that keeps its input
/// unaccounted also reserve what they pass up.
pub(crate) fn guard(
    plan: Arc<dyn ExecutionPlan>,
    max_batch_bytes: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let node = if keeps_input_unaccounted(node.as_ref()) {
            let children = node
                .children()
                .into_iter()
                .map(|child| match child.downcast_ref::<GuardExec>() {
                    Some(g) => Arc::new(GuardExec {
                        input: Arc::clone(&g.input),
                        max_batch_bytes,
                        holder: Some(node.name().to_string()),
                    }) as Arc<dyn ExecutionPlan>,
                    None => Arc::clone(child),
                })
                .collect();
            datafusion::physical_plan::replace_children_if_necessary(node, children)?
        } else {
            node
        };
        Ok(Transformed::yes(
            Arc::new(GuardExec::new(node, max_batch_bytes)) as Arc<dyn ExecutionPlan>,
        ))
    })
    .map(|t| t.data)
}

/// Operators that buffer their input without a memory reservation in DataFusion 55.
fn keeps_input_unaccounted(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<WindowAggExec>() || plan.is::<BoundedWindowAggExec>() || plan.is::<PartialSortExec>()
}

/// Yields to the runtime between batches of its input and bounds their size.
#[derive(Debug)]
pub struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    max_batch_bytes: usize,
    /// The operator above that keeps what this guard passes up, when it does not account it.
    holder: Option<String>,
}

impl GuardExec {
    fn new(input: Arc<dyn ExecutionPlan>, max_batch_bytes: usize) -> Self {
        Self {
            input,
            max_batch_bytes,
            holder: None,
        }
    }
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuardExec: max_batch_bytes={}", self.max_batch_bytes)?;
        match &self.holder {
            Some(holder) => write!(f, ", reserved for {holder}"),
            None => Ok(()),
        }
    }
}

impl ExecutionPlan for GuardExec {
    fn name(&self) -> &str {
        "GuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .filter(|_| children.is_empty())
            .ok_or_else(|| DataFusionError::Internal("GuardExec has one child".into()))?;
        Ok(Arc::new(Self {
            input,
            max_batch_bytes: self.max_batch_bytes,
            holder: self.holder.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let held = self.holder.as_ref().map(|holder| {
            MemoryConsumer::new(format!("{holder} (input kept)")).register(context.memory_pool())
        });
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(GuardStream {
            input,
            max_batch_bytes: self.max_batch_bytes,
            operator: self.input.name().to_string(),
            held,
        }))
    }
}

struct GuardStream {
    input: SendableRecordBatchStream,
    max_batch_bytes: usize,
    operator: String,
    /// Grows by every batch passed up to an operator that keeps them.
    held: Option<MemoryReservation>,
}

impl Stream for GuardStream {
    type Item = Result<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        // Pending once the task's budget is spent: the task returns to the runtime, which can
        // then run others on this thread, or drop (cancel) this one.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let next = self.input.poll_next_unpin(cx);
        if next.is_ready() {
            coop.made_progress();
        }
        match next {
            Poll::Ready(Some(Ok(batch))) => {
                let bytes = batch.get_array_memory_size();
                if bytes > self.max_batch_bytes {
                    return Poll::Ready(Some(Err(too_large(
                        &self.operator,
                        bytes,
                        self.max_batch_bytes,
                    ))));
                }
                if let Some(held) = &mut self.held {
                    // Buffers shared between its columns counted once.
                    if let Err(e) = held.try_grow(get_record_batch_memory_size(&batch)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(batch)))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for GuardStream {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.input.schema()
    }
}

/// The error of a batch or value past `[execution] max_batch_bytes`.
pub(crate) fn too_large(what: &str, bytes: usize, limit: usize) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "result too large: {what} would produce {} MiB in one batch, more than \
         [execution] max_batch_bytes ({} MiB); reduce the sizes of values the query builds",
        bytes >> 20,
        limit >> 20
    ))
}
