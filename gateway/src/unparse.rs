//! SQL text of a logical plan (the audit trail's `rewritten_sql`, `lakegate explain`), written by
//! DataFusion's unparser with its default dialect's rules.
//!
//! DataFusion 55's `DefaultDialect` compiles a regex for every identifier it writes (and scans
//! the keyword list linearly): 3–4 ms for a five-table TPC-H query, more than planning it, on
//! every audited query. [`LakeDialect`] answers the same question without either; everything
//! else is the trait's defaults, as in `DefaultDialect`.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use datafusion::error::Result;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
use datafusion::sql::unparser::ast::{
    QueryBuilder, RelationBuilder, SelectBuilder, TableRelationBuilder,
};
use datafusion::sql::unparser::dialect::Dialect;
use datafusion::sql::unparser::extension_unparser::{
    UnparseWithinStatementResult, UserDefinedLogicalNodeUnparser,
};
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

/// The largest plan written back as SQL, in plan nodes and expression nodes. The unparser
/// costs about ten times what planning did, and its text grows with the plan, not with the
/// statement: a 5 KB statement whose CTE is inlined 512 times took 7 s and 1.4 GB to unparse
/// into 6 MB of SQL (attacker round 10). TPC-H's largest plan has under 1,000.
pub const MAX_UNPARSED_NODES: usize = 20_000;

/// The most bytes of string literals in a plan written back as SQL: an alias over a large
/// literal, named a thousand times, is a small plan with a 100 MB text (attacker round 11).
pub const MAX_UNPARSED_LITERAL_BYTES: usize = 1 << 20;

/// `plan` as SQL text; a plan of more than [`MAX_UNPARSED_NODES`] is not written, and the text
/// says so.
pub(crate) fn plan_sql(plan: &LogicalPlan) -> Result<String> {
    let (nodes, literal_bytes) = plan_size(plan, MAX_UNPARSED_NODES + 1);
    if nodes > MAX_UNPARSED_NODES {
        return Ok(format!(
            "(not written back as SQL: the plan has more than {MAX_UNPARSED_NODES} nodes and \
             expressions; the statement is as sent)"
        ));
    }
    if literal_bytes > MAX_UNPARSED_LITERAL_BYTES {
        return Ok(format!(
            "(not written back as SQL: the plan's literals hold {literal_bytes} bytes, more than \
             {MAX_UNPARSED_LITERAL_BYTES}; the statement is as sent)"
        ));
    }
    let shown = crate::enforce::aggregate_only::display_form(plan)?;
    Ok(Unparser::new(&LakeDialect)
        .with_extension_unparsers(vec![Arc::new(CallUnparser)])
        .plan_to_sql(&shown)?
        .to_string())
}

/// Writes a data product call as the caller wrote it, `name(args)` in FROM: never the
/// product's own SQL.
struct CallUnparser;

impl UserDefinedLogicalNodeUnparser for CallUnparser {
    fn unparse(
        &self,
        node: &dyn datafusion::logical_expr::UserDefinedLogicalNode,
        unparser: &Unparser,
        _query: &mut Option<&mut QueryBuilder>,
        _select: &mut Option<&mut SelectBuilder>,
        relation: &mut Option<&mut RelationBuilder>,
    ) -> Result<UnparseWithinStatementResult> {
        let any: &dyn std::any::Any = node.as_any();
        let (Some(call), Some(relation)) =
            (any.downcast_ref::<crate::products::ProductCall>(), relation)
        else {
            return Ok(UnparseWithinStatementResult::Unmodified);
        };
        let args = call
            .args
            .iter()
            .map(|a| {
                unparser
                    .expr_to_sql(a)
                    .map(|e| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut table = TableRelationBuilder::default();
        table
            .name(ast::ObjectName::from(vec![ast::Ident::new(
                call.product.name(),
            )]))
            .args(Some(args));
        relation.table(table);
        Ok(UnparseWithinStatementResult::Modified)
    }
}

/// The plan's nodes and expression nodes (subqueries included), counted up to `most`, and the
/// bytes of its string and binary literals.
fn plan_size(plan: &LogicalPlan, most: usize) -> (usize, usize) {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr;
    use datafusion::scalar::ScalarValue;
    let (mut n, mut bytes) = (0usize, 0usize);
    let _ = plan.apply_with_subqueries(|p| {
        n += 1;
        for e in p.expressions() {
            let _ = e.apply(|e| {
                n += 1;
                match e {
                    Expr::Literal(
                        ScalarValue::Utf8(Some(s))
                        | ScalarValue::LargeUtf8(Some(s))
                        | ScalarValue::Utf8View(Some(s)),
                        _,
                    ) => bytes = bytes.saturating_add(s.len()),
                    // Written back as hex: twice their size.
                    Expr::Literal(
                        ScalarValue::Binary(Some(b))
                        | ScalarValue::LargeBinary(Some(b))
                        | ScalarValue::BinaryView(Some(b))
                        | ScalarValue::FixedSizeBinary(_, Some(b)),
                        _,
                    ) => bytes = bytes.saturating_add(b.len().saturating_mul(2)),
                    _ => {}
                }
                Ok(if n >= most {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            });
        }
        Ok(if n >= most {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    (n, bytes)
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
