//! How deep a planned statement is, measured before anything else walks it.
//!
//! DataFusion's analyzer, optimizer and physical planner recurse once per plan level (and more
//! per level in debug builds). The statement limits bound nesting as written, but common table
//! expressions are inlined where they are named: a chain of 175 CTEs, each selecting from the one
//! before (5 KB of SQL), planned 350 levels deep and overflowed a planning thread's stack, which
//! aborts the server (attacker round 19 H0). The plan is measured without recursion over its
//! inputs (subqueries recurse on a stack that grows), and refused past [`MAX_PLAN_DEPTH`].

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::GatewayError;

/// The deepest plan accepted, in plan nodes from the root to the deepest leaf, subqueries
/// included. A chain of 100 set operations or a 16-level nesting of queries plans well inside
/// it; the measured overflow (debug build, 16 MiB planning stacks) was past 320.
pub const MAX_PLAN_DEPTH: usize = 256;

/// Refuses `plan` when it is deeper than [`MAX_PLAN_DEPTH`].
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), GatewayError> {
    let depth = depth(plan, 0, MAX_PLAN_DEPTH);
    if depth > MAX_PLAN_DEPTH {
        return Err(GatewayError::TooLarge(format!(
            "it plans more than {MAX_PLAN_DEPTH} levels deep (common table expressions are \
             inlined where they are named, so a chain of them nests as deep as it is long); \
             write fewer levels"
        )));
    }
    Ok(())
}

/// The depth of `plan` below `base`, stopping once it passes `limit`.
fn depth(plan: &LogicalPlan, base: usize, limit: usize) -> usize {
    let mut deepest = base;
    let mut stack = vec![(plan, base + 1)];
    while let Some((node, d)) = stack.pop() {
        deepest = deepest.max(d);
        if deepest > limit {
            return deepest;
        }
        for sub in subqueries(node) {
            let below = stacker::maybe_grow(64 * 1024, 1024 * 1024, || depth(&sub, d, limit));
            deepest = deepest.max(below);
            if deepest > limit {
                return deepest;
            }
        }
        stack.extend(node.inputs().into_iter().map(|i| (i, d + 1)));
    }
    deepest
}

/// The plans of the subqueries in `node`'s expressions.
fn subqueries(node: &LogicalPlan) -> Vec<Arc<LogicalPlan>> {
    let mut found = Vec::new();
    let _ = node.apply_expressions(|e| {
        e.apply(|e| {
            match e {
                Expr::ScalarSubquery(s) => found.push(s.subquery.clone()),
                Expr::InSubquery(s) => found.push(s.subquery.subquery.clone()),
                Expr::Exists(s) => found.push(s.subquery.subquery.clone()),
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn plan(sql: &str) -> LogicalPlan {
        SessionContext::new()
            .state()
            .create_logical_plan(sql)
            .await
            .unwrap()
    }

    fn chain(n: usize) -> String {
        let ctes: Vec<String> = (1..=n)
            .map(|i| format!("c{i} AS (SELECT * FROM c{})", i - 1))
            .collect();
        format!(
            "WITH c0 AS (SELECT 1 AS x), {} SELECT count(*) FROM c{n}",
            ctes.join(", ")
        )
    }

    #[tokio::test]
    async fn a_long_chain_of_ctes_is_refused_and_a_short_one_is_not() {
        assert!(check(&plan(&chain(20)).await).is_ok());
        let err = check(&plan(&chain(175)).await).unwrap_err().to_string();
        assert!(err.contains("more than 256 levels deep"), "{err}");
    }

    #[tokio::test]
    async fn subqueries_count_toward_the_depth() {
        // Each level is a scalar subquery over the one below.
        let mut sql = "SELECT 1 AS x".to_string();
        for _ in 0..20 {
            sql = format!("SELECT ({sql}) AS x");
        }
        let depth = depth(&plan(&sql).await, 0, usize::MAX);
        // One projection per level: without the subqueries it would be 2.
        assert!(depth > 20, "{depth}");
    }

    #[tokio::test]
    async fn a_chain_of_one_hundred_unions_plans_inside_the_limit() {
        let sql = vec!["SELECT 1 AS x"; 101].join(" UNION ALL ");
        assert!(check(&plan(&sql).await).is_ok());
    }
}
