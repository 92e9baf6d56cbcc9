//! How deep a planned statement is, measured before anything else walks it.
//!
//! DataFusion's analyzer, optimizer and physical planner recurse once per plan level (and more
//! per level in debug builds). The statement limits bound nesting as written, but common table
//! expressions are inlined where they are named: a chain of 175 CTEs, each selecting from the one
//! before (5 KB of SQL), planned 350 levels deep and overflowed a planning thread's stack, which
//! aborts the server (attacker round 19 H0). The plan is measured without recursion over its
//! inputs (subqueries recurse on a stack that grows), and refused past [`MAX_PLAN_DEPTH`] or
//! [`MAX_JOINS`].

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};

use crate::GatewayError;

/// The deepest plan accepted, in plan nodes from the root to the deepest leaf, subqueries
/// included. A chain of 100 set operations or a 16-level nesting of queries plans well inside
/// it; the measured overflow (debug build, 16 MiB planning stacks) was past 320.
pub const MAX_PLAN_DEPTH: usize = 256;

/// The most joins a planned statement may make, subqueries included: the optimizer's time
/// grows steeply with them (a 200-way self-join ran into the 10 s deadline after 12 s, 250-way
/// after 25-32 s; 120-way planned and ran in 2.2 s, debug build).
pub const MAX_JOINS: usize = 128;

/// The most a plan's depth (plus 16) times its deepest expression's depth squared may be:
/// physical planning's time grows about so (a 500-term `+` chain under 80 GROUP BY levels,
/// 12.7 KB, planned 33 s outside the optimizer's deadline; two users stalled everyone 66 s,
/// attacker round 20 H2). At the bound, 80 such levels over a 170-term chain plan in about
/// 3 s (debug build); a plan a few levels deep keeps expressions about 650 deep.
pub const MAX_DEPTH_WORK: u64 = 8 * 1000 * 1000;

/// Refuses `plan` when it is deeper than [`MAX_PLAN_DEPTH`] or joins more than [`MAX_JOINS`]
/// times.
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), GatewayError> {
    let mut measure = Measure::default();
    measure.walk(plan, 0);
    if measure.deepest > MAX_PLAN_DEPTH {
        return Err(GatewayError::TooLarge(format!(
            "it plans more than {MAX_PLAN_DEPTH} levels deep (common table expressions are \
             inlined where they are named, so a chain of them nests as deep as it is long); \
             write fewer levels"
        )));
    }
    let work = (measure.deepest_expr as u64).pow(2) * (measure.deepest as u64 + 16);
    if work > MAX_DEPTH_WORK {
        return Err(GatewayError::TooLarge(format!(
            "an expression {} levels deep (a run of ANDs or ORs counted by its terms) in a plan \
             {} levels deep would take too long to plan; write shallower expressions (fewer \
             chained operators, IN lists instead of many ORs) or fewer levels",
            measure.deepest_expr, measure.deepest
        )));
    }
    if measure.joins > MAX_JOINS {
        return Err(GatewayError::TooLarge(format!(
            "it joins more than {MAX_JOINS} times (common table expressions counted where \
             they are named); join fewer tables in one statement"
        )));
    }
    Ok(())
}

/// The deepest path of a plan and its joins, counted until either passes its limit.
#[derive(Default)]
struct Measure {
    deepest: usize,
    joins: usize,
    /// The deepest expression of any node.
    deepest_expr: usize,
}

impl Measure {
    fn done(&self) -> bool {
        self.deepest > MAX_PLAN_DEPTH || self.joins > MAX_JOINS
    }

    /// Walks `plan`, whose root is `base` levels down, without recursion over its inputs.
    fn walk(&mut self, plan: &LogicalPlan, base: usize) {
        let mut stack = vec![(plan, base + 1)];
        while let Some((node, d)) = stack.pop() {
            self.deepest = self.deepest.max(d);
            if matches!(node, LogicalPlan::Join(_)) {
                self.joins += 1;
            }
            let _ = node.apply_expressions(|e| {
                self.deepest_expr = self.deepest_expr.max(expr_depth(e));
                Ok(TreeNodeRecursion::Continue)
            });
            if self.done() {
                return;
            }
            for sub in subqueries(node) {
                stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.walk(&sub, d));
                if self.done() {
                    return;
                }
            }
            stack.extend(node.inputs().into_iter().map(|i| (i, d + 1)));
        }
    }
}

