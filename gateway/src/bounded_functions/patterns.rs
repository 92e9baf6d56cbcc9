//! What a statement's regular expressions cost to compile.
//!
//! Arrow and DataFusion compile a constant pattern (`~`, `SIMILAR TO`, `regexp_*`) again for
//! every batch, inside a kernel call that does not yield. Two hundred `\w{200}` patterns, each
//! just under the regex crate's 10 MiB program limit, held the query runtime 46 s and stalled
//! every other user's queries 44 s (attacker round 19 H1). Each pattern is compiled here once,
//! at planning, to find the smallest of a few program sizes it fits, refused past the largest;
//! the statement's patterns together may take at most [`PATTERN_BUDGET`].

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};

/// The compiled program sizes a pattern is charged, smallest first; a pattern that needs more
/// than the last is refused.
const SIZES: [usize; 3] = [16 << 10, 256 << 10, 1 << 20];

/// The most program bytes a statement's regular expressions may compile to, together.
pub const PATTERN_BUDGET: usize = 4 << 20;

/// Refuses `plan` when a regular expression in it compiles to more than 1 MiB, or all of them
/// to more than [`PATTERN_BUDGET`]. Checked as written (before the optimizer folds constant
/// calls, compiling their patterns) and as optimized (folded patterns are literals).
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), DataFusionError> {
    let mut spent = 0usize;
    let mut refusal = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let Some(pattern) = regex_pattern(e) else {
                    return Ok(TreeNodeRecursion::Continue);
                };
                match charge(pattern) {
                    Ok(size) => spent = spent.saturating_add(size),
                    Err(why) => refusal = Some(why),
                }
                if refusal.is_none() && spent > PATTERN_BUDGET {
                    refusal = Some(format!(
                        "its regular expressions together compile to more than {} MiB, which \
                         is done again for every batch; use fewer or simpler patterns",
                        PATTERN_BUDGET >> 20
                    ));
                }
                Ok(match refusal {
                    Some(_) => TreeNodeRecursion::Stop,
                    None => TreeNodeRecursion::Continue,
                })
            })
        })
    })?;
    match refusal {
        Some(why) => Err(DataFusionError::ResourcesExhausted(format!(
            "too costly: {why}"
        ))),
        None => Ok(()),
    }
}

/// The pattern `e` compiles as a regular expression, if it is one: the right side of `~` and
/// its variants, SIMILAR TO's pattern, a `regexp_*` function's second argument.
fn regex_pattern(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::BinaryExpr(b)
            if matches!(
                b.op,
                Operator::RegexMatch
                    | Operator::RegexIMatch
                    | Operator::RegexNotMatch
                    | Operator::RegexNotIMatch
            ) =>
        {
            Some(&b.right)
        }
        Expr::SimilarTo(l) => Some(&l.pattern),
        Expr::ScalarFunction(f) if f.func.name().starts_with("regexp_") => f.args.get(1),
        _ => None,
    }
}

/// What compiling `pattern` costs, charged as the smallest of [`SIZES`] it fits (case
/// insensitive too: flags may ask for it). A pattern that is not a literal string after
/// optimization costs the most (a parameter is measured once bound; columns are refused
/// elsewhere); one that does not compile costs nothing (the query fails when it runs).
fn charge(pattern: &Expr) -> Result<usize, String> {
    let text = match pattern {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => s,
        Expr::Literal(..) | Expr::Placeholder(_) => return Ok(0),
        _ => return Ok(SIZES[SIZES.len() - 1]),
    };
    if text.is_empty() {
        return Ok(0);
    }
    let fits = |p: &str, size: usize| match regex::RegexBuilder::new(p).size_limit(size).build() {
        Ok(_) => Some(true),
        Err(regex::Error::CompiledTooBig(_)) => Some(false),
        Err(_) => None,
    };
    let insensitive = format!("(?i){text}");
    for size in SIZES {
        match (fits(text, size), fits(&insensitive, size)) {
            (None, _) | (_, None) => return Ok(0),
            (Some(true), Some(true)) => return Ok(size),
            _ => {}
        }
    }
    let shown: String = text.chars().take(40).collect();
    Err(format!(
        "the regular expression '{shown}' compiles to more than {} MiB, and is compiled again \
         for every batch; use a simpler pattern",
        SIZES[SIZES.len() - 1] >> 20
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn checked(sql: &str) -> Result<(), DataFusionError> {
        let plan = SessionContext::new()
            .sql(sql)
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        check(&plan)
    }

    #[tokio::test]
    async fn ordinary_patterns_pass() {
        let many: Vec<String> = (0..100)
            .map(|i| format!("regexp_like(x, '^[A-Z]{{3}}-{i}\\d+$')"))
            .collect();
        let sql = format!(
            "SELECT {} FROM (VALUES ('ABC-1')) t(x) WHERE x ~ '^A' AND x SIMILAR TO 'A%'",
            many.join(", ")
        );
        checked(&sql).await.unwrap();
    }

    #[tokio::test]
    async fn a_pattern_too_large_to_compile_for_every_batch_is_refused() {
        let err = checked("SELECT regexp_like(x, '\\w{200}z') FROM (VALUES ('a')) t(x)")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("compiles to more than 1 MiB"), "{err}");
        let err = checked("SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x ~* '\\w{200}'")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("compiles to more than 1 MiB"), "{err}");
    }

    #[tokio::test]
    async fn many_middling_patterns_together_are_refused() {
        let many: Vec<String> = (0..40)
            .map(|i| format!("regexp_like(x, '\\w{{20}}z{i}')"))
            .collect();
        let sql = format!("SELECT {} FROM (VALUES ('a')) t(x)", many.join(" OR "));
        let err = checked(&sql).await.unwrap_err().to_string();
        assert!(err.contains("together compile to more than 4 MiB"), "{err}");
    }
}
