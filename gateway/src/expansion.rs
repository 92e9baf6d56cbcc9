//! What DataFusion's planning multiplies, bounded on the parsed statement before it plans:
//! SELECT aliases named in GROUP BY, HAVING, QUALIFY and ORDER BY (each name is replaced by the
//! aliased expression), and grouping sets (`CUBE(n)` is 2^n of them, each input row expanded
//! into every set inside one poll of the aggregate, which neither yields nor feels
//! cancellation meanwhile).
//!
//! The statement's text is bounded (`[execution] max_sql_bytes`); these bound what planning
//! makes of it. (Common table expressions, inlined where they are named, are counted in
//! `statement.rs`.)

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Expr, GroupByExpr, SelectItem, SetExpr};

use crate::GatewayError;

/// The most grouping sets one GROUP BY may make: `CUBE` of 8 columns. (DataFusion's own limit,
/// 4,096, applies to `GROUPING SETS` and `ROLLUP` products only; 2^20 of a `CUBE` of 20 ran for
/// minutes after its client left and held 9.5 GB, attacker round 11.)
pub const MAX_GROUPING_SETS: u64 = 256;

/// The most grouping sets all GROUP BYs of one statement may make together (a UNION of many
/// bounded CUBEs is as much work as one large one).
pub const MAX_STATEMENT_GROUPING_SETS: u64 = 1_024;

/// Refuses `statement` when a GROUP BY makes more than [`MAX_GROUPING_SETS`] sets, all of them
/// together more than [`MAX_STATEMENT_GROUPING_SETS`], or when its SELECT aliases, expanded
/// where they are named, make more than `max_sql_bytes` of SQL in all.
pub(crate) fn check(statement: &ast::Statement, max_sql_bytes: usize) -> Result<(), GatewayError> {
    let mut found = Ok(());
    let _ = ast::Visit::visit(
        statement,
        &mut Checker {
            max_sql_bytes,
            found: &mut found,
            sets: 0,
            alias_bytes: 0,
        },
    );
    found
}

struct Checker<'a> {
    max_sql_bytes: usize,
    found: &'a mut Result<(), GatewayError>,
    /// Grouping sets and expanded alias bytes so far, over the whole statement.
    sets: u64,
    alias_bytes: u64,
}

/// The SELECTs of a query body: itself, or both sides of set operations (a nested query is a
/// query of its own, visited apart).
fn selects<'a>(body: &'a SetExpr, out: &mut Vec<&'a ast::Select>) {
    match body {
        SetExpr::Select(select) => out.push(select),
        SetExpr::SetOperation { left, right, .. } => {
            selects(left, out);
            selects(right, out);
        }
        _ => {}
    }
}