/// How deep `e` nests, walked without recursion, with a run of ANDs or ORs counted as deep as
/// it has terms: DataFusion's optimizer flattens such a run and rebuilds it as a chain, so a
/// balanced tree of 32,000 ANDs (15 levels as written) overflowed a 64 MiB stack in
/// `reorder_predicates` (the server died), and took 19 s at 8,000-32,000 terms (attacker round
/// 21 H0, H3).
fn expr_depth(e: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(e, 1usize, None)];
    while let Some((e, d, above)) = stack.pop() {
        deepest = deepest.max(d);
        let op = junction(e);
        if let Some(run) = op.filter(|o| Some(*o) != above) {
            // At the top of a run only: its terms count once.
            deepest = deepest.max(d - 1 + terms(e, run));
        }
        let _ = e.apply_children(|c| {
            stack.push((c, d + 1, op));
            Ok(TreeNodeRecursion::Continue)
        });
    }
    deepest
}

/// `e`'s operator if it is AND or OR.
fn junction(e: &Expr) -> Option<Operator> {
    match e {
        Expr::BinaryExpr(b) if matches!(b.op, Operator::And | Operator::Or) => Some(b.op),
        _ => None,
    }
}

/// The terms of the run of `op` that `e` heads (a term is anything but another `op`).
fn terms(e: &Expr, op: Operator) -> usize {
    let mut n = 0;
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(b) if b.op == op => {
                stack.push(&b.left);
                stack.push(&b.right);
            }
            _ => n += 1,
        }
    }
    n
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
        let mut measure = Measure::default();
        measure.walk(&plan(&sql).await, 0);
        // One projection per level: without the subqueries it would be 2.
        assert!(measure.deepest > 20, "{}", measure.deepest);
    }

    #[tokio::test]
    async fn joins_are_counted_across_the_statement() {
        let joins = |n: usize| {
            let on: Vec<String> = (1..=n)
                .map(|i| format!("JOIN (SELECT 1 AS x) t{i} ON t{i}.x = t0.x"))
                .collect();
            format!("SELECT count(*) FROM (SELECT 1 AS x) t0 {}", on.join(" "))
        };
        assert!(check(&plan(&joins(100)).await).is_ok());
        let err = check(&plan(&joins(129)).await).unwrap_err().to_string();
        assert!(err.contains("joins more than 128 times"), "{err}");
    }

    #[test]
    fn deep_expressions_in_deep_plans_are_refused() {
        // Planned as the server plans: on a thread with a large stack.
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(deep_expressions_in_deep_plans())
            })
            .unwrap()
            .join()
            .unwrap();
    }

    async fn deep_expressions_in_deep_plans() {
        let sum = |m: usize| vec!["length(x)"; m].join(" + ");
        let chain = |n: usize, m: usize| {
            let levels: Vec<String> = (1..=n)
                .map(|i| format!("c{i} AS (SELECT x FROM c{} GROUP BY x)", i - 1))
                .collect();
            let with = std::iter::once(format!(
                "c0 AS (SELECT x FROM (VALUES ('a')) t(x) WHERE {} > 0)",
                sum(m)
            ))
            .chain(levels)
            .collect::<Vec<_>>()
            .join(", ");
            format!("WITH {with} SELECT count(*) FROM c{n}")
        };
        let err = check(&plan(&chain(80, 500)).await).unwrap_err().to_string();
        assert!(err.contains("would take too long to plan"), "{err}");
        check(&plan(&chain(80, 100)).await).unwrap();
        // Alone, an expression may be deep.
        check(&plan(&format!("SELECT {} > 0 FROM (VALUES ('a')) t(x)", sum(600))).await).unwrap();
    }

    #[test]
    fn a_balanced_run_of_ands_counts_by_its_terms() {
        use datafusion::prelude::{col, lit};
        // 2^12 comparisons in a balanced tree 13 levels deep.
        let mut level: Vec<Expr> = (0..4096).map(|i| col("x").not_eq(lit(i))).collect();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| p[0].clone().and(p[1].clone()))
                .collect();
        }
        assert_eq!(expr_depth(&level[0]), 4096);
        // Short runs: the tree's own depth (AND, OR, =, column).
        let short = col("a")
            .eq(lit(1))
            .and(col("b").eq(lit(2)).or(col("c").eq(lit(3))));
        assert_eq!(expr_depth(&short), 4);
    }

    #[tokio::test]
    async fn a_chain_of_one_hundred_unions_plans_inside_the_limit() {
        let sql = vec!["SELECT 1 AS x"; 101].join(" UNION ALL ");
        assert!(check(&plan(&sql).await).is_ok());
    }
}
