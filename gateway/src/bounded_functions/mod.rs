//! Bounded functions: no scalar function of a query builds more than `[execution]
//! max_batch_bytes` of values at once, and no literal is larger than a batch may hold.
//!
//! DataFusion's string and list functions allocate their whole output before anything can look
//! at it: `repeat(district, 60000)` over one batch asks for gigabytes outside the memory pool.
//! [`BoundFunctions`] (the last analyzer rule) wraps every function call of a plan in
//! [`Bounded`], which estimates each row's output from the arguments before the function runs
//! (exactly for the functions that grow their input — `repeat`, `lpad`, `replace`, `range`, … —
//! and as a small multiple of the arguments for the others), refuses a row whose estimate alone
//! is past the limit, runs the rows in slices whose estimates fit, and checks what each slice
//! really built.
//!
//! Before: `Projection: repeat(visits.district, Int64(60000))`
//! After:  the same text; the call's function is `Bounded(repeat)`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::optimizer::AnalyzerRule;

use crate::guard::too_large;

mod bounded;
mod checked;
pub(crate) mod patterns;
mod sizes;
#[cfg(test)]
mod tests;

pub(crate) use bounded::Bounded;
use bounded::*;
use checked::*;
use sizes::*;
pub(crate) use sizes::{fixed_width, scalar_bytes};

/// Wraps every scalar function call of a plan (and of its subqueries) in [`Bounded`].
#[derive(Debug)]
pub(crate) struct BoundFunctions {
    pub(crate) limit: usize,
}

impl AnalyzerRule for BoundFunctions {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|p| {
            // Output names stay as written: `a || b` is not renamed by the checks put in it.
            let names = datafusion::logical_expr::expr_rewriter::NamePreserver::new(&p);
            p.map_expressions(|e| {
                let saved = names.save(&e);
                bound(e, self.limit).map(|t| t.update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "lakegate_bound_functions"
    }
}

/// `expr` with every function call in it bounded, and the operands of `||` checked: a chain
/// of `||` then builds at most twice the limit before the operator above refuses it.
fn bound(expr: Expr, limit: usize) -> Result<Transformed<Expr>> {
    // `computed_once` walks the subtree of every node: only where a scalar subquery is (a
    // 990-term `||` chain otherwise took quadratic time to plan, attacker round 14 M1).
    if !expr.exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_))))? {
        return expr.transform_up(|e| bound_node(e, limit));
    }
    expr.transform_up(|e| bound_node(e, limit)?.transform_data(|e| computed_once(e, limit)))
}

/// `e` under `lakegate_subquery_value` when it computes one value from scalar subqueries' values
/// and constants (no column): a batch repeats that value for every row, as it repeats a literal,
/// but planning could not fold it into a literal and check it. `repeat((SELECT 'x'), 1000000)`
/// or a chain of `||` over subquery values would otherwise be gigabytes per batch.
fn computed_once(e: Expr, limit: usize) -> Result<Transformed<Expr>> {
    let wrapped =
        |e: &Expr| matches!(e, Expr::ScalarFunction(f) if f.func.name() == SUBQUERY_VALUE);
    if matches!(
        e,
        Expr::Alias(_) | Expr::Literal(..) | Expr::ScalarSubquery(_)
    ) || wrapped(&e)
    {
        return Ok(Transformed::no(e));
    }
    let mut subquery = false;
    let mut varies = false;
    e.apply(|x| {
        match x {
            Expr::ScalarSubquery(_) => subquery = true,
            Expr::Column(_)
            | Expr::OuterReferenceColumn(..)
            | Expr::AggregateFunction(_)
            | Expr::WindowFunction(_)
            | Expr::Unnest(_)
            | Expr::Placeholder(_) => varies = true,
            x if x.is_volatile_node() => varies = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if !subquery || varies {
        return Ok(Transformed::no(e));
    }
    Ok(Transformed::yes(subquery_value(e, limit)))
}

fn subquery_value(e: Expr, limit: usize) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(Checked::new(
            Check::SubqueryValue,
            limit,
        ))),
        vec![e],
    ))
}

fn built(e: Expr, limit: usize) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(Checked::new(Check::Built, limit))),
        vec![e],
    ))
}

/// A cast of a column to a type of varying width.
fn copies_column(input: &Expr, to: &DataType) -> bool {
    matches!(input, Expr::Column(_) | Expr::OuterReferenceColumn(..)) && !fixed_width(to)
}

fn is_built(args: &[Expr]) -> bool {
    matches!(args, [Expr::ScalarFunction(f)] if f.func.name() == BUILT)
}

