//! Aggregate-only columns (`policy-model.md` §5): the checker and the minimum-group rewrite.
//!
//! The checker follows every aggregate-only column through the plan (subqueries included) and
//! refuses any flow other than the bare argument of `count`, `count(DISTINCT)`, `sum`, `avg`, or a
//! bare GROUP BY key. In a query that releases such a column, every aggregate of the query is one
//! of those over a bare column, and the releasing aggregate's keys are bare columns: no per-group
//! computation (`array_agg(name)`, `sum(CASE WHEN id = 10 ...)`) can name people. Each aggregate
//! such a column flows into is then given a [`MinGroupRelease`] directly above it, so that every
//! released group covers at least k distinct subjects and nothing above sees another:
//!
//! ```text
//! before:                                   after:
//!   Aggregate: groupBy=[diagnosis]            MinGroupRelease: __lakegate_k0 >= 10
//!     aggr=[count(*)]                           Aggregate: groupBy=[diagnosis]
//!     TableScan: health.visits                    aggr=[count(*), count(DISTINCT __lakegate_subject) AS __lakegate_k0]
//!                                                 TableScan: health.visits (+ __lakegate_subject)
//! ```
//!
//! Without GROUP BY the one group's aggregates become NULL below k, so that 0 and 1..k-1 look the
//! same. The subject column is served by the secure scan only to this rewrite: user SQL cannot
//! name it, and it never reaches the output. [`verify`] runs the checker again on the optimized
//! plan: whatever DataFusion moved, no aggregate-only column is used below the release, and every
//! aggregate that consumes one sits under a release.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::default_table_source::{provider_as_source, source_as_provider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, TableReference};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::count::count_distinct;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    col, lit, when, Aggregate, Expr, Filter, LogicalPlan, Projection, TableScan, TableScanBuilder,
};

use crate::enforce::dp_release::{DpRelease, DpSpec, Measure, DP_PREFIX};
use crate::enforce::min_group::{Check, MinGroupRelease, K_PREFIX};
use crate::enforce::secure_scan::{SecureTable, SUBJECT_COLUMN};
use crate::GatewayError;

mod checker;
mod dp;
mod nodes;
mod release;

use checker::*;
pub(crate) use dp::display_form;
use dp::*;
pub use release::Suppressed;
use release::*;

/// Checks `plan` and puts a release above each aggregate that releases aggregate-only columns;
/// `suppressed` counts the groups withheld when it runs.
pub(crate) fn enforce(
    plan: LogicalPlan,
    suppressed: &Suppressed,
) -> Result<LogicalPlan, GatewayError> {
    let mut checker = Checker {
        needs_check: Vec::new(),
        released: Vec::new(),
        seen: Taint::new(),
    };
    let root = checker.walk(&plan, &Taint::new())?;
    if let Some((c, o)) = root.iter().next() {
        return Err(refuse(
            "it may not reach the output; use count, sum, avg or GROUP BY",
            c,
            o,
        ));
    }
    if checker.needs_check.is_empty() {
        return Ok(plan);
    }
    safe_aggregates(&plan)?;
    let needs = checker.needs_check;
    let rewritten = plan
        .transform_up_with_subqueries(|node| rewrite(node, &needs, suppressed))
        .map(|t| t.data)
        .map_err(|e| GatewayError::AggregateOnly(e.strip_backtrace()))?;
    // The subject column exists for the check only; it must never be an output.
    if rewritten
        .schema()
        .fields()
        .iter()
        .any(|f| f.name() == SUBJECT_COLUMN)
    {
        return Err(GatewayError::AggregateOnly(
            "the query would output the subject key; select columns explicitly".into(),
        ));
    }
    Ok(rewritten)
}

/// Checks an optimized plan again: no aggregate-only column is used where the checker refuses
/// it (a filter or join condition pushed below an aggregate, a filter pushed into a scan), and
/// every aggregate that consumes one has a release above it.
pub(crate) fn verify(plan: &LogicalPlan) -> Result<(), GatewayError> {
    let mut checker = Checker {
        needs_check: Vec::new(),
        released: Vec::new(),
        seen: Taint::new(),
    };
    let root = checker.walk(plan, &Taint::new())?;
    if let Some((c, o)) = root.iter().next() {
        return Err(refuse(
            "it may not reach the output; use count, sum, avg or GROUP BY",
            c,
            o,
        ));
    }
    if checker.needs_check.is_empty() {
        return Ok(());
    }
    let unreleased = checker
        .needs_check
        .iter()
        .any(|(s, _)| !checker.released.iter().any(|r| Arc::ptr_eq(r, s) || r == s));
    if unreleased {
        return Err(GatewayError::AggregateOnly(
            "an aggregate-only column would be released without its minimum-group check; the query is refused"
                .into(),
        ));
    }
    safe_aggregates(plan)?;
    crate::enforce::release_shape::check(plan)
}

/// In a query that releases an aggregate-only column, every aggregate anywhere in it is
/// `count`, `count(DISTINCT)`, `sum` or `avg` of one bare column (`count` of a constant too),
/// with no FILTER and no ORDER BY: `min(name)`, `array_agg(id)` or `sum(CASE WHEN id = 10 ...)`
/// per group would name the people in it.
fn safe_aggregates(plan: &LogicalPlan) -> Result<(), GatewayError> {
    let mut refusal = None;
    let _ = plan.apply_with_subqueries(|p| {
        let LogicalPlan::Aggregate(a) = p else {
            return Ok(TreeNodeRecursion::Continue);
        };
        for e in &a.aggr_expr {
            let inner = match e {
                Expr::Alias(al) => al.expr.as_ref(),
                e => e,
            };
            let why = match inner {
                Expr::AggregateFunction(AggregateFunction { func, params }) => {
                    let name = func.name();
                    let arg_ok = match params.args.as_slice() {
                        [arg] => {
                            bare_column(arg).is_some()
                                || widening_cast_of_column(arg, a.input.schema())
                                || (name == "count" && matches!(arg, Expr::Literal(..)))
                        }
                        _ => false,
                    };
                    if !matches!(name, "count" | "sum" | "avg") {
                        Some(format!("{name}() is refused"))
                    } else if params.distinct && name != "count" {
                        Some(format!("{name}(DISTINCT ...) is refused"))
                    } else if !arg_ok {
                        Some(format!(
                            "{name}() of an expression is refused; aggregate a bare column"
                        ))
                    } else if params.filter.is_some() {
                        Some("aggregates with FILTER are refused".to_string())
                    } else if !params.order_by.is_empty() {
                        Some("an aggregate's ORDER BY is refused".to_string())
                    } else {
                        None
                    }
                }
                other => Some(format!("{} is refused", other.schema_name())),
            };
            if let Some(why) = why {
                refusal = Some(GatewayError::AggregateOnly(format!(
                    "the query releases an aggregate-only column, so every aggregate in it is count, count(DISTINCT), sum or avg of a bare column: {why}"
                )));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match refusal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
