//! A bound on the SQL parser's work, not only its depth.
//!
//! sqlparser tries alternatives by backtracking (`maybe_parse`): `CAST(` is tried as a cast and
//! then as a function call, `POSITION(` three ways, and each try parses everything inside again.
//! Nested inside each other, a few dozen of them take 2^n or 3^n steps: 27 unclosed `CAST(`
//! (157 bytes) kept a core busy for four minutes, and the audit export, which parses the
//! statements on the trail again, never finished (attacker round 15 H2). The nesting limit
//! (64) does not help; the recursion limit bounds depth, not retries.
//!
//! [`Budgeted`] is the generic dialect with a counter: the parser asks its dialect something at
//! every step that matters — an expression, an operator, a statement, a SELECT, a table factor,
//! an alias, a type — retries included, and every question but the tokenizer's (one per
//! character) is charged. Past a budget proportional to the statement's tokens the parse is
//! unwound (with `resume_unwind`, which runs no panic hook and which no `maybe_parse` can
//! swallow) and [`parse_bounded`] reports it. Counting only the four parse hooks was not enough:
//! unclosed `((SELECT * FROM` chains retry as derived tables and nested joins without any of
//! them (2^n, round 16 H1), and `ARRAY<ARRAY<…` retries a whole type per token, one hook call
//! each (quadratic, round 16 H2).

use std::any::TypeId;
use std::cell::Cell;

use datafusion::sql::sqlparser::ast::{Expr, Statement};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

/// Parser steps allowed per token of the statement, and in any case. Legitimate statements take
/// a few per token that is not whitespace (measured: at most 7 on the TPC-H queries and the
/// sqllogictest files).
const STEPS_PER_TOKEN: u64 = 32;
const MIN_STEPS: u64 = 4096;

/// The time a parse may take besides its steps, as a backstop: some of the parser's loops walk
/// tokens without asking the dialect anything (type modifiers: `CAST(`×20 and a long tail of
/// numbers re-walked the tail at every retry, quadratic within the step budget, 49 s for 64 KB,
/// attacker round 18 H1). The clock is read at every step, so such a loop runs past the deadline
/// by one walk of the text at most.
pub(crate) fn statement_time(bytes: usize) -> std::time::Duration {
    // Far above what a real statement takes (a 1 MiB list parses in about a second, debug).
    std::time::Duration::from_secs(2) + std::time::Duration::from_micros(5 * bytes as u64)
}

/// The time a statement on the audit trail may take to parse again (the export, and the
/// regulator's `sql_literals` mask at every read): short, because a reader pays it for every
/// record it reads, and one that overruns is shown as `****` (fail closed).
pub(crate) fn trail_time(bytes: usize) -> std::time::Duration {
    std::time::Duration::from_millis(200) + std::time::Duration::from_micros(bytes as u64)
}

/// [`GenericDialect`] with a bound on the parser's steps and time.
#[derive(Debug)]
pub(crate) struct Budgeted {
    inner: GenericDialect,
    left: Cell<u64>,
    deadline: std::time::Instant,
}

impl Budgeted {
    /// A budget for a statement of `tokens` tokens that are not whitespace, ending `allowed`
    /// from now.
    fn new(tokens: usize, allowed: std::time::Duration) -> Self {
        Self {
            inner: GenericDialect {},
            left: Cell::new(
                (tokens as u64)
                    .saturating_mul(STEPS_PER_TOKEN)
                    .max(MIN_STEPS),
            ),
            deadline: std::time::Instant::now() + allowed,
        }
    }

    /// One step of the parser; past the budget or the deadline the parse is unwound.
    fn step(&self) {
        match self.left.get().checked_sub(1) {
            Some(left) => self.left.set(left),
            None => std::panic::resume_unwind(Box::new(Exhausted)),
        }
        if std::time::Instant::now() > self.deadline {
            std::panic::resume_unwind(Box::new(Exhausted));
        }
    }
}