fn bound_node(e: Expr, limit: usize) -> Result<Transformed<Expr>> {
    match e {
        e if varying_pattern(&e).is_some() => Err(DataFusionError::ResourcesExhausted(format!(
            "too costly: the pattern of {} must be a constant (a literal or a bound \
             parameter): a pattern that changes from row to row is compiled again for every \
             row, in one call that cannot yield",
            varying_pattern(&e).unwrap_or_default()
        ))),
        Expr::WindowFunction(w) if costly_window(&w) => {
            Err(DataFusionError::ResourcesExhausted(format!(
                "too costly: {}() as a window function goes over its whole frame again for \
                 every row (result too large or too slow in one call); use a ROWS frame of fewer \
                 than {MAX_WINDOW_ROWS} rows, or aggregate with GROUP BY",
                w.fun
            )))
        }
        Expr::BinaryExpr(mut b) if b.op == datafusion::logical_expr::Operator::StringConcat => {
            let checked = |e: Box<Expr>| {
                Box::new(Expr::ScalarFunction(
                    datafusion::logical_expr::expr::ScalarFunction::new_udf(
                        Arc::new(ScalarUDF::new_from_impl(Checked::new(
                            Check::Operand,
                            limit,
                        ))),
                        vec![*e],
                    ),
                ))
            };
            b.left = checked(b.left);
            b.right = checked(b.right);
            Ok(Transformed::yes(Expr::BinaryExpr(b)))
        }
        // Copies made without a function call, counted where they are made: 32 CASEs over a
        // computed binary column built 6.9 GB in one projection (attacker round 13 H1).
        // Counted at the outermost CASE only: what its branches copy is gone once it has made
        // its own output, and wrappers inside CASE branches take DataFusion's optimizer time
        // cubic in the nesting (990 nested CASEs held a core for minutes).
        Expr::Case(c) => {
            let inner = Expr::Case(c).transform_up(|x| match x {
                Expr::ScalarFunction(f) if f.func.name() == BUILT => Ok(Transformed::yes(
                    f.args.into_iter().next().expect("one argument"),
                )),
                other => Ok(Transformed::no(other)),
            })?;
            Ok(Transformed::yes(built(inner.data, limit)))
        }
        // A cast of a column: a cast of anything else copies a value already counted where it
        // was made (by a function, a CASE or this), and one copy alive at a time per chain.
        Expr::Cast(ref c) if copies_column(&c.expr, c.field.data_type()) => {
            Ok(Transformed::yes(built(e, limit)))
        }
        Expr::TryCast(ref c) if copies_column(&c.expr, c.field.data_type()) => {
            Ok(Transformed::yes(built(e, limit)))
        }
        // Bounding again what was bounded (a simplified call's result): counted once.
        Expr::ScalarFunction(f) if f.func.name() == BUILT && is_built(&f.args) => Ok(
            Transformed::yes(f.args.into_iter().next().expect("one argument")),
        ),
        // A scalar subquery's value is repeated over a batch as a literal is (by a projection,
        // CASE, or inside `array_has`/`strpos`/`array_position`, which return fixed-width
        // values and so pass unchecked): a 1.2 MB array took 9.6 GB (attacker round 7).
        Expr::ScalarSubquery(_) => Ok(Transformed::yes(subquery_value(e, limit))),
        Expr::AggregateFunction(mut f) if crate::bounded_aggregates::builds_values(&f.func) => {
            f.func = crate::bounded_aggregates::BoundedAggregate::wrap(f.func, limit);
            Ok(Transformed::yes(Expr::AggregateFunction(f)))
        }
        Expr::ScalarFunction(mut f) if !is_bounded(&f.func) => {
            f.func = Arc::new(ScalarUDF::new_from_impl(Bounded {
                inner: f.func,
                limit,
            }));
            Ok(Transformed::yes(Expr::ScalarFunction(f)))
        }
        other => Ok(Transformed::no(other)),
    }
}

