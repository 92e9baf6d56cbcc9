//! SQL text of a logical plan (the audit trail's `rewritten_sql`, `lakegate explain`), written by
//! DataFusion's unparser with its default dialect's rules.
//!
//! DataFusion 55's `DefaultDialect` compiles a regex for every identifier it writes (and scans
//! the keyword list linearly): 3–4 ms for a five-table TPC-H query, more than planning it, on
//! every audited query. [`LakeDialect`] answers the same question without either; everything
//! else is the trait's defaults, as in `DefaultDialect`.

use std::collections::HashSet;
use std::sync::LazyLock;

use datafusion::error::Result;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
use datafusion::sql::unparser::dialect::Dialect;
use datafusion::sql::unparser::Unparser;

/// `DefaultDialect` with a quote rule that costs a set lookup.
pub(crate) struct LakeDialect;

static KEYWORDS: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| ALL_KEYWORDS.iter().copied().collect());

impl Dialect for LakeDialect {
    /// Quoted when a keyword (but `ID`), not `[a-zA-Z_][a-zA-Z0-9_]*`, or holding an uppercase
    /// letter (unquoted identifiers are read back in lowercase): `DefaultDialect`'s rule.
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        let mut chars = identifier.chars();
        let simple = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        let upper = identifier.to_uppercase();
        let keyword = upper != "ID" && KEYWORDS.contains(upper.as_str());
        let needs_quote = keyword || !simple || identifier.chars().any(|c| c.is_ascii_uppercase());
        needs_quote.then_some('"')
    }
}

/// `plan` as SQL text.
pub(crate) fn plan_sql(plan: &LogicalPlan) -> Result<String> {
    let shown = crate::aggregate_only::display_form(plan)?;
    Ok(Unparser::new(&LakeDialect).plan_to_sql(&shown)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::unparser::dialect::DefaultDialect;

    #[test]
    fn quotes_exactly_what_the_default_dialect_quotes() {
        let mut names: Vec<String> = ALL_KEYWORDS
            .iter()
            .flat_map(|k| [k.to_string(), k.to_lowercase()])
            .collect();
        for n in [
            "id",
            "ID",
            "Id",
            "l_orderkey",
            "_x",
            "x1",
            "1x",
            "",
            "a b",
            "a-b",
            "é",
            "naïve",
            "Upper",
            "lower",
            "sql",
            "rewritten_sql",
            "__delta_rs_file_id__",
            "\"q\"",
            "ß",
        ] {
            names.push(n.to_string());
        }
        for n in &names {
            assert_eq!(
                LakeDialect.identifier_quote_style(n),
                DefaultDialect {}.identifier_quote_style(n),
                "{n:?}"
            );
        }
    }
}
