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
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::sorts::partial_sort::PartialSortExec;
use datafusion::physical_plan::spill::get_record_batch_memory_size;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

/// Puts a [`GuardExec`] above every node of `plan`; those below an operator that keeps its input
/// unaccounted also reserve what they pass up, and those below an operator that repeats rows
/// bound how wide a row may be.
pub(crate) fn guard(
    plan: Arc<dyn ExecutionPlan>,
    max_batch_bytes: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let repeated = repeated_columns(node.as_ref());
        let above = Above {
            name: node.name().to_string(),
            keeps: keeps_input_unaccounted(node.as_ref()),
            repeats: repeats_rows(node.as_ref()) && repeated.as_ref().is_none_or(|c| !c.is_empty()),
            repeated,
            copies: window_copies(node.as_ref()),
        };
        let node = if above.keeps || above.repeats {
            let children = node
                .children()
                .into_iter()
                .map(|child| match child.downcast_ref::<GuardExec>() {
                    Some(g) => Arc::new(GuardExec {
                        input: Arc::clone(&g.input),
                        max_batch_bytes,
                        above: Some(above.clone()),
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

/// How many window functions of `plan` return values of varying width: each may copy a column
/// of its input (`lag(b, 1)`, `last_value(b)`) into a column of its output, all built before the
/// guard above measures the batch (64 `lag`s of a 12 KB binary column: 9 GB, attacker round 14).
fn window_copies(plan: &dyn ExecutionPlan) -> usize {
    let exprs = if let Some(w) = plan.downcast_ref::<BoundedWindowAggExec>() {
        w.window_expr()
    } else if let Some(w) = plan.downcast_ref::<WindowAggExec>() {
        w.window_expr()
    } else {
        return 0;
    };
    exprs
        .iter()
        .filter(|w| {
            w.field().map_or(true, |f| {
                !crate::bounded_functions::fixed_width(f.data_type())
            })
        })
        .count()
}

/// Operators that buffer their input without a memory reservation in DataFusion 55.
fn keeps_input_unaccounted(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<WindowAggExec>() || plan.is::<BoundedWindowAggExec>() || plan.is::<PartialSortExec>()
}

/// Operators whose output repeats an input row (or a value made of many rows) for many output
/// rows (a recursive query, once per iteration), building a whole batch of them before any guard sees it: a cross join of a 20 MB
/// `string_agg` with 8,192 rows took the server's 24 GB and the OOM killer took the server.
fn repeats_rows(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<CrossJoinExec>()
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<HashJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<UnnestExec>()
        || plan.is::<RecursiveQueryExec>()
        || plan.is::<WindowAggExec>()
        || plan.is::<BoundedWindowAggExec>()
}

/// The input columns an operator that repeats rows repeats, when not all of them: UNNEST
/// repeats the columns it does not take apart, and none of a list it takes apart (a batch
/// call's list of 10,000 ids becomes 10,000 rows of one id each).
fn repeated_columns(plan: &dyn ExecutionPlan) -> Option<Vec<usize>> {
    let unnest = plan.downcast_ref::<UnnestExec>()?;
    let width = unnest.input().schema().fields().len();
    Some(
        (0..width)
            .filter(|i| {
                !unnest
                    .list_column_indices()
                    .iter()
                    .any(|l| l.index_in_input_schema == *i)
                    && !unnest.struct_column_indices().contains(i)
            })
            .collect(),
    )
}

/// The operator a guard passes its batches to, when that matters.
#[derive(Debug, Clone)]
struct Above {
    name: String,
    /// It keeps what it is given, unaccounted: reserve it.
    keeps: bool,
    /// It may repeat a row for a whole batch: no row may be wider than a batch's share.
    repeats: bool,
    /// The columns it repeats, when not all ([`repeated_columns`]).
    repeated: Option<Vec<usize>>,
    /// Window functions above that may each copy a column of the batch: the batch times this
    /// must fit `max_batch_bytes`.
    copies: usize,
}

/// Yields to the runtime between batches of its input and bounds their size.
#[derive(Debug)]
pub struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    max_batch_bytes: usize,
    /// The operator above, when it keeps or repeats what this guard passes up.
    above: Option<Above>,
}

impl GuardExec {
    fn new(input: Arc<dyn ExecutionPlan>, max_batch_bytes: usize) -> Self {
        Self {
            input,
            max_batch_bytes,
            above: None,
        }
    }
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuardExec: max_batch_bytes={}", self.max_batch_bytes)?;
        match &self.above {
            Some(a) if a.keeps => write!(f, ", reserved for {}", a.name),
            Some(a) => write!(f, ", rows bounded for {}", a.name),
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
            above: self.above.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let held = self.above.as_ref().filter(|a| a.keeps).map(|a| {
            MemoryConsumer::new(format!("{} (input kept)", a.name)).register(context.memory_pool())
        });
        // A row repeated for a whole batch must fit the batch: the literal limit.
        let widest = self.above.as_ref().filter(|a| a.repeats).map(|a| {
            let rows = context.session_config().batch_size().max(1);
            (
                a.name.clone(),
                self.max_batch_bytes / rows,
                a.repeated.clone(),
            )
        });
        let copied = self
            .above
            .as_ref()
            .filter(|a| a.copies > 0)
            .map(|a| (a.name.clone(), a.copies));
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(GuardStream {
            input,
            max_batch_bytes: self.max_batch_bytes,
            operator: self.input.name().to_string(),
            held,
            widest,
            copied,
            stashed: None,
        }))
    }
}

struct GuardStream {
    input: SendableRecordBatchStream,
    max_batch_bytes: usize,
    operator: String,
    /// Grows by every batch passed up to an operator that keeps them.
    held: Option<MemoryReservation>,
    /// The operator above that repeats rows, the widest row it may be given, and the columns
    /// that row is made of (all when `None`).
    widest: Option<(String, usize, Option<Vec<usize>>)>,
    /// The window operator above, and how many of its functions may copy a column.
    copied: Option<(String, usize)>,
    /// A checked batch waiting for the task's next turn (its budget was spent).
    stashed: Option<RecordBatch>,
}

impl GuardStream {
    /// The checks on a batch the operator below produced, before it goes up.
    fn checked(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut bytes = batch.get_array_memory_size();
        if bytes > self.max_batch_bytes {
            // A join's output takes rows of its build side as views and slices, holding that
            // side's whole buffers: TPC-H Q18 at SF 1 passed 348 MiB of buffers in batches of
            // a few MiB of values, and was refused. What the batch stands for is what the next
            // operator may copy; the buffers already exist.
            bytes = bytes.min(crate::row_size::stands_for(&batch) as usize);
        }
        if bytes > self.max_batch_bytes {
            return Err(too_large(&self.operator, bytes, self.max_batch_bytes));
        }
        if let Some((above, copies)) = &self.copied {
            let total = bytes.saturating_mul(*copies);
            if total > self.max_batch_bytes {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "result too large: {above} has {copies} window functions that \
                         may each copy a column of a {} MiB batch, past [execution] \
                         max_batch_bytes ({} MiB); use fewer such window functions or \
                         narrower values",
                    bytes >> 20,
                    self.max_batch_bytes >> 20
                )));
            }
        }
        if let Some((above, most, columns)) = &self.widest {
            let widest = match columns {
                Some(c) => crate::row_size::widest_row(&batch.project(c)?),
                None => crate::row_size::widest_row(&batch),
            };
            if widest > *most as u64 {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "result too large: a row of {widest} bytes reaches {above}, \
                         which may repeat it for every row of a batch, past \
                         [execution] max_batch_bytes ({} MiB); rows there may be at \
                         most {most} bytes",
                    self.max_batch_bytes >> 20
                )));
            }
        }
        if let Some(held) = &mut self.held {
            // Buffers shared between its columns counted once.
            held.try_grow(get_record_batch_memory_size(&batch))?;
        }
        Ok(batch)
    }
}