/// What takes a pattern (LIKE, SIMILAR TO, `~`, `regexp_*`) whose pattern or flags are not
/// constant. Arrow compiles such a pattern once per row inside one kernel call: 8,192 rows of
/// 4,000-character LIKE patterns held both cores for minutes past a cancel, and `regexp_like`
/// keeps each row's compiled regex, outside the memory pool, until the batch ends (11 GB).
fn varying_pattern(e: &Expr) -> Option<String> {
    use datafusion::logical_expr::Operator::*;
    let (what, patterns): (String, Vec<&Expr>) = match e {
        Expr::Like(l) if l.case_insensitive => ("ILIKE".into(), vec![&l.pattern]),
        Expr::Like(l) => ("LIKE".into(), vec![&l.pattern]),
        Expr::SimilarTo(l) => ("SIMILAR TO".into(), vec![&l.pattern]),
        Expr::BinaryExpr(b)
            if matches!(
                b.op,
                RegexMatch
                    | RegexIMatch
                    | RegexNotMatch
                    | RegexNotIMatch
                    | LikeMatch
                    | ILikeMatch
                    | NotLikeMatch
                    | NotILikeMatch
            ) =>
        {
            (b.op.to_string(), vec![&b.right])
        }
        Expr::ScalarFunction(f) if f.func.name().starts_with("regexp_") => {
            let name = f.func.name();
            // regexp_replace's replacement (its third argument) is text, not a pattern.
            let patterns = f
                .args
                .iter()
                .enumerate()
                .filter(|(i, _)| *i > 0 && !(name == "regexp_replace" && *i == 2))
                .map(|(_, a)| a)
                .collect();
            (format!("{name}()"), patterns)
        }
        _ => return None,
    };
    patterns
        .into_iter()
        .any(|p| !is_constant(p))
        .then_some(what)
}

/// Whether `e` has one value for the whole query: no column, no subquery, no aggregate or
/// window, nothing volatile.
fn is_constant(e: &Expr) -> bool {
    !e.exists(|x| {
        Ok(matches!(
            x,
            Expr::Column(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::AggregateFunction(_)
                | Expr::WindowFunction(_)
                | Expr::Unnest(_)
        ) || x.is_volatile_node())
    })
    .unwrap_or(true)
}

/// The longest ROWS frame a list- or string-building aggregate may run over as a window.
const MAX_WINDOW_ROWS: u64 = 1024;

/// An aggregate that builds a list or string of its frame (`array_agg`, `string_agg`), run as a
/// window over a frame that is not a short ROWS frame: its output is frame × rows, built before
/// any batch is checked (20,000 rows of `array_agg(...) OVER ()` are 400 million elements).
/// The same for aggregates that look at their whole frame for every row's answer (`median`,
/// percentiles, DISTINCT): rows × frame work inside one call, which cannot yield (6 million
/// rows of a 4-million-row sliding median held a thread for minutes) — unless the frame is the
/// whole partition, answered once.
fn costly_window(w: &datafusion::logical_expr::expr::WindowFunction) -> bool {
    use datafusion::logical_expr::{WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition};
    let WindowFunctionDefinition::AggregateUDF(f) = &w.fun else {
        return false;
    };
    let building = matches!(f.name(), "array_agg" | "string_agg");
    let whole_frame_each_row = w.params.distinct
        || matches!(
            f.name(),
            "median"
                | "approx_median"
                | "approx_percentile_cont"
                | "approx_percentile_cont_with_weight"
                | "percentile_cont"
                | "quantile_cont"
                | "approx_distinct"
        );
    if !building && !whole_frame_each_row {
        return false;
    }
    let frame = &w.params.window_frame;
    let unbounded = |b: &WindowFrameBound| match b {
        WindowFrameBound::Preceding(v) | WindowFrameBound::Following(v) => v.is_null(),
        WindowFrameBound::CurrentRow => false,
    };
    if !building && unbounded(&frame.start_bound) && unbounded(&frame.end_bound) {
        return false;
    }
    let rows = |b: &WindowFrameBound| match b {
        WindowFrameBound::CurrentRow => Some(0),
        WindowFrameBound::Preceding(v) | WindowFrameBound::Following(v) => match v {
            ScalarValue::UInt64(Some(n)) => Some(*n),
            other => match other.cast_to(&DataType::UInt64).ok()? {
                ScalarValue::UInt64(Some(n)) => Some(n),
                _ => None,
            },
        },
    };
    let short = frame.units == WindowFrameUnits::Rows
        && match (rows(&frame.start_bound), rows(&frame.end_bound)) {
            (Some(a), Some(b)) => a.saturating_add(b) < MAX_WINDOW_ROWS,
            _ => false,
        };
    !short
}

fn is_bounded(f: &ScalarUDF) -> bool {
    let any: &dyn std::any::Any = f.inner().as_ref();
    any.is::<Bounded>() || f.name().starts_with("lakegate_")
}

/// The largest value a batch may repeat for every row: `limit` over the batch size.
fn literal_limit(limit: usize, config: &ConfigOptions) -> usize {
    limit / usize::from(config.execution.batch_size).max(1)
}

/// The refusal of a value of constants (folded at planning, or computed once and repeated for
/// every row) past the literal limit.
fn constant_too_large(what: &str, size: u128, limit: usize, most: usize) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "result too large: {what} would make a value of {size} bytes that is the same for every \
         row (folded at planning or repeated over a batch), more than [execution] \
         max_batch_bytes ({} MiB) allows; such values may be at most {most} bytes",
        limit >> 20
    ))
}