/// The longest run of whitespace tokens (spaces, newlines, comments) accepted between two
/// tokens. The tokenizer makes every space a token, and the parser skips a run at every peek:
/// 60,000 spaces made each step cost 60,000, and padded statements parsed for minutes within
/// their budget (attacker round 17 H1).
pub(crate) const MAX_WHITESPACE_RUN: usize = 1024;

/// The tokens a parse of `tokens` may be charged for: the ones that are not whitespace (padding
/// buys no budget); refused when a run of whitespace is longer than [`MAX_WHITESPACE_RUN`].
fn budget_tokens(tokens: &[datafusion::sql::sqlparser::tokenizer::Token]) -> Result<usize, String> {
    use datafusion::sql::sqlparser::tokenizer::Token;
    let (mut counted, mut run) = (0usize, 0usize);
    for t in tokens {
        if matches!(t, Token::Whitespace(_)) {
            run += 1;
            if run > MAX_WHITESPACE_RUN {
                return Err(format!(
                    "it has more than {MAX_WHITESPACE_RUN} spaces, line breaks or comments in a \
                     row"
                ));
            }
        } else {
            run = 0;
            counted += 1;
        }
    }
    Ok(counted)
}

/// The unwinding payload of a parse that ran out of steps.
#[derive(Debug)]
struct Exhausted;

