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
use datafusion::sql::sqlparser::parser::ParserError;

use crate::GatewayError;

mod bounds;
mod mask;

use bounds::*;
pub(crate) use mask::values_masked;

/// Bounds on one statement, checked on its text and its parsed form before anything recurses
/// over it (DataFusion's planner, optimizer and expression evaluation, and our own walks): a
/// longer or deeper statement is refused with an error, never a crash of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementLimits {
    /// The longest SQL text accepted, in bytes.
    pub max_sql_bytes: usize,
    /// The deepest nesting of expressions, subqueries and set operations accepted.
    pub max_depth: usize,
}

impl Default for StatementLimits {
    fn default() -> Self {
        Self {
            max_sql_bytes: lake_config::DEFAULT_MAX_SQL_BYTES,
            max_depth: lake_config::DEFAULT_MAX_EXPRESSION_DEPTH,
        }
    }
}

/// Parses `sql` as exactly one read statement, with `?` placeholders numbered `$1, $2, ...`.
pub(crate) fn parse_read_statement(
    sql: &str,
    limits: StatementLimits,
) -> Result<Statement, GatewayError> {
    if sql.len() > limits.max_sql_bytes {
        return Err(GatewayError::TooLarge(format!(
            "the SQL text is {} bytes, more than the {} this server accepts ([execution] max_sql_bytes)",
            sql.len(),
            limits.max_sql_bytes
        )));
    }
    // Chains of infix operators (`1+1+…`, `a OR b OR …`, `x::int::int…`) and of set operations
    // are parsed in a loop, not by recursion, so the parser's own recursion limit does not bound
    // their depth: the tree can be as deep as the text is long. Everything that walks the
    // statement until its depth is known, and dropping a refused one, gets a stack sized to the
    // text.
    on_stack_for(sql, || parse_and_bound(sql, limits))
}

/// Runs `f`, which parses or walks `sql`, on a stack sized to the text: a chain of infix
/// operators parses into a tree as deep as the text is long. Statements kept on the audit trail
/// (refused ones included) are parsed again this way by the `sql_literals` mask and the export.
pub(crate) fn on_stack_for<T>(sql: &str, f: impl FnOnce() -> T) -> T {
    stacker::grow(1 << 20 | sql.len().saturating_mul(512), f)
}

/// The parser's recursion limit. `sqlparser` loses its "recursion limit exceeded" error inside
/// `CASE` and `NOT` and reports a misleading syntax error instead, so [`check_nesting`] keeps
/// statements well below this limit and the limit stays a backstop.
pub(crate) const PARSER_RECURSION_LIMIT: usize = 256;

fn parse_and_bound(sql: &str, limits: StatementLimits) -> Result<Statement, GatewayError> {
    check_nesting(sql)?;
    // What does not tokenize gets the smallest budget: the parser then says why.
    let tokens = datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .unwrap_or_default();
    let allowed = crate::parse_budget::statement_time(sql.len());
    let parsed = crate::parse_budget::parse_bounded(&tokens, allowed, |dialect| {
        DFParserBuilder::new(sql)
            .with_dialect(dialect)
            .with_recursion_limit(PARSER_RECURSION_LIMIT)
            .build()
            .and_then(|mut p| p.parse_statements())
    })
    .map_err(GatewayError::TooLarge)?;
    let mut statements = parsed.map_err(|e| match e {
        datafusion::error::DataFusionError::SQL(ref p, _)
            if matches!(**p, ParserError::RecursionLimitExceeded) =>
        {
            GatewayError::TooLarge(format!(
                "it nests deeper than the SQL parser's limit of {PARSER_RECURSION_LIMIT} levels"
            ))
        }
        other => GatewayError::Sql(other),
    })?;
    if let Some(s) = statements.iter().find_map(|s| match s {
        Statement::Statement(s) => Some(s),
        Statement::Explain(e) => match e.statement.as_ref() {
            Statement::Statement(s) => Some(s),
            _ => None,
        },
        _ => None,
    }) {
        depth::check(s, limits.max_depth)?;
        crate::type_depth::check_statement(s)?;
        crate::enforce::wildcard::refuse_ignored_options(s)?;
        check_cte_copies(s, limits.max_sql_bytes)?;
        crate::expansion::check(s, limits.max_sql_bytes)?;
    }
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
    check_reserved_names(&statement)?;
    number_placeholders(&mut statement)?;
    Ok(statement)
}

/// The prefix of the columns lakegate adds to plans (the subject key, hidden counts, partial
/// aggregates). Users may not write it: an alias `__lakegate_subject` would stand in for the
/// subject key that minimum-group and differentially private releases count.
pub(crate) const RESERVED_PREFIX: &str = "__lakegate";

