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

/// Refuses `statement` when a GROUP BY makes more than [`MAX_GROUPING_SETS`] sets, or when its
/// SELECT aliases, expanded where they are named, make more than `max_sql_bytes` of SQL.
pub(crate) fn check(statement: &ast::Statement, max_sql_bytes: usize) -> Result<(), GatewayError> {
    let mut found = Ok(());
    let _ = ast::Visit::visit(
        statement,
        &mut Checker {
            max_sql_bytes,
            found: &mut found,
        },
    );
    found
}

struct Checker<'a> {
    max_sql_bytes: usize,
    found: &'a mut Result<(), GatewayError>,
}

impl ast::Visitor for Checker<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return ControlFlow::Continue(());
        };
        let sets = grouping_sets(&select.group_by);
        if sets > MAX_GROUPING_SETS {
            *self.found = Err(GatewayError::TooLarge(format!(
                "its GROUP BY makes {sets} grouping sets, more than {MAX_GROUPING_SETS} \
                 (a CUBE of n columns makes 2^n)"
            )));
            return ControlFlow::Break(());
        }
        let bytes = expanded_alias_bytes(select, query.order_by.as_ref());
        if bytes > self.max_sql_bytes as u64 {
            *self.found = Err(GatewayError::TooLarge(format!(
                "its SELECT aliases, expanded where GROUP BY, HAVING or ORDER BY name them, \
                 make {bytes} bytes of SQL, more than execution.max_sql_bytes ({})",
                self.max_sql_bytes
            )));
            return ControlFlow::Break(());
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
        // Ordinary use: an alias named in GROUP BY and ORDER BY.
        parse_read_statement(
            "SELECT upper(d) AS a, count(*) AS n FROM t GROUP BY a HAVING n > 1 ORDER BY a, n",
            StatementLimits::default(),
        )
        .unwrap();
    }
}