/// Runs `parse` (which parses, with the dialect it is given, the text `tokens` came from) within
/// a budget of steps for those tokens and within `allowed` ([`statement_time`],
/// [`trail_time`]). Refused, with the reason, when the text has too long a run of whitespace or
/// the parse ran out of steps or time. Other panics go on unwinding.
pub(crate) fn parse_bounded<T>(
    tokens: &[datafusion::sql::sqlparser::tokenizer::Token],
    allowed: std::time::Duration,
    parse: impl FnOnce(&Budgeted) -> T,
) -> Result<T, String> {
    let dialect = Budgeted::new(budget_tokens(tokens)?, allowed);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&dialect))) {
        Ok(out) => Ok(out),
        Err(payload) if payload.is::<Exhausted>() => Err(
            "the SQL parser would have to try too many ways to read it (nested brackets, CAST(, \
             POSITION(, ARRAY< and the like that do not parse make it retry everything inside \
             them); check the statement's syntax"
                .into(),
        ),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

impl Dialect for Budgeted {
    /// The generic dialect's identity: the parser's dialect checks treat this as it.
    fn dialect(&self) -> TypeId {
        // Asked wherever the parser branches by dialect (`dialect_of!`), in type parsing too.
        self.step();
        TypeId::of::<GenericDialect>()
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        self.step();
        self.inner.parse_prefix(parser)
    }

    fn parse_infix(
        &self,
        parser: &mut Parser,
        expr: &Expr,
        precedence: u8,
    ) -> Option<Result<Expr, ParserError>> {
        self.step();
        self.inner.parse_infix(parser, expr, precedence)
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.step();
        self.inner.get_next_precedence(parser)
    }

    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        self.step();
        self.inner.parse_statement(parser)
    }

    // Everything else as the generic dialect (generated from its `impl Dialect`), each a step but
    // the tokenizer's questions about characters.
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.inner.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.inner.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.inner.is_identifier_part(ch)
    }

    fn supports_unicode_string_literal(&self) -> bool {
        self.step();
        self.inner.supports_unicode_string_literal()
    }

    fn supports_partition_by_after_order_by(&self) -> bool {
        self.step();
        self.inner.supports_partition_by_after_order_by()
    }

    fn supports_array_join_syntax(&self) -> bool {
        self.step();
        self.inner.supports_array_join_syntax()
    }

    fn supports_group_by_expr(&self) -> bool {
        self.step();
        self.inner.supports_group_by_expr()
    }

    fn supports_group_by_with_modifier(&self) -> bool {
        self.step();
        self.inner.supports_group_by_with_modifier()
    }

    fn supports_left_associative_joins_without_parens(&self) -> bool {
        self.step();
        self.inner.supports_left_associative_joins_without_parens()
    }

    fn supports_connect_by(&self) -> bool {
        self.step();
        self.inner.supports_connect_by()
    }

    fn supports_match_recognize(&self) -> bool {
        self.step();
        self.inner.supports_match_recognize()
    }

    fn supports_pipe_operator(&self) -> bool {
        self.step();
        self.inner.supports_pipe_operator()
    }

    fn supports_start_transaction_modifier(&self) -> bool {
        self.step();
        self.inner.supports_start_transaction_modifier()
    }

    fn supports_window_function_null_treatment_arg(&self) -> bool {
        self.step();
        self.inner.supports_window_function_null_treatment_arg()
    }

    fn supports_dictionary_syntax(&self) -> bool {
        self.step();
        self.inner.supports_dictionary_syntax()
    }

    fn supports_window_clause_named_window_reference(&self) -> bool {
        self.step();
        self.inner.supports_window_clause_named_window_reference()
    }

    fn supports_parenthesized_set_variables(&self) -> bool {
        self.step();
        self.inner.supports_parenthesized_set_variables()
    }

    fn supports_select_wildcard_except(&self) -> bool {
        self.step();
        self.inner.supports_select_wildcard_except()
    }

    fn support_map_literal_syntax(&self) -> bool {
        self.step();
        self.inner.support_map_literal_syntax()
    }

    fn allow_extract_custom(&self) -> bool {
        self.step();
        self.inner.allow_extract_custom()
    }

    fn allow_extract_single_quotes(&self) -> bool {
        self.step();
        self.inner.allow_extract_single_quotes()
    }

    fn supports_extract_comma_syntax(&self) -> bool {
        self.step();
        self.inner.supports_extract_comma_syntax()
    }

    fn supports_create_view_comment_syntax(&self) -> bool {
        self.step();
        self.inner.supports_create_view_comment_syntax()
    }

    fn supports_parens_around_table_factor(&self) -> bool {
        self.step();
        self.inner.supports_parens_around_table_factor()
    }

    fn supports_values_as_table_factor(&self) -> bool {
        self.step();
        self.inner.supports_values_as_table_factor()
    }

    fn supports_create_index_with_clause(&self) -> bool {
        self.step();
        self.inner.supports_create_index_with_clause()
    }

    fn supports_explain_with_utility_options(&self) -> bool {
        self.step();
        self.inner.supports_explain_with_utility_options()
    }

    fn supports_limit_comma(&self) -> bool {
        self.step();
        self.inner.supports_limit_comma()
    }

    fn supports_update_order_by(&self) -> bool {
        self.step();
        self.inner.supports_update_order_by()
    }

    fn supports_from_first_select(&self) -> bool {
        self.step();
        self.inner.supports_from_first_select()
    }

    fn supports_projection_trailing_commas(&self) -> bool {
        self.step();
        self.inner.supports_projection_trailing_commas()
    }

    fn supports_asc_desc_in_column_definition(&self) -> bool {
        self.step();
        self.inner.supports_asc_desc_in_column_definition()
    }

    fn supports_try_convert(&self) -> bool {
        self.step();
        self.inner.supports_try_convert()
    }

    fn supports_bitwise_shift_operators(&self) -> bool {
        self.step();
        self.inner.supports_bitwise_shift_operators()
    }

    fn supports_comment_on(&self) -> bool {
        self.step();
        self.inner.supports_comment_on()
    }

    fn supports_load_extension(&self) -> bool {
        self.step();
        self.inner.supports_load_extension()
    }

    fn supports_named_fn_args_with_assignment_operator(&self) -> bool {
        self.step();
        self.inner.supports_named_fn_args_with_assignment_operator()
    }

    fn supports_struct_literal(&self) -> bool {
        self.step();
        self.inner.supports_struct_literal()
    }

    fn supports_empty_projections(&self) -> bool {
        self.step();
        self.inner.supports_empty_projections()
    }

    fn supports_nested_comments(&self) -> bool {
        self.step();
        self.inner.supports_nested_comments()
    }

    fn supports_multiline_comment_hints(&self) -> bool {
        self.step();
        self.inner.supports_multiline_comment_hints()
    }

    fn supports_user_host_grantee(&self) -> bool {
        self.step();
        self.inner.supports_user_host_grantee()
    }

    fn supports_string_escape_constant(&self) -> bool {
        self.step();
        self.inner.supports_string_escape_constant()
    }

    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.step();
        self.inner.supports_array_typedef_with_brackets()
    }

    fn supports_match_against(&self) -> bool {
        self.step();
        self.inner.supports_match_against()
    }

    fn supports_set_names(&self) -> bool {
        self.step();
        self.inner.supports_set_names()
    }

    fn supports_comma_separated_set_assignments(&self) -> bool {
        self.step();
        self.inner.supports_comma_separated_set_assignments()
    }

    fn supports_filter_during_aggregation(&self) -> bool {
        self.step();
        self.inner.supports_filter_during_aggregation()
    }

    fn supports_select_wildcard_exclude(&self) -> bool {
        self.step();
        self.inner.supports_select_wildcard_exclude()
    }

    fn supports_data_type_signed_suffix(&self) -> bool {
        self.step();
        self.inner.supports_data_type_signed_suffix()
    }

    fn supports_interval_options(&self) -> bool {
        self.step();
        self.inner.supports_interval_options()
    }

    fn supports_quote_delimited_string(&self) -> bool {
        self.step();
        self.inner.supports_quote_delimited_string()
    }

    fn supports_select_wildcard_replace(&self) -> bool {
        self.step();
        self.inner.supports_select_wildcard_replace()
    }

    fn supports_select_wildcard_ilike(&self) -> bool {
        self.step();
        self.inner.supports_select_wildcard_ilike()
    }

    fn supports_select_wildcard_rename(&self) -> bool {
        self.step();
        self.inner.supports_select_wildcard_rename()
    }

    fn supports_optimize_table(&self) -> bool {
        self.step();
        self.inner.supports_optimize_table()
    }

    fn supports_install(&self) -> bool {
        self.step();
        self.inner.supports_install()
    }

    fn supports_detach(&self) -> bool {
        self.step();
        self.inner.supports_detach()
    }

    fn supports_prewhere(&self) -> bool {
        self.step();
        self.inner.supports_prewhere()
    }

    fn supports_with_fill(&self) -> bool {
        self.step();
        self.inner.supports_with_fill()
    }

    fn supports_limit_by(&self) -> bool {
        self.step();
        self.inner.supports_limit_by()
    }

    fn supports_interpolate(&self) -> bool {
        self.step();
        self.inner.supports_interpolate()
    }

    fn supports_settings(&self) -> bool {
        self.step();
        self.inner.supports_settings()
    }

    fn supports_select_format(&self) -> bool {
        self.step();
        self.inner.supports_select_format()
    }

    fn supports_comment_optimizer_hint(&self) -> bool {
        self.step();
        self.inner.supports_comment_optimizer_hint()
    }

    fn supports_constraint_keyword_without_name(&self) -> bool {
        self.step();
        self.inner.supports_constraint_keyword_without_name()
    }

    fn supports_key_column_option(&self) -> bool {
        self.step();
        self.inner.supports_key_column_option()
    }

    fn supports_comma_separated_trim(&self) -> bool {
        self.step();
        self.inner.supports_comma_separated_trim()
    }

    fn supports_cte_without_as(&self) -> bool {
        self.step();
        self.inner.supports_cte_without_as()
    }

    fn supports_select_item_multi_column_alias(&self) -> bool {
        self.step();
        self.inner.supports_select_item_multi_column_alias()
    }

    fn supports_xml_expressions(&self) -> bool {
        self.step();
        self.inner.supports_xml_expressions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    /// Parses `sql` with an unlimited budget; the steps it took per token.
    fn steps_per_token(sql: &str) -> f64 {
        let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().unwrap();
        let dialect = Budgeted {
            inner: GenericDialect {},
            left: Cell::new(u64::MAX),
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(3600),
        };
        Parser::new(&dialect)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements())
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        (u64::MAX - dialect.left.get()) as f64 / budget_tokens(&tokens).unwrap() as f64
    }

    fn exhausts(sql: &str) -> bool {
        let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().unwrap();
        // On a stack sized to the text, as the gateway parses.
        crate::statement::on_stack_for(sql, || {
            parse_bounded(&tokens, statement_time(sql.len()), |dialect| {
                Parser::new(dialect)
                    .with_recursion_limit(crate::statement::PARSER_RECURSION_LIMIT)
                    .try_with_sql(sql)
                    .and_then(|mut p| p.parse_statements())
            })
            .is_err()
        })
    }

    #[test]
    fn real_statements_take_few_steps_per_token() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut statements = Vec::new();
        for dir in ["benches/queries", "tests/slt"] {
            for f in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                let text = std::fs::read_to_string(f.path()).unwrap();
                if f.path().extension().is_some_and(|e| e == "sql") {
                    statements.push(text);
                } else {
                    // sqllogictest: the SQL of each record, up to its `----` or blank line.
                    for record in text.split("\n\n") {
                        let mut lines = record.lines().skip_while(|l| {
                            !(l.starts_with("query") || l.starts_with("statement"))
                        });
                        if lines.next().is_none() {
                            continue;
                        }
                        let sql: Vec<&str> = lines.take_while(|l| *l != "----").collect();
                        statements.push(sql.join("\n"));
                    }
                }
            }
        }
        assert!(statements.len() > 40, "{}", statements.len());
        let mut worst = 0f64;
        for sql in &statements {
            if Parser::parse_sql(&GenericDialect {}, sql).is_ok() {
                worst = worst.max(steps_per_token(sql));
            }
        }
        eprintln!("worst: {worst} steps per token");
        // Far below the budget: no statement a client really sends comes near it.
        assert!(
            worst * 3.0 < STEPS_PER_TOKEN as f64,
            "{worst} steps per token"
        );
    }

    #[test]
    fn nested_alternatives_run_out_of_steps_instead_of_backtracking_exponentially() {
        for (open, n) in [
            ("CAST(", 40),
            ("TRY_CAST(", 40),
            ("POSITION(", 30),
            ("SUBSTRING(", 40),
            ("ARRAY[", 40),
        ] {
            let sql = format!("SELECT {} x) FROM t", open.repeat(n));
            assert!(exhausts(&sql), "{open} x {n}");
        }
        // Round 16 H1: derived tables retried as nested joins, with no expression in them.
        for (open, n) in [
            ("((SELECT * FROM ", 31),
            ("(((SELECT*FROM ", 21),
            ("((((SELECT*FROM ", 16),
        ] {
            let sql = format!("SELECT * FROM {} x", open.repeat(n));
            assert!(exhausts(&sql), "{open} x {n}");
        }
        // Round 18 H1: type modifiers walked without a dialect question, at every retry; the
        // deadline ends it (the steps alone would let it run for hours).
        let sql = format!("SELECT {}x{}", "CAST(".repeat(20), " 1".repeat(200_000));
        assert!(exhausts(&sql), "CAST( with a long tail");
        // Round 16 H2: each `ARRAY` retried as the whole type chain after it (quadratic).
        let sql = format!("SELECT {}INT", "ARRAY<".repeat(20_000));
        assert!(exhausts(&sql), "ARRAY< x 20000");
        // Deep but well-formed nesting of the same constructs parses.
        let sql = format!(
            "SELECT {}x{} FROM t",
            "CAST(".repeat(20),
            " AS INT)".repeat(20)
        );
        assert!(!exhausts(&sql));
    }
}
