//! The shape of a query that releases an aggregate-only column: what its aggregates may count.
//!
//! "count, sum or avg of a bare column" is not enough by itself: the column can be made
//! anywhere below the aggregate. `LEFT JOIN (VALUES (8193)) v(id) ON v.id = h.visit_id` makes
//! `count(v.id)` an indicator of one visit; `JOIN (SELECT visit_id, CASE ... END w ...)` makes
//! `sum(w)` a tracker; `JOIN ... ON h.id = t.id OR t.id = 8193` doubles every row but one, so that
//! `count(*)`'s parity names the group of visit 8193. In a releasing query therefore:
//!
//! - every aggregate argument is a *raw* column: a lake table's column, passed up through plain
//!   column references only (not a literal, a VALUES list, a computed or aggregated value);
//! - joins are equi-joins of raw columns (an expression as key, `ON (v.id = 8193) = (w.id > 1)`,
//!   matches a chosen row twice) without a residual filter: no outer join (its NULL padding is an
//!   indicator), no cross join, no OR or inequality condition (a row's multiplicity would depend
//!   on a chosen row);
//! - under the k rule, only semi and anti joins (`IN`, `EXISTS`, `NOT IN`, `NOT EXISTS`): an inner
//!   join repeats each row once per match, and the matches are the caller's to choose. Joined on
//!   a key that is not unique on the other side, with that side filtered to one row per key but
//!   two for a chosen person's key (attacker round 7: `JOIN visits w ON h.district = w.district`
//!   kept both ways by a WHERE, or a patient's other visits), `count(*) - count(DISTINCT id)`
//!   names that person's group. A semi join only keeps or drops rows, as WHERE does. (Under
//!   differential privacy each subject counts once however often its rows repeat: inner
//!   equi-joins stay allowed there.)
//! - no UNION, INTERSECT or EXCEPT (a branch can add or drop a chosen row's copy), and no release
//!   in the recursive part of a recursive query (it would run once per iteration, over inputs
//!   that change between them).
//!
//! A query releases at most once (two releases in one query, one leaving a chosen row out, can
//! be differenced). Differencing across queries is what the k rule cannot stop;
//! `policy-model.md` §5 says so and offers differential privacy.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};

use crate::enforce::dp_release::DpRelease;
use crate::enforce::min_group::MinGroupRelease;
use crate::GatewayError;

fn refuse(why: &str) -> GatewayError {
    GatewayError::AggregateOnly(format!(
        "the query releases an aggregate-only column, so {why}"
    ))
}

/// Which output columns of `plan` are raw lake columns, by position.
pub(crate) fn raw_columns(plan: &LogicalPlan) -> Vec<bool> {
    let width = plan.schema().fields().len();
    let from_input = |input: &LogicalPlan, exprs: &[Expr]| -> Vec<bool> {
        let raw = raw_columns(input);
        exprs
            .iter()
            .map(|e| {
                let e = match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    e => e,
                };
                match e {
                    Expr::Column(c) => input
                        .schema()
                        .index_of_column(c)
                        .is_ok_and(|i| raw.get(i).copied().unwrap_or(false)),
                    _ => false,
                }
            })
            .collect()
    };
    match plan {
        LogicalPlan::TableScan(_) => vec![true; width],
        LogicalPlan::Projection(p) => from_input(&p.input, &p.expr),
        LogicalPlan::Aggregate(a) => {
            let mut raw = from_input(&a.input, &a.group_expr);
            raw.resize(width, false);
            raw
        }
        LogicalPlan::Window(w) => {
            let mut raw = raw_columns(&w.input);
            raw.resize(width, false);
            raw
        }
        LogicalPlan::Join(j) => {
            let mut raw = match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    raw_columns(&j.left)
                }
                JoinType::RightSemi | JoinType::RightAnti => raw_columns(&j.right),
                _ => {
                    let mut raw = raw_columns(&j.left);
                    raw.extend(raw_columns(&j.right));
                    raw
                }
            };
            raw.resize(width, false);
            raw
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Distinct(_) => {
            let inputs = plan.inputs();
            match inputs.as_slice() {
                [input] => {
                    let mut raw = raw_columns(input);
                    raw.resize(width, false);
                    raw
                }
                _ => vec![false; width],
            }
        }
        // Values, empty relations, unnest, set operations, extensions (a release above a
        // lower aggregate among them): nothing raw.
        _ => vec![false; width],
    }
}

/// The release a node is, if it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The minimum-group (k) rule: exact counts of the groups it keeps.
    MinGroup,
    /// Differential privacy: each subject counted once, with noise.
    Private,
}

fn release_of(plan: &LogicalPlan) -> Option<Release> {
    match plan {
        LogicalPlan::Extension(e) if e.node.as_any().is::<MinGroupRelease>() => {
            Some(Release::MinGroup)
        }
        LogicalPlan::Extension(e) if e.node.as_any().is::<DpRelease>() => Some(Release::Private),
        _ => None,
    }
}

