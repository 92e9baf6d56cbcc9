//! Bounds on a statement's shape, checked on its tokens and its parsed form before anything
//! recurses over it: bracket nesting, CTE copies, expression depth.

use super::*;

/// The deepest nesting of brackets, `CASE … END` and prefix operators accepted; each level costs
/// the parser up to about three levels of recursion.
pub const MAX_NESTING: usize = 64;

/// Refuses a statement whose brackets, `CASE … END` and runs of prefix operators (`NOT`, unary
/// `-`, `+`, `~`, `!`) nest deeper than [`MAX_NESTING`], measured on its tokens without recursion.
/// Text that does not tokenize is left for the parser to report.
pub(super) fn check_nesting(sql: &str) -> Result<(), GatewayError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    // What each open bracket or CASE added to the depth, and the prefix operators just read.
    let mut frames: Vec<usize> = Vec::new();
    let (mut depth, mut run) = (0usize, 0usize);
    let mut operand_expected = true;
    for token in tokens {
        let keyword = match &token {
            Token::Word(w) if w.quote_style.is_none() => w.keyword,
            _ => Keyword::NoKeyword,
        };
        let opens = matches!(token, Token::LParen | Token::LBracket | Token::LBrace)
            || keyword == Keyword::CASE;
        let closes = matches!(token, Token::RParen | Token::RBracket | Token::RBrace)
            || keyword == Keyword::END;
        let prefix = keyword == Keyword::NOT
            || (operand_expected
                && matches!(
                    token,
                    Token::Minus | Token::Plus | Token::Tilde | Token::ExclamationMark
                ));
        match token {
            Token::Whitespace(_) => continue,
            _ if opens => {
                frames.push(1 + run);
                depth += 1 + run;
                run = 0;
            }
            _ if closes => {
                depth -= frames.pop().unwrap_or(0);
                run = 0;
            }
            _ if prefix => run += 1,
            _ => run = 0,
        }
        if depth + run > MAX_NESTING {
            return Err(GatewayError::TooLarge(format!(
                "brackets, CASE and prefix operators nest more than {MAX_NESTING} levels deep"
            )));
        }
        operand_expected = match &token {
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::RParen
            | Token::RBracket
            | Token::RBrace => false,
            Token::Word(w) => {
                w.quote_style.is_none()
                    && !matches!(
                        w.keyword,
                        Keyword::NoKeyword
                            | Keyword::END
                            | Keyword::NULL
                            | Keyword::TRUE
                            | Keyword::FALSE
                    )
            }
            _ => true,
        };
    }
    Ok(())
}

/// The most copies of common table expressions a statement may expand to. DataFusion inlines a
/// CTE at every reference, so CTEs that each reference the one before twice double per level:
/// a 947-byte statement planned 2^15 scans and held some 700 MB per prepared statement
/// (attacker round 8).
pub(crate) const MAX_CTE_COPIES: u64 = 1024;

