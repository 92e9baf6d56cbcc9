//! `lakegate explain`: what a policy admin needs to see of one request — per table and column the
//! decision and the determining policies, the row predicate, the secure view each table is read
//! through, and the query as planned (DataFusion's unparser).

use std::fmt::Write;
use std::time::SystemTime;

use datafusion::sql::resolve::resolve_table_references;

use catalog::TableRef;
use policy::{ColumnTreatment, Grant, RowPredicate};

use crate::{statement, Gateway, GatewayError, Principal};

impl Gateway {
    /// A report of the decisions for `sql` under `who`, for people (not for clients: it names
    /// denied tables and hidden columns).
    pub async fn explain(&self, who: &Principal, sql: &str) -> Result<String, GatewayError> {
        let scenario = who.scenario.as_deref().ok_or(GatewayError::NoScenario)?;
        self.check_scenario(scenario)?;
        let statement = statement::parse_read_statement(sql, self.sessions.limits)?;
        let (tables, _ctes) =
            resolve_table_references(&statement, true).map_err(GatewayError::Sql)?;
        let policies = self.policies();
        let now = SystemTime::now();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "user {} under scenario {scenario} (policy set {})",
            who.user,
            &policies.hash()[..16]
        );
        let products = self.sessions.products();
        for t in tables {
            let (schema, table) = match (t.schema(), t.catalog()) {
                (Some(s), None | Some("lake")) => (s.to_string(), t.table().to_string()),
                (None, None) if products.get(t.table()).is_some() => {
                    let may = policies.may_invoke(&who.user, scenario, t.table(), now)?;
                    let _ = match may {
                        (true, ids) => writeln!(
                            out,
                            "\ndata product {}: may be called{}",
                            t.table(),
                            by(&ids)
                        ),
                        (false, _) => writeln!(
                            out,
                            "\ndata product {}: DENIED — no policy permits invoke under this scenario",
                            t.table()
                        ),
                    };
                    continue;
                }
                _ => {
                    let _ = writeln!(out, "\ntable {t}: not a lake table (lake.<schema>.<table>)");
                    continue;
                }
            };
            let tref = TableRef::new(schema, table);
            let grant = policies.grant(&who.user, scenario, &tref.to_string(), now)?;
            let snapshot = self.lake().snapshot(&tref).await?;
            // Columns in table order.
            let order: Vec<String> = match &snapshot {
                Some(s) => s.schema.fields().iter().map(|f| f.name().clone()).collect(),
                None => grant.columns.keys().cloned().collect(),
            };
            describe_table(
                &mut out,
                &tref,
                &grant,
                snapshot.as_ref().map(|s| s.version),
                &order,
            );
        }
        out.push_str("\nquery as planned:\n");
        let prepared = match self.prepare(who, sql, "explain").await {
            // What execution would refuse after DataFusion's optimizer, explain refuses too.
            Ok(q) => q.check_optimized().await.map(|()| q),
            Err(e) => Err(e),
        };
        match prepared {
            Ok(q) => match crate::unparse::plan_sql(q.plan()) {
                Ok(sql) => {
                    let _ = writeln!(out, "  {sql}");
                }
                Err(e) => {
                    let _ = writeln!(out, "  (cannot unparse: {})", e.strip_backtrace());
                }
            },
            Err(e) => {
                let _ = writeln!(out, "  refused: {e}");
            }
        }
        Ok(out)
    }
}

fn describe_table(
    out: &mut String,
    t: &TableRef,
    grant: &Grant,
    version: Option<u64>,
    order: &[String],
) {
    let version = version
        .map(|v| format!(" (version {v})"))
        .unwrap_or_default();
    if !grant.allowed {
        let _ = writeln!(
            out,
            "\ntable {t}{version}: DENIED — it does not exist for this user{}",
            by(&grant.table_policies)
        );
        return;
    }
    let _ = writeln!(
        out,
        "\ntable {t}{version}: allowed{}",
        by(&grant.table_policies)
    );
    let mut view = Vec::new();
    for column in order {
        let treatment = grant.column(column);
        let policies = grant
            .column_policies
            .get(column)
            .cloned()
            .unwrap_or_default();
        match &treatment {
            ColumnTreatment::Raw | ColumnTreatment::AggregateOnly { .. } => {
                view.push(quote(column))
            }
            ColumnTreatment::Masked(m) => view.push(format!(
                "mask('{m}', {}) AS {}",
                quote(column),
                quote(column)
            )),
            ColumnTreatment::Hidden => {}
        }
        // The treatment's one wording, as on the audit trail.
        let _ = writeln!(out, "  {column:<24} {treatment}{}", by(&policies));
    }
    let rows = match &grant.rows {
        RowPredicate::All => "all".to_string(),
        RowPredicate::None => "none".to_string(),
        RowPredicate::Where(p) => format!("where {p}"),
    };
    let _ = writeln!(out, "  rows: {rows}{}", by(&grant.row_policies));
    let filter = match &grant.rows {
        RowPredicate::All => String::new(),
        RowPredicate::None => " WHERE FALSE".to_string(),
        RowPredicate::Where(p) => format!(" WHERE {p}"),
    };
    let _ = writeln!(
        out,
        "  secure view: SELECT {} FROM lake.{t}{filter}",
        if view.is_empty() {
            "(no column)".to_string()
        } else {
            view.join(", ")
        }
    );
}

fn by(policies: &[String]) -> String {
    if policies.is_empty() {
        " (no policy permits it)".into()
    } else {
        format!(" (by {})", policies.join(", "))
    }
}

fn quote(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}
