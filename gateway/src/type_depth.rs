//! How deeply nested the data types a statement makes may be.
//!
//! Grouping, sorting and comparing a nested value cost about the square of its nesting per
//! row: `arrow_cast(NULL, 'List(List(…))')` 2,700 levels deep (16 KB of SQL, inside every other
//! bound) took 12 ms a row under `GROUP BY`, a batch for minutes without pause, and two users
//! stalled everyone for 245 s (attacker round 29 H3); 6,300 levels took 80 s to plan. Types are
//! bounded twice: as written (a cast's SQL type, `arrow_cast`'s type string) before planning,
//! and every type of the physical plan (each operator's output, casts, literals and function
//! results, bound parameters included) before it runs.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::expressions::{CastExpr, Literal, TryCastExpr};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast;

use crate::GatewayError;

/// The deepest nesting of a data type accepted (`List(List(Int64))` is 3 levels deep).
pub const MAX_TYPE_DEPTH: usize = 32;

/// The most types one column's type may hold (`Struct(a Int64, b List(Int64))` holds 4): a
/// struct of eight copies of the column before it, eight times over in CTEs, made a type
/// only 9 levels deep with 16.8 M fields; physical planning walked it whole and took 8 GB
/// before the process died (attacker round 30 H1). Shared parts count each time they occur.
pub const MAX_TYPE_NODES: usize = 10_000;

/// The most fields a statement's struct and map constructors may multiply into
/// ([`struct_growth`]): DataFusion's logical planning walks a type whole, about 3 µs a type in
/// a debug build, so this bounds that walk well under a second.
pub const MAX_STRUCT_GROWTH: u64 = 100_000;

/// The most types all columns of all the plan's operators may hold together.
pub const MAX_PLAN_TYPE_NODES: usize = 1_000_000;

fn too_deep() -> String {
    format!(
        "a data type nested more than {MAX_TYPE_DEPTH} levels deep (lists, structs, maps); \
         write a shallower type"
    )
}

