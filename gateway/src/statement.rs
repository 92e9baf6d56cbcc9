//! Which statements reach the planner: reads only.
//!
//! The first gate is the parsed statement (only `SELECT`/`WITH`/`VALUES` queries and plain
//! `EXPLAIN` of them); the second is DataFusion's [`SQLOptions`] on the plan (no DDL, DML or
//! statements), so that a statement form this list forgets is still refused.

use std::ops::ControlFlow;

use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, Expr, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::GatewayError;

/// Parses `sql` as exactly one read statement, with `?` placeholders numbered `$1, $2, ...`.
pub(crate) fn parse_read_statement(sql: &str) -> Result<Statement, GatewayError> {
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(GatewayError::Sql)?;
    if statements.len() != 1 {
        return Err(GatewayError::Sql(datafusion::error::DataFusionError::Plan(
            if statements.is_empty() {
                "no SQL statement was given".into()
            } else {
                format!(
                    "{} statements were given: send one statement per request",
                    statements.len()
                )
            },
        )));
    }
    let mut statement = statements.pop_front().expect("one statement");
    check_read_only(&statement)?;
    number_placeholders(&mut statement)?;
    Ok(statement)
}

fn check_read_only(statement: &Statement) -> Result<(), GatewayError> {
    let refuse = |what: &str| {
        Err(GatewayError::ReadOnly(format!(
            "{what} is not accepted; send a SELECT, WITH or EXPLAIN statement"
        )))
    };
    match statement {
        Statement::Statement(s) => match s.as_ref() {
            ast::Statement::Query(_) => Ok(()),
            ast::Statement::Explain {
                analyze,
                verbose,
                statement,
                ..
            } => {
                if *analyze {
                    return refuse("EXPLAIN ANALYZE (it reports statistics of the raw data)");
                }
                if *verbose {
                    return refuse("EXPLAIN VERBOSE (it prints plan statistics)");
                }
                match statement.as_ref() {
                    ast::Statement::Query(_) => Ok(()),
                    _ => refuse("EXPLAIN of a statement other than a query"),
                }
            }
            ast::Statement::Insert(_)
            | ast::Statement::Update(_)
            | ast::Statement::Delete(_)
            | ast::Statement::Merge(_)
            | ast::Statement::Truncate(_) => {
                refuse("a data change (INSERT/UPDATE/DELETE/MERGE/TRUNCATE)")
            }
            ast::Statement::Set(_) => refuse("SET"),
            ast::Statement::Copy { .. } => refuse("COPY"),
            other => {
                let text = other.to_string();
                let verb = text.split_whitespace().next().unwrap_or("this statement");
                refuse(&format!("{} statement", verb.to_uppercase()))
            }
        },
        Statement::CreateExternalTable(_) => refuse("CREATE EXTERNAL TABLE"),
        Statement::CopyTo(_) => refuse("COPY"),
        Statement::Explain(e) => {
            if e.options.analyze {
                return refuse("EXPLAIN ANALYZE (it reports statistics of the raw data)");
            }
            if e.options.verbose {
                return refuse("EXPLAIN VERBOSE (it prints plan statistics)");
            }
            check_read_only(&e.statement)
        }
        Statement::Reset(_) => refuse("RESET"),
    }
}

/// Numbers anonymous `?` placeholders in order (`$1`, `$2`, ...), as JDBC and ADBC send them.
/// Mixing `?` with `$n` is refused: the numbering would be ambiguous.
fn number_placeholders(statement: &mut Statement) -> Result<(), GatewayError> {
    let Statement::Statement(s) = statement else {
        return Ok(());
    };
    let mut next = 0usize;
    let mut numbered = false;
    let _ = visit_expressions_mut(s.as_mut(), |expr: &mut Expr| {
        if let Expr::Value(v) = expr {
            if let Value::Placeholder(p) = &mut v.value {
                if p == "?" {
                    next += 1;
                    *p = format!("${next}");
                } else {
                    numbered = true;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if next > 0 && numbered {
        return Err(GatewayError::Parameters(
            "the statement mixes `?` with `$n` placeholders: use one style".into(),
        ));
    }
    Ok(())
}

/// The second gate: DataFusion's own check that the plan is no DDL, DML or statement.
pub(crate) fn verify_read_plan(plan: &LogicalPlan) -> Result<(), GatewayError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| GatewayError::ReadOnly(e.strip_backtrace()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match parse_read_statement(sql) {
            Err(e) => e.to_string(),
            Ok(s) => panic!("{sql} was accepted as {s}"),
        }
    }

    #[test]
    fn reads_are_accepted() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "VALUES (1)",
            "EXPLAIN SELECT 1",
            "select * from health.visits where district = 'North' order by 1 limit 5",
        ] {
            parse_read_statement(sql).unwrap();
        }
    }

    #[test]
    fn writes_and_settings_are_refused() {
        for (sql, word) in [
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("CREATE TABLE t AS SELECT 1", "CREATE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE"),
            ("DROP TABLE health.visits", "DROP"),
            ("INSERT INTO health.visits VALUES (1)", "data change"),
            ("DELETE FROM health.visits", "data change"),
            ("UPDATE health.visits SET a = 1", "data change"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN ANALYZE"),
            ("EXPLAIN VERBOSE SELECT 1", "EXPLAIN VERBOSE"),
            ("EXPLAIN CREATE TABLE t AS SELECT 1", "EXPLAIN"),
        ] {
            let err = refused(sql);
            assert!(
                err.contains("read-only") && err.contains(word),
                "{sql}: {err}"
            );
        }
    }

    #[test]
    fn one_statement_per_request() {
        let err = refused("SELECT 1; DROP TABLE x");
        assert!(err.contains("2 statements"), "{err}");
        assert!(refused("").contains("no SQL statement"));
        assert!(refused("SELEC 1").contains("Expected"));
    }

    #[test]
    fn question_marks_are_numbered() {
        let s = parse_read_statement("SELECT ? + 1 WHERE ? > 2").unwrap();
        assert_eq!(s.to_string(), "SELECT $1 + 1 WHERE $2 > 2");
        assert!(refused("SELECT ?, $1").contains("one style"));
    }
}