/// Refuses a statement that names anything (column, alias, table, CTE) with
/// [`RESERVED_PREFIX`], quoted or not, in any letter case. Checked on the statement's canonical
/// text, whose every identifier is a word token; text that would not tokenize is refused.
fn check_reserved_names(statement: &Statement) -> Result<(), GatewayError> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let text = statement.to_string();
    let tokens = Tokenizer::new(&GenericDialect {}, &text)
        .tokenize()
        .map_err(|e| {
            GatewayError::Sql(datafusion::error::DataFusionError::Plan(format!(
                "the statement cannot be checked for reserved names: {e}"
            )))
        })?;
    for token in tokens {
        if let Token::Word(w) = token {
            if w.value.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
                return Err(GatewayError::Sql(datafusion::error::DataFusionError::Plan(
                    format!(
                        "`{}`: names starting with {RESERVED_PREFIX} are reserved for lakegate's own columns; choose another name",
                        w.value
                    ),
                )));
            }
        }
    }
    Ok(())
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
pub(crate) mod tests {
    use super::*;

    /// The refusal of `sql`; panics when it is accepted.
    pub(crate) fn refused(sql: &str) -> String {
        match parse_read_statement(sql, StatementLimits::default()) {
            Err(e) => e.to_string(),
            Ok(s) => panic!("{sql} was accepted as {s}"),
        }
    }

    #[test]
    fn values_are_masked_in_bounded_time_however_deep_the_statement() {
        // Attacker round 14 H1: past the parser's default recursion limit this took minutes.
        let deep = |n: usize| {
            format!(
                "SELECT {}'SECRET'{} FROM t",
                "CAST(upper(CAST(".repeat(n),
                " AS VARCHAR)) AS BYTEA)".repeat(n)
            )
        };
        assert_eq!(values_masked(&deep(24)), None);
        let (masked, values) = values_masked(&deep(16)).expect("16 levels parse");
        assert!(
            !masked.contains("SECRET") && values == ["SECRET"],
            "{masked}"
        );
        // Round 15 H2: 40 unclosed `CAST(` (within the nesting limit) backtracked 2^40 times;
        // a statement refused before planning (an unknown scenario) is still on the trail.
        let unclosed = format!("SELECT 'SECRET', {} x) FROM t", "CAST(".repeat(40));
        assert_eq!(values_masked(&unclosed), None);
        let why = refused(&unclosed);
        assert!(why.contains("too many ways"), "{why}");
    }

    #[test]
    fn long_select_lists_are_refused() {
        // Round 16 M1: planning a SELECT list takes time quadratic in its length.
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("{i}+1 AS c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        parse_read_statement(
            &format!("SELECT {}", list(4096)),
            StatementLimits::default(),
        )
        .expect("4,096 items are accepted");
        assert!(refused(&format!("SELECT {}", list(4097))).contains("4097 items"));
        let union = format!(
            "SELECT {0} UNION ALL SELECT {0} UNION ALL SELECT {0}",
            list(3000)
        );
        assert!(refused(&union).contains("SELECT items in all"));
    }