impl ast::Visitor for Checker<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<()> {
        let mut found = Vec::new();
        selects(&query.body, &mut found);
        for select in found {
            let sets = grouping_sets(&select.group_by);
            // A plain GROUP BY (one set) is no expansion.
            if sets > 1 {
                self.sets = self.sets.saturating_add(sets);
            }
            if sets > MAX_GROUPING_SETS || self.sets > MAX_STATEMENT_GROUPING_SETS {
                *self.found = Err(GatewayError::TooLarge(format!(
                    "its GROUP BY makes {sets} grouping sets ({} in the statement), more than \
                     {MAX_GROUPING_SETS} per GROUP BY or {MAX_STATEMENT_GROUPING_SETS} in all \
                     (a CUBE of n columns makes 2^n)",
                    self.sets
                )));
                return ControlFlow::Break(());
            }
            let bytes = expanded_alias_bytes(select, query.order_by.as_ref());
            self.alias_bytes = self.alias_bytes.saturating_add(bytes);
            if self.alias_bytes > self.max_sql_bytes as u64 {
                *self.found = Err(GatewayError::TooLarge(format!(
                    "its SELECT aliases, expanded where GROUP BY, HAVING or ORDER BY name them, \
                     make {} bytes of SQL, more than execution.max_sql_bytes ({})",
                    self.alias_bytes, self.max_sql_bytes
                )));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

/// How many grouping sets a GROUP BY makes: the product of its elements' (a CUBE of n: 2^n, a
/// ROLLUP of n: n + 1, GROUPING SETS: their number, anything else: 1).
fn grouping_sets(group_by: &GroupByExpr) -> u64 {
    let GroupByExpr::Expressions(exprs, modifiers) = group_by else {
        return 1;
    };
    let mut sets = 1u64;
    for e in exprs {
        let n = match e {
            Expr::Cube(items) => 1u64.checked_shl(items.len() as u32).unwrap_or(u64::MAX),
            Expr::Rollup(items) => items.len() as u64 + 1,
            Expr::GroupingSets(items) => items.len() as u64,
            _ => 1,
        };
        sets = sets.saturating_mul(n);
    }
    // `GROUP BY a, b WITH CUBE` / `WITH ROLLUP`.
    for m in modifiers {
        let n = exprs.len() as u32;
        sets = sets.saturating_mul(match m {
            ast::GroupByWithModifier::Cube => 1u64.checked_shl(n).unwrap_or(u64::MAX),
            ast::GroupByWithModifier::Rollup => u64::from(n) + 1,
            _ => 1,
        });
    }
    sets
}

/// The bytes of aliased expressions copied where GROUP BY, HAVING, QUALIFY or ORDER BY name
/// their alias.
fn expanded_alias_bytes(select: &ast::Select, order_by: Option<&ast::OrderBy>) -> u64 {
    let aliases: HashMap<String, u64> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { expr, alias } => {
                Some((alias.value.to_lowercase(), expr.to_string().len() as u64))
            }
            _ => None,
        })
        .collect();
    if aliases.is_empty() {
        return 0;
    }
    let mut bytes = 0u64;
    let mut count = |e: &Expr| {
        if let Expr::Identifier(i) = e {
            if let Some(size) = aliases.get(&i.value.to_lowercase()) {
                bytes = bytes.saturating_add(*size);
            }
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = ast::visit_expressions(&select.group_by, &mut count);
    let _ = ast::visit_expressions(&select.having, &mut count);
    let _ = ast::visit_expressions(&select.qualify, &mut count);
    if let Some(order_by) = order_by {
        let _ = ast::visit_expressions(order_by, &mut count);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use crate::statement::tests::refused;
    use crate::statement::{parse_read_statement, StatementLimits};

    #[test]
    fn cubes_past_the_grouping_set_bound_are_refused() {
        let cube = |n: usize| {
            let cols: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            format!("SELECT count(*) FROM t GROUP BY CUBE({})", cols.join(", "))
        };
        assert!(refused(&cube(20)).contains("1048576 grouping sets"));
        assert!(refused(&cube(9)).contains("grouping sets"));
        parse_read_statement(&cube(8), StatementLimits::default()).unwrap();
        // Products of several: 2^5 * 2^4 = 512.
        let err = refused("SELECT count(*) FROM t GROUP BY CUBE(a, b, c, d, e), CUBE(f, g, h, i)");
        assert!(err.contains("512 grouping sets"), "{err}");
        parse_read_statement(
            "SELECT count(*) FROM t GROUP BY ROLLUP(a, b, c), GROUPING SETS ((a), (b))",
            StatementLimits::default(),
        )
        .unwrap();
        // Inside set operations too (attacker round 12), and summed over the statement.
        let err = refused(&format!("SELECT 1 AS n UNION ALL {}", cube(20)));
        assert!(err.contains("grouping sets"), "{err}");
        let five: Vec<String> = (0..5).map(|_| cube(8)).collect();
        let err = refused(&five.join(" UNION ALL "));
        assert!(err.contains("1280 in the statement"), "{err}");
    }

    #[test]
    fn aliases_named_many_times_are_held_to_the_statement_size() {
        // A 10 KB aliased expression named 200 times in GROUP BY is 2 MB once expanded.
        let big = format!("'{}'", "x".repeat(10_000));
        let names: Vec<String> = (0..200).map(|i| format!("a || '{i}'")).collect();
        let sql = format!(
            "SELECT ({big} || d) AS a, count(*) FROM t GROUP BY {}",
            names.join(", ")
        );
        let err = refused(&sql);
        assert!(
            err.contains("SELECT aliases") && err.contains("max_sql_bytes"),
            "{err}"
        );
        let err = refused(&format!("SELECT 'q' AS a UNION ALL {sql}"));
        assert!(err.contains("SELECT aliases"), "{err}");
        // Summed over the statement: five branches of 220 KB each.
        let names: Vec<String> = (0..22).map(|i| format!("a || '{i}'")).collect();
        let branch = format!(
            "SELECT ({big} || d) AS a FROM t GROUP BY {}",
            names.join(", ")
        );
        parse_read_statement(&branch, StatementLimits::default()).unwrap();
        let five: Vec<String> = (0..5).map(|_| branch.clone()).collect();
        assert!(refused(&five.join(" UNION ALL ")).contains("SELECT aliases"));
        // Ordinary use: an alias named in GROUP BY and ORDER BY.
        parse_read_statement(
            "SELECT upper(d) AS a, count(*) AS n FROM t GROUP BY a HAVING n > 1 ORDER BY a, n",
            StatementLimits::default(),
        )
        .unwrap();
    }
}