impl Stream for GuardStream {
    type Item = Result<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let batch = match self.stashed.take() {
            Some(batch) => batch,
            None => {
                // What the operator below computes in this poll is summed; the operator above
                // then counts afresh for the batch it is given.
                let turn = crate::batch_width::Turn::begin();
                let next = self.input.poll_next_unpin(cx);
                drop(turn);
                match next {
                    Poll::Ready(Some(Ok(batch))) => match self.checked(batch) {
                        Ok(batch) => batch,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    },
                    other => return other,
                }
            }
        };
        // Each batch passed up spends the task's budget; once it is spent the task returns to
        // the runtime, which can run others on this thread or drop (cancel) this one, and the
        // batch waits here. Spent on the way up, not before polling below: checked before,
        // a plan with more guards on one path than the budget (a 130-way join) never reached
        // its leaves and spun until cancelled.
        match tokio::task::coop::poll_proceed(cx) {
            Poll::Ready(coop) => {
                coop.made_progress();
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Pending => {
                self.stashed = Some(batch);
                Poll::Pending
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn unnest_bounds_the_columns_it_repeats_not_the_list_it_takes_apart() {
        // One row: a list of 1,000 ints (8 KB) and a text of 1,000 bytes. 1 MiB over 8,192
        // rows allows rows of 128 bytes where a row is repeated.
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS SELECT range(1000) AS v, repeat('w', 1000) AS w")
            .await
            .unwrap();
        let run = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let plan = ctx
                    .sql(sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                let plan = guard(plan, 1 << 20).unwrap();
                datafusion::physical_plan::collect(plan, ctx.task_ctx()).await
            }
        };
        let rows: usize = run("SELECT unnest(v) AS x FROM t")
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 1000);
        let err = run("SELECT unnest(v) AS x, w FROM t").await.unwrap_err();
        assert!(err.to_string().contains("reaches UnnestExec"), "{err}");
    }

    #[tokio::test]
    async fn a_batch_is_measured_by_what_it_stands_for_not_the_buffers_it_shares() {
        use datafusion::arrow::array::{Array, StringArray, StringViewArray};
        let limit = 1 << 20;
        let schema = |t: DataType| Arc::new(Schema::new(vec![Field::new("s", t, false)]));
        let run = |batch: RecordBatch| async move {
            let schema = batch.schema();
            let plan = Arc::new(GuardExec::new(
                MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap(),
                limit,
            ));
            datafusion::physical_plan::collect(plan, SessionContext::new().task_ctx()).await
        };
        // Ten short strings viewing one 4 MiB buffer (a join's output of build-side rows): a
        // few hundred bytes of values, passed.
        let big: StringViewArray = std::iter::once("x".repeat(4 << 20))
            .chain((0..10).map(|i| format!("row {i}")))
            .map(Some)
            .collect();
        let few = big.slice(1, 10);
        assert!(few.get_array_memory_size() > limit);
        let ok = RecordBatch::try_new(schema(DataType::Utf8View), vec![Arc::new(few)]).unwrap();
        assert_eq!(run(ok).await.unwrap()[0].num_rows(), 10);
        // A slice of plain strings likewise.
        let plain: StringArray = std::iter::once("x".repeat(4 << 20))
            .chain((0..10).map(|i| format!("row {i}")))
            .map(Some)
            .collect();
        let sliced =
            RecordBatch::try_new(schema(DataType::Utf8), vec![Arc::new(plain.slice(1, 10))])
                .unwrap();
        assert_eq!(run(sliced).await.unwrap()[0].num_rows(), 10);
        // Values that are really there are still refused: the 4 MiB string itself, and views
        // that repeat it.
        let whole =
            RecordBatch::try_new(schema(DataType::Utf8View), vec![Arc::new(big.slice(0, 1))])
                .unwrap();
        let err = run(whole).await.unwrap_err().to_string();
        assert!(err.contains("result too large"), "{err}");
        let repeated = big.slice(0, 1);
        let many = datafusion::arrow::compute::take(
            &repeated,
            &datafusion::arrow::array::UInt32Array::from(vec![0u32; 3]),
            None,
        )
        .unwrap();
        let err = run(RecordBatch::try_new(schema(DataType::Utf8View), vec![many]).unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("result too large"), "{err}");
    }

    #[tokio::test]
    async fn more_guards_on_one_path_than_a_tasks_budget_still_run() {
        // Round 19: guards spent the task's budget (128) before polling below, so 129 on one
        // path never reached the source and the task spun until it was dropped.
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batches: Vec<RecordBatch> = (0..50)
            .map(|i| {
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![i]))])
                    .unwrap()
            })
            .collect();
        let mut plan: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[batches], schema, None).unwrap();
        for _ in 0..300 {
            plan = Arc::new(GuardExec::new(plan, 1 << 20));
        }
        let ctx = SessionContext::new().task_ctx();
        // In a task of its own, as queries run: the budget applies there.
        let rows = tokio::spawn(async move {
            let stream = plan.execute(0, ctx).unwrap();
            let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await?;
            Ok::<_, DataFusionError>(batches.iter().map(|b| b.num_rows()).sum::<usize>())
        });
        let rows = tokio::time::timeout(std::time::Duration::from_secs(60), rows)
            .await
            .expect("the guarded plan ran")
            .unwrap()
            .unwrap();
        assert_eq!(rows, 50);
    }
}
