//! The last check of every physical plan: data is read only through the barrier. Each leaf
//! of the plan (an operator without inputs) must be one that reads no table, or the secure
//! scan, whose own input (the Delta or held scan) is no child of it, so nothing is ever placed
//! between the raw scan and the barrier. Any other leaf — a Parquet, CSV or stream scan that
//! reached the plan by a path the catalog does not know of — refuses the query (fail closed):
//!
//! ```text
//! allowed:                                  refused:
//!   AggregateExec                             AggregateExec
//!     SecureScanExec (hr.employees)             DataSourceExec: file_groups=[…parquet]
//! ```
//!
//! Plans a cluster would run (issue 21) pass the same check before they are shipped.

use std::sync::Arc;

use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::explain::ExplainExec;
use datafusion::physical_plan::memory::LazyMemoryExec;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::work_table::WorkTableExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::enforce::secure_exec::SecureScanExec;

/// Refuses `plan` when one of its leaves could read data other than through the secure scan.
pub(crate) fn check(plan: &Arc<dyn ExecutionPlan>) -> datafusion::error::Result<()> {
    let mut pending = vec![plan];
    while let Some(node) = pending.pop() {
        let children = node.children();
        if children.is_empty() && !reads_no_table(node.as_ref()) {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "refused: the plan reads data through {}, which is not lakegate's secure scan \
                 (fail closed); please report the statement to the operator",
                node.name()
            )));
        }
        pending.extend(children);
    }
    Ok(())
}

/// Whether a leaf is the barrier or produces rows of its own (literals, series, recursion).
fn reads_no_table(leaf: &dyn ExecutionPlan) -> bool {
    let any: &dyn std::any::Any = leaf;
    if any.is::<SecureScanExec>()
        || any.is::<crate::products::ProductCallExec>()
        || any.is::<EmptyExec>()
        || any.is::<PlaceholderRowExec>()
        || any.is::<WorkTableExec>()
        || any.is::<LazyMemoryExec>()
        || any.is::<ExplainExec>()
    {
        return true;
    }
    // VALUES lists: rows written in the statement.
    any.downcast_ref::<DataSourceExec>().is_some_and(|d| {
        let source: &dyn std::any::Any = d.data_source().as_ref();
        source.is::<MemorySourceConfig>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    async fn physical(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn plans_without_tables_pass_and_a_raw_scan_is_refused() {
        let ctx = SessionContext::new();
        for sql in [
            "SELECT 1",
            "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) t(x, y) WHERE x > 1",
            "SELECT sum(value) FROM generate_series(1, 10)",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) \
             SELECT * FROM r",
            "EXPLAIN SELECT 1",
            "SELECT 1 WHERE false",
        ] {
            check(&physical(&ctx, sql).await).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        ctx.sql("SELECT 1 AS x")
            .await
            .unwrap()
            .write_parquet(path.to_str().unwrap(), Default::default(), None)
            .await
            .unwrap();
        ctx.register_parquet("raw", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        // Wired into lakegate's query planner: such a plan is never made.
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
            .with_query_planner(Arc::new(crate::enforce::min_group::LakegateQueryPlanner))
            .build();
        let lakegate = SessionContext::new_with_state(state);
        let err = lakegate
            .sql("SELECT * FROM raw")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not lakegate's secure scan"), "{err}");
        assert!(lakegate
            .sql("SELECT 1")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .is_ok());
        for sql in [
            "SELECT * FROM raw",
            "SELECT count(*) FROM (VALUES (1)) v(x) JOIN raw ON v.x = raw.x",
            "SELECT (SELECT max(x) FROM raw WHERE x > 0)",
        ] {
            let plan = physical(&ctx, sql).await;
            let err = check(&plan).map_err(|e| e.to_string()).expect_err(
                &datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string(),
            );
            assert!(err.contains("not lakegate's secure scan"), "{sql}: {err}");
        }
    }
}
