//! A deadline on DataFusion's optimizer: planning does not yield, and a statement that takes
//! the optimizer long (each pass of each rule over a large plan) held a query-runtime thread,
//! and with two such statements every other user's planning, for minutes. [`Deadline`] is put
//! after each of DataFusion's optimizer rules; past the deadline it fails, and the optimizer
//! (which does not skip failed rules) refuses the statement: planning ends within the deadline
//! plus one rule's pass.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::common::tree_node::Transformed;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};

/// How long one statement's optimization may take.
pub(crate) const PLANNING_DEADLINE: Duration = Duration::from_secs(10);

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `optimize` (on this thread) with the optimizer's deadline `within` from now.
pub(crate) fn within<T>(within: Duration, optimize: impl FnOnce() -> T) -> T {
    let before = DEADLINE.with(|d| d.replace(Some(Instant::now() + within)));
    let out = optimize();
    DEADLINE.with(|d| d.set(before));
    out
}

/// DataFusion's optimizer rules, each followed by a [`Deadline`].
pub(crate) fn rules_with_deadline() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let check: Arc<dyn OptimizerRule + Send + Sync> = Arc::new(Deadline);
    Optimizer::new()
        .rules
        .into_iter()
        .flat_map(|rule| [rule, check.clone()])
        .collect()
}

/// Fails once the thread's deadline has passed; changes nothing.
#[derive(Debug)]
struct Deadline;

impl OptimizerRule for Deadline {
    fn name(&self) -> &str {
        "lakegate_planning_deadline"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        match DEADLINE.with(Cell::get) {
            Some(deadline) if Instant::now() > deadline => {
                Err(DataFusionError::ResourcesExhausted(format!(
                    "planning took longer than {} s; the statement is too costly to plan (split \
                     it, or shorten its lists and expression chains)",
                    PLANNING_DEADLINE.as_secs()
                )))
            }
            _ => Ok(Transformed::no(plan)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn optimizing_past_the_deadline_is_refused() {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules_with_deadline())
            .build();
        let ctx = SessionContext::new_with_state(state.clone());
        let plan = ctx
            .sql("SELECT a + 1 FROM (VALUES (1), (2)) t(a) WHERE a > 1")
            .await
            .unwrap()
            .into_unoptimized_plan();
        // In time: optimized as DataFusion would.
        within(PLANNING_DEADLINE, || state.optimize(&plan)).unwrap();
        // Past it: refused, naming the deadline.
        let err = within(Duration::ZERO, || {
            std::thread::sleep(Duration::from_millis(2));
            state.optimize(&plan)
        });
        // The deadline starts before the sleep, so every check sees it passed.
        let err = err.unwrap_err().to_string();
        assert!(err.contains("planning took longer than"), "{err}");
    }
}