/// Refuses a statement whose CTEs, inlined at every reference, make more than
/// [`MAX_CTE_COPIES`] copies.
pub(super) fn check_cte_copies(
    s: &ast::Statement,
    max_sql_bytes: usize,
) -> Result<(), GatewayError> {
    struct Copies {
        most: u64,
        most_bytes: u64,
        withs: usize,
    }
    /// One copy of `query` (and its text's bytes), with the copies (and bytes) of the CTEs in
    /// `sizes` it names.
    fn copies_of<V: ast::Visit + std::fmt::Display>(
        query: &V,
        sizes: &[(String, u64, u64)],
    ) -> (u64, u64) {
        let (mut n, mut bytes) = (1u64, query.to_string().len() as u64);
        let _ = ast::visit_relations(query, |name| {
            let full = name.to_string();
            let last = full.rsplit('.').next().unwrap_or(&full);
            let last = last.trim_matches('"').to_lowercase();
            if let Some((_, size, size_bytes)) = sizes.iter().rev().find(|(cte, _, _)| *cte == last)
            {
                n = n.saturating_add(*size);
                bytes = bytes.saturating_add(*size_bytes);
            }
            ControlFlow::<()>::Continue(())
        });
        (n, bytes)
    }
    impl ast::Visitor for Copies {
        type Break = ();
        fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                self.withs += 1;
                let mut sizes: Vec<(String, u64, u64)> = Vec::new();
                for cte in &with.cte_tables {
                    let (size, bytes) = copies_of(cte.query.as_ref(), &sizes);
                    self.most = self.most.max(size);
                    self.most_bytes = self.most_bytes.max(bytes);
                    sizes.push((cte.alias.name.value.to_lowercase(), size, bytes));
                }
                let (size, bytes) = copies_of(query.body.as_ref(), &sizes);
                self.most = self.most.max(size);
                self.most_bytes = self.most_bytes.max(bytes);
            }
            ControlFlow::Continue(())
        }
    }
    let mut copies = Copies {
        most: 0,
        most_bytes: 0,
        withs: 0,
    };
    let _ = ast::Visit::visit(s, &mut copies);
    // Counted per WITH, copies multiply across nested ones (a WITH inside each CTE doubled per
    // level past the count, attacker round 9): one WITH per statement.
    if copies.withs > 1 {
        return Err(GatewayError::TooLarge(format!(
            "it has {} WITH clauses; write its common table expressions in one WITH",
            copies.withs
        )));
    }
    if copies.most > MAX_CTE_COPIES {
        return Err(GatewayError::TooLarge(format!(
            "its common table expressions, inlined where they are named, make {} copies of \
             queries, more than {MAX_CTE_COPIES}",
            copies.most
        )));
    }
    // Few copies of a wide query are as large a plan as many of a small one (512 copies of a
    // 200-column CTE: 0.7 s to plan, a 6 MB plan, attacker round 10): inlined, the statement
    // is held to the size it may have written out.
    if copies.most_bytes > max_sql_bytes as u64 {
        return Err(GatewayError::TooLarge(format!(
            "its common table expressions, inlined where they are named, make {} bytes of SQL, \
             more than execution.max_sql_bytes ({max_sql_bytes})",
            copies.most_bytes
        )));
    }
    Ok(())
}

pub(super) mod depth {
    //! How deep a parsed statement nests, measured with a walk that stops at the limit.

    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{Expr, Query, SetExpr, Statement, Visit, Visitor};

    use crate::GatewayError;

    /// The deepest nesting of queries (subqueries, derived tables, CTE bodies) accepted: the
    /// optimizer's subquery rules take time exponential in it (25 nested scalar subqueries kept
    /// a core busy for over fifteen minutes).
    pub const MAX_QUERY_NESTING: usize = 16;

    /// The deepest chain of set operations (`UNION`, `INTERSECT`, `EXCEPT`) accepted: the
    /// planner recurses once per level.
    pub const MAX_SET_OPERATIONS: usize = 100;

    /// The most queries one statement may hold.
    pub const MAX_QUERIES: usize = 256;

    /// The longest SELECT list (or GROUP BY list) accepted, and the most SELECT items in one
    /// statement: DataFusion plans a list in time quadratic in its length (50,000 items, 878 KB
    /// of SQL, took 75 s; three users stalled a fourth 102 s, attacker round 16 M1).
    pub const MAX_LIST_ITEMS: usize = 4096;
    pub const MAX_STATEMENT_ITEMS: usize = 8192;

    /// The most window function calls one statement may make: DataFusion plans distinct
    /// windows in about cubic time (1,200 of them, 56 KB, took 44 s; two users stalled a third
    /// 157 s, attacker round 17 H2).
    pub const MAX_WINDOW_FUNCTIONS: usize = 256;

    struct Depth {
        current: usize,
        limit: usize,
        queries_open: usize,
        queries: usize,
        items: usize,
        windows: usize,
        refusal: Option<String>,
    }

