//! What a statement's regular expressions cost to compile.
//!
//! Arrow and DataFusion compile a constant pattern (`~`, `SIMILAR TO`, `regexp_*`) again for
//! every batch, inside a kernel call that does not yield. Two hundred `\w{200}` patterns, each
//! just under the regex crate's 10 MiB program limit, held the query runtime 46 s and stalled
//! every other user's queries 44 s (attacker round 19 H1). Each pattern is compiled here once,
//! at planning, to find the smallest of a few program sizes it fits, refused past the largest;
//! the statement's patterns together may take at most [`PATTERN_BUDGET`]. LIKE patterns are
//! charged as the regular expressions arrow makes of them.
//!
//! The cap also bounds matching, as far as the regex crate's lazy DFA goes: a LIKE of 1,000
//! `a_` pairs (a 1 MiB program) overflowed the DFA's cache and matched each 2 KB row in 30 ms
//! by simulation (a batch: 36 s, attacker round 20 H1), 500 pairs (512 KiB) ran a batch in
//! 0.17 s. A pattern under the cap that defeats the DFA some other way would still cost about
//! its program times the text it reads.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};

/// The compiled program sizes a pattern is charged, smallest first; a pattern that needs more
/// than the last is refused.
const SIZES: [usize; 3] = [16 << 10, 128 << 10, 512 << 10];

/// The most program bytes a statement's regular expressions may compile to, together.
pub const PATTERN_BUDGET: usize = 2 << 20;

/// Refuses `plan` when a regular expression in it compiles to more than 512 KiB, or all of them
/// to more than [`PATTERN_BUDGET`]. Checked as written (before the optimizer folds constant
/// calls, compiling their patterns) and as optimized (folded patterns are literals).
pub(crate) fn check(plan: &LogicalPlan) -> Result<(), DataFusionError> {
    let mut spent = 0usize;
    let mut refusal = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let Some((pattern, like)) = regex_pattern(e) else {
                    return Ok(TreeNodeRecursion::Continue);
                };
                match charge(pattern, like) {
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

/// A pattern of `e`, if it takes one, and whether it is a LIKE pattern (arrow turns those into
/// regular expressions too, matched row by row inside one call: 1,000 `a_` pairs held a thread
/// 36 s per batch, attacker round 20 H1).
fn regex_pattern(e: &Expr) -> Option<(&Expr, bool)> {
    match e {
        Expr::BinaryExpr(b) => match b.op {
            Operator::RegexMatch
            | Operator::RegexIMatch
            | Operator::RegexNotMatch
            | Operator::RegexNotIMatch => Some((&b.right, false)),
            Operator::LikeMatch
            | Operator::ILikeMatch
            | Operator::NotLikeMatch
            | Operator::NotILikeMatch => Some((&b.right, true)),
            _ => None,
        },
        Expr::Like(l) => Some((&l.pattern, true)),
        Expr::SimilarTo(l) => Some((&l.pattern, false)),
        Expr::ScalarFunction(f) if f.func.name().starts_with("regexp_") => {
            f.args.get(1).map(|p| (p, false))
        }
        _ => None,
    }
}

/// The regular expression arrow makes of a LIKE pattern: `%` any text, `_` any character,
/// `\\` escaping the next, everything else itself.
fn like_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => match chars.next() {
                Some(next) => out.push_str(&regex::escape(&next.to_string())),
                None => out.push_str("\\\\"),
            },
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    format!("(?s){out}")
}

/// What compiling `pattern` costs, charged as the smallest of [`SIZES`] it fits (case
/// insensitive too: flags may ask for it). A pattern that is not a literal string after
/// optimization costs the most (a parameter is measured once bound; columns are refused
/// elsewhere); one that does not compile costs nothing (the query fails when it runs).
fn charge(pattern: &Expr, like: bool) -> Result<usize, String> {
    let written = match pattern {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => s,
        Expr::Literal(..) | Expr::Placeholder(_) => return Ok(0),
        _ => return Ok(SIZES[SIZES.len() - 1]),
    };
    if written.is_empty() {
        return Ok(0);
    }
    let text = &match like {
        true => like_regex(written),
        false => written.clone(),
    };
    // A Unicode word boundary makes the regex crate's fast matcher give up at the first
    // non-ASCII byte and match by simulation, about the pattern's size times the text: `\b`
    // before `.{0,500}` over 60 KB rows of `é ` held both execution threads 71 s (attacker
    // round 21 H1).
    if let Ok(hir) = regex_syntax::Parser::new().parse(text) {
        if hir.properties().look_set().contains_word_unicode() {
            let shown: String = written.chars().take(40).collect();
            return Err(format!(
                "the regular expression '{shown}' uses a Unicode word boundary (\\b or \\B), \
                 which is matched by a slow engine over non-ASCII text; write (?-u:\\b) for an \
                 ASCII word boundary"
            ));
        }
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
    let shown: String = written.chars().take(40).collect();
    let what = if like {
        "the LIKE pattern"
    } else {
        "the regular expression"
    };
    Err(format!(
        "{what} '{shown}' compiles to more than {} KiB, and is compiled again \
         for every batch; use a simpler pattern",
        SIZES[SIZES.len() - 1] >> 10
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
        assert!(err.contains("compiles to more than 512 KiB"), "{err}");
        let err = checked("SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x ~* '\\w{200}'")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("compiles to more than 512 KiB"), "{err}");
    }

    #[tokio::test]
    async fn like_patterns_are_charged_as_the_regular_expressions_they_become() {
        let pairs = "a_".repeat(1000);
        let err = checked(&format!(
            "SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x LIKE '%{pairs}b%'"
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the LIKE pattern"), "{err}");
        let err = checked(&format!(
            "SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x NOT ILIKE '%{pairs}b%'"
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("compiles to more than 512 KiB"), "{err}");
        checked("SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x LIKE 'Zh%' AND x LIKE '%\\_%'")
            .await
            .unwrap();
        assert_eq!(like_regex("a%b_c.\\%"), "(?s)a.*b.c\\.%");
    }

    #[tokio::test]
    async fn unicode_word_boundaries_are_refused_and_ascii_ones_are_not() {
        for sql in [
            "SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x ~ '\\b.{0,500}[0-9]'",
            "SELECT regexp_like(x, '\\Bfoo') FROM (VALUES ('a')) t(x)",
        ] {
            let err = checked(sql).await.unwrap_err().to_string();
            assert!(err.contains("Unicode word boundary"), "{err}");
        }
        checked("SELECT count(*) FROM (VALUES ('a')) t(x) WHERE x ~ '(?-u:\\b)foo(?-u:\\b)'")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn many_middling_patterns_together_are_refused() {
        let many: Vec<String> = (0..40)
            .map(|i| format!("regexp_like(x, '\\w{{5}}z{i}')"))
            .collect();
        let sql = format!("SELECT {} FROM (VALUES ('a')) t(x)", many.join(" OR "));
        let err = checked(&sql).await.unwrap_err().to_string();
        assert!(err.contains("together compile to more than 2 MiB"), "{err}");
    }
}