    #[test]
    fn padding_and_many_windows_are_refused() {
        // Round 17 H1: padding bought budget, and every peek skipped the whole run of spaces.
        let padded = format!(
            "SELECT * FROM {}x{}",
            "((SELECT * FROM ".repeat(14),
            " ".repeat(60_000)
        );
        assert!(refused(&padded).contains("spaces, line breaks or comments in a row"));
        let indented = format!("SELECT{}1", " ".repeat(1_000));
        parse_read_statement(&indented, StatementLimits::default()).expect("indentation");
        // Round 17 H2: distinct windows plan in about cubic time.
        let windows = |n: usize| {
            (0..n)
                .map(|i| format!("sum(a) OVER (ORDER BY a + {i}) AS w{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        parse_read_statement(
            &format!("SELECT {} FROM t", windows(256)),
            StatementLimits::default(),
        )
        .expect("256 windows");
        assert!(refused(&format!("SELECT {} FROM t", windows(257))).contains("window functions"));
    }

    #[test]
    fn ctes_that_double_per_level_are_refused() {
        let chain = |levels: usize| {
            let mut sql = "WITH a0 AS (SELECT 1 AS x)".to_string();
            for i in 1..=levels {
                sql += &format!(
                    ", a{i} AS (SELECT * FROM a{p} UNION ALL SELECT * FROM a{p})",
                    p = i - 1
                );
            }
            sql + &format!(" SELECT count(*) FROM a{levels}")
        };
        let err = refused(&chain(15));
        assert!(err.contains("copies of queries"), "{err}");
        // Ten levels are 1,024 copies of a0, and a few of the others: still refused; nine pass.
        assert!(refused(&chain(10)).contains("copies of queries"));
        parse_read_statement(&chain(9), StatementLimits::default()).unwrap();
        // WITH inside a CTE multiplies past what one WITH counts: one WITH per statement.
        let nested = "WITH a1 AS (WITH x AS (SELECT 1 AS v) SELECT * FROM x UNION ALL \
                      SELECT * FROM x) SELECT * FROM a1";
        assert!(refused(nested).contains("WITH clauses"));
        // Few copies of a wide CTE (attacker round 10: 200 columns, 512 copies; planned, a
        // 6 MB plan) are held to max_sql_bytes once inlined.
        let wide = |levels: usize, columns: usize| {
            let cols: Vec<String> = (0..columns).map(|i| format!("v + {i} AS c{i}")).collect();
            let mut sql = format!("WITH a0 AS (SELECT {} FROM t)", cols.join(", "));
            for i in 1..=levels {
                sql += &format!(
                    ", a{i} AS (SELECT * FROM a{p} UNION ALL SELECT * FROM a{p})",
                    p = i - 1
                );
            }
            sql + &format!(" SELECT count(*) FROM a{levels}")
        };
        let err = refused(&wide(9, 200));
        assert!(
            err.contains("bytes of SQL") && err.contains("max_sql_bytes"),
            "{err}"
        );
        parse_read_statement(&wide(4, 200), StatementLimits::default()).unwrap();
        // Recursive CTEs and CTEs named once are no copies at all.
        parse_read_statement(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 5), \
             s AS (SELECT * FROM r) SELECT * FROM s",
            StatementLimits::default(),
        )
        .unwrap();
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
            parse_read_statement(sql, StatementLimits::default()).unwrap();
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
        let s =
            parse_read_statement("SELECT ? + 1 WHERE ? > 2", StatementLimits::default()).unwrap();
        assert_eq!(s.to_string(), "SELECT $1 + 1 WHERE $2 > 2");
        assert!(refused("SELECT ?, $1").contains("one style"));
    }

    /// Statements of every deep shape at 10, 1 000 and 100 000 levels: shallow ones parse, the
    /// rest are refused as too large, and none overflows the stack.
    #[test]
    fn deep_statements_are_refused_as_too_large() {
        type Shape = (&'static str, fn(usize) -> String);
        let shapes: [Shape; 11] = [
            ("NOT", |n| format!("SELECT {}true", "NOT ".repeat(n))),
            ("unary minus", |n| format!("SELECT {}1", "- ".repeat(n))),
            ("functions", |n| {
                format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n))
            }),
            ("derived tables", |n| {
                format!(
                    "SELECT * FROM {}(SELECT 1) t{}",
                    "(SELECT * FROM ".repeat(n),
                    ") t".repeat(n)
                )
            }),
            ("+", |n| format!("SELECT {}", vec!["1"; n].join("+"))),
            ("OR", |n| {
                format!("SELECT 1 WHERE {}", vec!["a = 1"; n].join(" OR "))
            }),
            ("parentheses", |n| {
                format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n))
            }),
            ("CASE", |n| {
                format!(
                    "SELECT {}0{}",
                    "CASE WHEN a > 0 THEN ".repeat(n),
                    " ELSE 1 END".repeat(n)
                )
            }),
            ("subqueries", |n| {
                format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n))
            }),
            ("UNION", |n| vec!["SELECT 1"; n].join(" UNION ALL ")),
            ("casts", |n| format!("SELECT 1{}", "::bigint".repeat(n))),
        ];
        // Just inside the nesting bound, every shape still parses.
        for (shape, sql) in &shapes[..3] {
            parse_read_statement(&sql(MAX_NESTING - 2), StatementLimits::default())
                .unwrap_or_else(|e| panic!("{shape} x {}: {e}", MAX_NESTING - 2));
        }
        // Queries nest at most MAX_QUERY_NESTING deep.
        let nested = |n: usize| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n));
        parse_read_statement(
            &nested(depth::MAX_QUERY_NESTING - 1),
            StatementLimits::default(),
        )
        .unwrap();
        assert!(refused(&nested(depth::MAX_QUERY_NESTING)).contains("queries nest"));
        let many = vec!["(SELECT 1)"; depth::MAX_QUERIES + 1].join(", ");
        assert!(refused(&format!("SELECT {many}")).contains("more than"));
        for (shape, sql) in shapes {
            parse_read_statement(&sql(10), StatementLimits::default())
                .unwrap_or_else(|e| panic!("{shape} x 10: {e}"));
            for n in [1_000, 100_000] {
                let err = refused(&sql(n));
                assert!(err.contains("too large"), "{shape} x {n}: {err}");
                assert!(!err.contains("Expected"), "{shape} x {n}: {err}");
            }
        }
    }
}