/// Refuses a parsed statement that names a type deeper than [`MAX_TYPE_DEPTH`] (a cast's SQL
/// type or the type string of `arrow_cast` / `arrow_try_cast`), or whose struct constructors
/// could multiply into more than [`MAX_STRUCT_GROWTH`] fields (see [`struct_growth`]).
pub(crate) fn check_statement(statement: &ast::Statement) -> Result<(), GatewayError> {
    use std::ops::ControlFlow;
    let growth = struct_growth(statement);
    if growth > MAX_STRUCT_GROWTH {
        return Err(GatewayError::TooLarge(format!(
            "its struct constructors could build types of {growth} fields (each struct of \
             earlier structs multiplies their fields; at most {MAX_STRUCT_GROWTH}); build \
             fewer or narrower structs"
        )));
    }
    let found = ast::visit_expressions(statement, |e| {
        let deep = match e {
            ast::Expr::Cast { data_type, .. } => sql_depth(data_type, 0) > MAX_TYPE_DEPTH,
            ast::Expr::Function(f) if is_arrow_cast(&f.name) => match &f.args {
                ast::FunctionArguments::List(list) => list.args.iter().skip(1).any(|a| {
                    matches!(a, ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                        ast::Expr::Value(v))) if matches!(&v.value,
                            ast::Value::SingleQuotedString(s) if text_depth(s) > MAX_TYPE_DEPTH))
                }),
                _ => false,
            },
            _ => false,
        };
        if deep {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    match found {
        ControlFlow::Break(()) => Err(GatewayError::TooLarge(too_deep())),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The product of the field counts of every struct the statement constructs (`struct(…)`,
/// `named_struct(…)`, `row(…)`, `arrays_zip(…)`, tuples, `{…}` and `STRUCT<…>(…)` literals;
/// a map counts 2, its key and value types): a bound on the
/// widest type they can build by taking each other as fields through CTEs and subqueries.
/// DataFusion's logical planning walks such a type whole (8 CTEs of `struct(v, v, v, v, v, v,
/// v, v)`: 2 s, each one more ×8, attacker round 30 H1), so this is checked before it.
fn struct_growth(statement: &ast::Statement) -> u64 {
    use std::ops::ControlFlow;
    let mut product = 1u64;
    let _ = ast::visit_expressions(statement, |e| {
        let fields = match e {
            ast::Expr::Function(f) => {
                let name = f
                    .name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default();
                let args = match &f.args {
                    ast::FunctionArguments::List(l) => l.args.len(),
                    _ => 0,
                };
                match name.as_str() {
                    "struct" | "row" | "arrays_zip" | "list_zip" => args,
                    "named_struct" => args / 2,
                    // A map's entries hold its key type and its value type: a map of a value
                    // as key and value doubles it (attacker round 31 H1).
                    "map" | "make_map" => 2,
                    _ => 1,
                }
            }
            ast::Expr::Map(_) => 2,
            ast::Expr::Tuple(values) => values.len(),
            ast::Expr::Struct { values, .. } => values.len(),
            ast::Expr::Dictionary(fields) => fields.len(),
            _ => 1,
        };
        product = product.saturating_mul(fields.max(1) as u64);
        ControlFlow::<()>::Continue(())
    });
    product
}

fn is_arrow_cast(name: &ast::ObjectName) -> bool {
    name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
        let n = i.value.to_ascii_lowercase();
        n == "arrow_cast" || n == "arrow_try_cast"
    })
}

/// The bracket nesting of an arrow type string (`List(Struct("a": Int64))`).
fn text_depth(s: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in s.chars() {
        match c {
            '(' | '[' | '<' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '>' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest + 1
}

/// The nesting of a SQL type, stopping past the bound.
fn sql_depth(t: &ast::DataType, at: usize) -> usize {
    use ast::{ArrayElemTypeDef, DataType as T};
    if at > MAX_TYPE_DEPTH {
        return at;
    }
    let inner = match t {
        T::Array(ArrayElemTypeDef::AngleBracket(e))
        | T::Array(ArrayElemTypeDef::SquareBracket(e, _))
        | T::Array(ArrayElemTypeDef::Parenthesis(e)) => sql_depth(e, at + 1),
        T::Struct(fields, _) => fields
            .iter()
            .map(|f| sql_depth(&f.field_type, at + 1))
            .max()
            .unwrap_or(at + 1),
        T::Map(k, v) => sql_depth(k, at + 1).max(sql_depth(v, at + 1)),
        T::Nullable(e) | T::LowCardinality(e) => sql_depth(e, at),
        _ => at + 1,
    };
    inner.max(at + 1)
}

/// The types directly inside `t` (a list's element, a struct's fields, a map's entries, …).
fn children(t: &DataType) -> Vec<&DataType> {
    match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => vec![f.data_type()],
        DataType::Struct(fs) => fs.iter().map(|f| f.data_type()).collect(),
        DataType::Union(fs, _) => fs.iter().map(|(_, f)| f.data_type()).collect(),
        DataType::Dictionary(_, v) => vec![v.as_ref()],
        DataType::RunEndEncoded(_, v) => vec![v.data_type()],
        _ => vec![],
    }
}

/// The nesting of an arrow type, stopping past the bound.
fn arrow_depth(t: &DataType, at: usize) -> usize {
    if at > MAX_TYPE_DEPTH {
        return at;
    }
    children(t)
        .into_iter()
        .map(|c| arrow_depth(c, at + 1))
        .max()
        .unwrap_or(at + 1)
}

/// How many types `t` holds, counting at most to `budget` (then `None`).
fn type_nodes(t: &DataType, budget: usize) -> Option<usize> {
    let mut pending = vec![t];
    let mut seen = 0usize;
    while let Some(t) = pending.pop() {
        seen += 1;
        if seen > budget {
            return None;
        }
        pending.extend(children(t));
    }
    Some(seen)
}

/// Refuses a logical plan (subqueries included) whose columns hold types wider than
/// [`MAX_TYPE_NODES`] each or [`MAX_PLAN_TYPE_NODES`] in all, before it is planned physically.
pub(crate) fn check_logical(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Result<(), GatewayError> {
    let mut total = 0usize;
    let mut refusal = None;
    let _ = plan.apply_with_subqueries(|node| {
        for field in node.schema().fields() {
            match type_nodes(field.data_type(), MAX_TYPE_NODES) {
                Some(n) if total + n <= MAX_PLAN_TYPE_NODES => total += n,
                Some(_) => {
                    refusal = Some(format!(
                        "its columns hold more than {MAX_PLAN_TYPE_NODES} types in all"
                    ));
                    return Ok(TreeNodeRecursion::Stop);
                }
                None => {
                    refusal = Some(format!(
                        "a column's type holds more than {MAX_TYPE_NODES} types (struct fields, \
                         list elements); write a narrower type"
                    ));
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match refusal {
        Some(why) => Err(GatewayError::TooLarge(why)),
        None => Ok(()),
    }
}

fn check_type(t: &DataType) -> Result<()> {
    if arrow_depth(t, 0) > MAX_TYPE_DEPTH {
        return Err(DataFusionError::Plan(format!(
            "statement too large: {}",
            too_deep()
        )));
    }
    Ok(())
}

/// Refuses a physical plan with a type deeper than [`MAX_TYPE_DEPTH`] in any operator's
/// output or any expression's cast, literal or function result.
pub(crate) fn check_physical(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    let mut pending = vec![plan];
    while let Some(node) = pending.pop() {
        for field in node.schema().fields() {
            check_type(field.data_type())?;
        }
        node.apply_expressions(&mut |root| {
            root.apply(|e| {
                check_expr(e.as_ref())?;
                Ok(TreeNodeRecursion::Continue)
            })?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        pending.extend(node.children());
    }
    Ok(())
}

fn check_expr(e: &dyn PhysicalExpr) -> Result<()> {
    let any: &dyn std::any::Any = e;
    if let Some(c) = any.downcast_ref::<CastExpr>() {
        check_type(c.cast_type())?;
    } else if let Some(c) = any.downcast_ref::<TryCastExpr>() {
        check_type(c.cast_type())?;
    } else if let Some(l) = any.downcast_ref::<Literal>() {
        check_type(&l.value().data_type())?;
    } else if let Some(f) = any.downcast_ref::<ScalarFunctionExpr>() {
        check_type(f.return_type())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn nested(depth: usize) -> String {
        let mut t = "Int64".to_string();
        for _ in 1..depth {
            t = format!("List({t})");
        }
        t
    }

    fn parsed(sql: &str) -> ast::Statement {
        datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
            sql,
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn written_types_are_bounded_before_planning() {
        let ok = format!("SELECT arrow_cast(NULL, '{}')", nested(MAX_TYPE_DEPTH));
        check_statement(&parsed(&ok)).unwrap();
        for sql in [
            format!("SELECT arrow_cast(NULL, '{}')", nested(MAX_TYPE_DEPTH + 1)),
            format!("SELECT ARROW_TRY_CAST(1, '{}')", nested(2_700)),
            format!(
                "SELECT CAST(NULL AS INT{})",
                "[]".repeat(MAX_TYPE_DEPTH + 1)
            ),
            format!(
                "SELECT 1 FROM t WHERE x IN (SELECT arrow_cast(y, '{}') FROM u)",
                nested(40)
            ),
        ] {
            let err = check_statement(&parsed(&sql)).unwrap_err().to_string();
            assert!(err.contains("nested more than 32 levels"), "{err}");
        }
        check_statement(&parsed("SELECT CAST(x AS INT[][]), arrow_cast(1, 'Int64')")).unwrap();
        // Structs that could multiply: eight of eight fields each.
        let mut chain = "WITH c0 AS (SELECT 1 AS v)".to_string();
        for i in 1..=8 {
            chain += &format!(
                ", c{i} AS (SELECT struct(v, v, v, v, v, v, v, v) AS v FROM c{})",
                i - 1
            );
        }
        chain += " SELECT v FROM c8";
        let err = check_statement(&parsed(&chain)).unwrap_err().to_string();
        assert!(err.contains("struct constructors"), "{err}");
        // Maps double what they hold (attacker round 31 H1: 4 structs of 8, then 13 maps).
        let mut maps = "WITH c0 AS (SELECT 1 AS v)".to_string();
        for i in 1..=20 {
            maps += &format!(", c{i} AS (SELECT map([v], [v]) AS v FROM c{})", i - 1);
        }
        maps += " SELECT v FROM c20";
        let err = check_statement(&parsed(&maps)).unwrap_err().to_string();
        assert!(err.contains("struct constructors"), "{err}");
        // A few ordinary structs pass.
        check_statement(&parsed(
            "SELECT named_struct('a', x, 'b', y), struct(x, y, z), {'k': 1, 'l': 2} FROM t",
        ))
        .unwrap();
    }

    #[tokio::test]
    async fn wide_types_are_refused_before_physical_planning() {
        let ctx = SessionContext::new();
        // Each CTE a struct of eight copies of the one before: 8^n fields.
        let chain = |n: usize| {
            let mut sql = "WITH c0 AS (SELECT 1 AS v)".to_string();
            for i in 1..=n {
                sql += &format!(
                    ", c{i} AS (SELECT struct(v, v, v, v, v, v, v, v) AS v FROM c{})",
                    i - 1
                );
            }
            sql + &format!(" SELECT v IS NULL FROM c{n}")
        };
        let logical = |sql: String| {
            let ctx = ctx.clone();
            async move { ctx.state().create_logical_plan(&sql).await.unwrap() }
        };
        check_logical(&logical(chain(3)).await).unwrap();
        for n in [5, 7] {
            let err = check_logical(&logical(chain(n)).await)
                .unwrap_err()
                .to_string();
            assert!(err.contains("more than 10000 types"), "{n}: {err}");
        }
    }

    #[tokio::test]
    async fn planned_types_are_bounded_before_running() {
        let ctx = SessionContext::new();
        let plan = |sql: String| {
            let ctx = ctx.clone();
            async move {
                ctx.sql(&sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap()
            }
        };
        // Built level by level with functions: no type written anywhere.
        let arrays = |n: usize| "make_array(".repeat(n) + "1" + &")".repeat(n);
        check_physical(&plan(format!("SELECT {}", arrays(MAX_TYPE_DEPTH - 1))).await).unwrap();
        for sql in [
            format!("SELECT {}", arrays(MAX_TYPE_DEPTH)),
            format!(
                "SELECT count(*) FROM (VALUES (1)) t(v) GROUP BY {}",
                arrays(40)
            ),
            // A sort key is no operator's output.
            format!(
                "SELECT value FROM generate_series(1, 100) ORDER BY {}value{}",
                "make_array(".repeat(40),
                ")".repeat(40)
            ),
        ] {
            let planned = plan(sql.clone()).await;
            let err = match check_physical(&planned) {
                Err(e) => e.to_string(),
                Ok(()) => panic!(
                    "{sql}\n{}",
                    datafusion::physical_plan::displayable(planned.as_ref()).indent(true)
                ),
            };
            assert!(err.contains("nested more than 32 levels"), "{sql}: {err}");
        }
    }
}