    /// Refuses SELECT and GROUP BY lists past [`MAX_LIST_ITEMS`] in a query body (its set
    /// operations' sides included), and counts its SELECT items into `items`.
    fn list_lengths(body: &SetExpr, items: &mut usize) -> Result<(), String> {
        use datafusion::sql::sqlparser::ast::GroupByExpr;
        let mut stack = vec![body];
        while let Some(e) = stack.pop() {
            match e {
                SetExpr::Select(s) => {
                    let group = match &s.group_by {
                        GroupByExpr::Expressions(v, _) => v.len(),
                        GroupByExpr::All(_) => 0,
                    };
                    let longest = s.projection.len().max(group);
                    if longest > MAX_LIST_ITEMS {
                        return Err(format!(
                            "a SELECT or GROUP BY list of {longest} items, more than \
                             {MAX_LIST_ITEMS}"
                        ));
                    }
                    *items += s.projection.len();
                    if *items > MAX_STATEMENT_ITEMS {
                        return Err(format!(
                            "more than {MAX_STATEMENT_ITEMS} SELECT items in all"
                        ));
                    }
                }
                SetExpr::SetOperation { left, right, .. } => {
                    stack.push(left);
                    stack.push(right);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The depth of set operations under a query body, walked without recursion.
    fn set_depth(body: &SetExpr, limit: usize) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(body, 1usize)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            if deepest > limit {
                break;
            }
            if let SetExpr::SetOperation { left, right, .. } = e {
                stack.push((left, d + 1));
                stack.push((right, d + 1));
            }
        }
        deepest
    }

    impl Visitor for Depth {
        type Break = ();

        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            self.queries_open += 1;
            self.queries += 1;
            if self.queries_open > MAX_QUERY_NESTING {
                self.refusal = Some(format!(
                    "its queries nest more than {MAX_QUERY_NESTING} levels deep"
                ));
                return ControlFlow::Break(());
            }
            if self.queries > MAX_QUERIES {
                self.refusal = Some(format!("it holds more than {MAX_QUERIES} queries"));
                return ControlFlow::Break(());
            }
            if let Err(why) = list_lengths(&query.body, &mut self.items) {
                self.refusal = Some(format!("it has {why}"));
                return ControlFlow::Break(());
            }
            let sets = set_depth(&query.body, MAX_SET_OPERATIONS + 1);
            if sets > MAX_SET_OPERATIONS + 1 {
                self.refusal = Some(format!(
                    "it chains more than {MAX_SET_OPERATIONS} set operations (UNION, INTERSECT, EXCEPT)"
                ));
                return ControlFlow::Break(());
            }
            self.current += sets;
            if self.current > self.limit {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }

        fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            self.queries_open -= 1;
            self.current -= set_depth(&query.body, MAX_SET_OPERATIONS + 1);
            ControlFlow::Continue(())
        }

        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if matches!(expr, Expr::Function(f) if f.over.is_some()) {
                self.windows += 1;
                if self.windows > MAX_WINDOW_FUNCTIONS {
                    self.refusal = Some(format!(
                        "it calls more than {MAX_WINDOW_FUNCTIONS} window functions"
                    ));
                    return ControlFlow::Break(());
                }
            }
            self.current += 1;
            if self.current > self.limit {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }

        fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
            self.current -= 1;
            ControlFlow::Continue(())
        }
    }

    /// Refuses a statement nested deeper than `limit`.
    pub(crate) fn check(statement: &Statement, limit: usize) -> Result<(), GatewayError> {
        let mut depth = Depth {
            current: 0,
            limit,
            queries_open: 0,
            queries: 0,
            items: 0,
            windows: 0,
            refusal: None,
        };
        match statement.visit(&mut depth) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) if depth.refusal.is_some() => {
                Err(GatewayError::TooLarge(depth.refusal.unwrap_or_default()))
            }
            ControlFlow::Break(()) => Err(GatewayError::TooLarge(format!(
                "its expressions, subqueries and set operations nest deeper than {limit} levels ([execution] max_expression_depth); write long chains of OR as IN (...) or split the query"
            ))),
        }
    }
}