/// Checks every node at or below a release (what computes the released values): aggregate
/// arguments are raw, joins are inner equi-joins, no set operation or VALUES list. What sits
/// above every release only sees released groups.
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), GatewayError> {
    // One minimum-group release per query: two (one leaving a chosen row out) differenced
    // against each other in the same query name that row's group.
    let mut releases = 0usize;
    let _ = plan.apply_with_subqueries(|p| {
        if matches!(p, LogicalPlan::Extension(e) if e.node.as_any().is::<MinGroupRelease>()) {
            releases += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if releases > 1 {
        return Err(refuse(&format!(
            "it may release it once, not {releases} times: released aggregates compared in one \
             query can be differenced (one leaving a chosen row out names that row's group); \
             run them as separate queries"
        )));
    }
    walk(plan, None, false)
}

/// `below`: the nearest release above `plan` (k wins over DP when both are, for the stricter
/// join rule); `recursive`: inside the recursive part of a recursive query.
fn walk(plan: &LogicalPlan, below: Option<Release>, recursive: bool) -> Result<(), GatewayError> {
    let here = release_of(plan);
    if here.is_some() && recursive {
        return Err(refuse(
            "it may not be released inside the recursive part of a recursive query (the release \
             would run once per iteration)",
        ));
    }
    let below = match (below, here) {
        (Some(Release::MinGroup), _) | (_, Some(Release::MinGroup)) => Some(Release::MinGroup),
        (b, h) => b.or(h),
    };
    if let Some(release) = below {
        check_node(plan, release)?;
    }
    let mut result = Ok(());
    let _ = plan.apply_subqueries(|sub| {
        result = walk(sub, below, recursive);
        Ok(if result.is_ok() {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    result?;
    if let LogicalPlan::RecursiveQuery(r) = plan {
        walk(&r.static_term, below, recursive)?;
        return walk(&r.recursive_term, below, true);
    }
    for input in plan.inputs() {
        walk(input, below, recursive)?;
    }
    Ok(())
}

fn check_node(plan: &LogicalPlan, release: Release) -> Result<(), GatewayError> {
    let why = match plan {
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner && release == Release::MinGroup => {
            Some(
                "inner joins are refused: a join repeats rows as often as they match, which the \
                 caller can choose for one person; filter with IN or EXISTS instead"
                    .to_string(),
            )
        }
        LogicalPlan::Join(j) => match j.join_type {
            JoinType::Inner
            | JoinType::LeftSemi
            | JoinType::RightSemi
            | JoinType::LeftAnti
            | JoinType::RightAnti
            | JoinType::LeftMark => {
                let (left, right) = (raw_columns(&j.left), raw_columns(&j.right));
                let raw_keys = j.on.iter().all(|(l, r)| {
                    raw_argument(l, &j.left, &left) && raw_argument(r, &j.right, &right)
                });
                if j.on.is_empty() {
                    Some("joins need an equality condition (no cross join)".to_string())
                } else if !raw_keys {
                    // `ON (v.id = 8193) = (w.id > 1)` matches a chosen row twice.
                    Some(
                        "joins compare lake columns as they are (no expressions as join keys)"
                            .to_string(),
                    )
                } else if j.filter.is_some() {
                    Some(
                        "joins may only compare columns for equality (no OR or inequality in ON)"
                            .to_string(),
                    )
                } else {
                    None
                }
            }
            _ => Some("outer joins are refused (use an inner join)".to_string()),
        },
        LogicalPlan::Union(_) => Some("UNION, INTERSECT and EXCEPT are refused".to_string()),
        LogicalPlan::Values(_) => Some("VALUES lists are refused".to_string()),
        LogicalPlan::Aggregate(a) => {
            let raw = raw_columns(&a.input);
            a.aggr_expr.iter().find_map(|e| {
                let e = match e {
                    Expr::Alias(al) => al.expr.as_ref(),
                    e => e,
                };
                let Expr::AggregateFunction(f) = e else {
                    return None;
                };
                let name = f.func.name();
                f.params.args.iter().find_map(|arg| {
                    let counts_rows = name == "count" && matches!(arg, Expr::Literal(..));
                    (!counts_rows && !raw_argument(arg, &a.input, &raw)).then(|| {
                        format!(
                            "every aggregate reads a lake table's own column: {name}() of a \
                         literal, VALUES or computed column is refused"
                        )
                    })
                })
            })
        }
        _ => None,
    };
    why.map_or(Ok(()), |why| Err(refuse(&why)))
}

/// Whether an aggregate's argument `arg` over `input` (whose raw columns are `raw`) is a raw
/// lake column.
fn raw_argument(arg: &Expr, input: &LogicalPlan, raw: &[bool]) -> bool {
    let column = match arg {
        Expr::Column(c) => c,
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Column(c) => c,
            _ => return false,
        },
        Expr::TryCast(c) => match c.expr.as_ref() {
            Expr::Column(c) => c,
            _ => return false,
        },
        _ => return false,
    };
    input
        .schema()
        .index_of_column(column)
        .is_ok_and(|i| raw.get(i).copied().unwrap_or(false))
}
