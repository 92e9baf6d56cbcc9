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

fn too_deep() -> String {
    format!(
        "a data type nested more than {MAX_TYPE_DEPTH} levels deep (lists, structs, maps); \
         write a shallower type"
    )
}

/// Refuses a parsed statement that names a type deeper than [`MAX_TYPE_DEPTH`]: a cast's SQL
/// type or the type string of `arrow_cast` / `arrow_try_cast`.
pub(crate) fn check_statement(statement: &ast::Statement) -> Result<(), GatewayError> {
    use std::ops::ControlFlow;
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

/// The nesting of an arrow type, stopping past the bound.
fn arrow_depth(t: &DataType, at: usize) -> usize {
    if at > MAX_TYPE_DEPTH {
        return at;
    }
    let children: Vec<&DataType> = match t {
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
    };
    children
        .into_iter()
        .map(|c| arrow_depth(c, at + 1))
        .max()
        .unwrap_or(at + 1)
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
