//! The checker's rule for each kind of plan node: given the aggregate-only columns among each
//! input's output (the inputs' taints), refuse a use the node makes of one, and say which of the
//! node's own output columns still carry one. Fails closed on nodes it does not know.

use super::checker::*;
use super::*;

/// The rule used for bare columns flowing through a projection into any other expression.
const IN_AN_EXPRESSION: &str = "it may not be used in an expression, only as the bare argument of count, sum or avg or as a GROUP BY key";
const IN_WHERE: &str = "it may not be used in WHERE or HAVING";
const DISTINCT: &str = "it may not be selected DISTINCT; use GROUP BY";

impl Checker {
    /// `plan`'s output taint from its inputs' taints (`inputs[i]` is the taint of
    /// `plan.inputs()[i]`); subqueries in its expressions were checked by the walk.
    pub(super) fn node(
        &mut self,
        plan: &LogicalPlan,
        inputs: &[Taint],
    ) -> Result<Taint, GatewayError> {
        let input = || inputs.first().cloned().unwrap_or_default();
        let any_input = || inputs.iter().flatten().next();
        match plan {
            LogicalPlan::TableScan(scan) => scanned(scan, plan),
            LogicalPlan::SubqueryAlias(_) => Ok(renamed(plan, &input())),
            LogicalPlan::Projection(p) => project(&p.expr, plan, &input()),
            LogicalPlan::Filter(f) => {
                let t = input();
                check(&[&f.predicate], IN_WHERE, &t)?;
                Ok(pass_through(plan, &t))
            }
            LogicalPlan::Join(j) => {
                let t: Taint = inputs
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let on: Vec<&Expr> =
                    j.on.iter()
                        .flat_map(|(l, r)| [l, r])
                        .chain(j.filter.iter())
                        .collect();
                check(&on, "it may not be used in a JOIN condition", &t)?;
                Ok(pass_through(plan, &t))
            }
            LogicalPlan::Sort(s) => {
                let t = input();
                let exprs: Vec<&Expr> = s.expr.iter().map(|e| &e.expr).collect();
                check(&exprs, "it may not be used in ORDER BY", &t)?;
                Ok(pass_through(plan, &t))
            }
            LogicalPlan::Limit(_) | LogicalPlan::Repartition(_) => Ok(pass_through(plan, &input())),
            LogicalPlan::Window(w) => {
                let t = input();
                let exprs: Vec<&Expr> = w.window_expr.iter().collect();
                check(&exprs, "it may not be used in a window function", &t)?;
                Ok(pass_through(plan, &t))
            }
            LogicalPlan::Aggregate(a) => self.aggregate(a, &input()),
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::On(on)) => {
                let t = input();
                let keys: Vec<&Expr> = on
                    .on_expr
                    .iter()
                    .chain(on.sort_expr.iter().flatten().map(|s| &s.expr))
                    .collect();
                check(&keys, DISTINCT, &t)?;
                project(&on.select_expr, plan, &t)
            }
            LogicalPlan::Distinct(_) => refuse_any(input().iter().next(), DISTINCT),
            LogicalPlan::Union(_) => {
                refuse_any(any_input(), "it may not be used in a set operation")
            }
            // The explained plan is checked as if it were run.
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => refuse_any(
                any_input(),
                "it may not reach the output; use count, sum, avg or GROUP BY",
            ),
            LogicalPlan::Extension(_)
                if MinGroupRelease::of(plan).is_some() || DpRelease::of(plan).is_some() =>
            {
                self.released_below(plan);
                Ok(Taint::new())
            }
            // A data product's output is released by the product's own plan, checked when the
            // call is planned with the product as principal.
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok(Taint::new()),
            LogicalPlan::Extension(_) if crate::products::ProductCall::of(plan).is_some() => {
                Ok(Taint::new())
            }
            // Fail closed on anything this checker does not know.
            other => refuse_any(
                any_input(),
                &format!("it may not flow into {}", other.display()),
            ),
        }
    }

    /// An optimized plan's release: the aggregates below it (two when DataFusion split a
    /// DISTINCT aggregate) are released.
    fn released_below(&mut self, release: &LogicalPlan) {
        let mut below = release.inputs()[0];
        loop {
            match below {
                LogicalPlan::Aggregate(a) => {
                    self.released.push(a.schema.clone());
                    below = &a.input;
                }
                LogicalPlan::Projection(p) => below = &p.input,
                _ => break,
            }
        }
    }
}

/// A refusal for the first tainted column, if any reaches the node; otherwise nothing flows on.
fn refuse_any(first: Option<(&Column, &Origin)>, rule: &str) -> Result<Taint, GatewayError> {
    match first {
        Some((c, o)) => Err(refuse(rule, c, o)),
        None => Ok(Taint::new()),
    }
}

/// Refuses the first of `exprs` that reads a tainted column.
fn check(exprs: &[&Expr], rule: &str, taint: &Taint) -> Result<(), GatewayError> {
    for e in exprs {
        if let Some((c, o)) = tainted_in(e, taint) {
            return Err(refuse(rule, c, o));
        }
    }
    Ok(())
}

/// A secure table's scan: its aggregate-only columns are the source of every taint. Filters the
/// optimizer pushed into the scan may not read them (any column of the table).
fn scanned(scan: &TableScan, plan: &LogicalPlan) -> Result<Taint, GatewayError> {
    let Some(provider) = secure_table(scan) else {
        return Ok(Taint::new());
    };
    let table = as_secure(&provider);
    let origin = || Origin {
        table: table.snapshot().table.to_string(),
    };
    for f in &scan.filters {
        if let Some(c) = f
            .column_refs()
            .into_iter()
            .find(|c| table.aggregate_only(&c.name).is_some())
        {
            return Err(refuse(IN_WHERE, c, &origin()));
        }
    }
    let out: Taint = plan
        .schema()
        .columns()
        .into_iter()
        .filter(|c| table.aggregate_only(&c.name).is_some())
        .map(|c| (c, origin()))
        .collect();
    if !out.is_empty() && table.snapshot().subject_key.is_none() {
        return refuse_any(
            out.iter().next(),
            "the table declares no subject key, so none of its aggregate-only columns can be released",
        );
    }
    Ok(out)
}

/// Same columns, new qualifier (a subquery alias): mapped by position.
fn renamed(plan: &LogicalPlan, t: &Taint) -> Taint {
    let input_cols = plan.inputs()[0].schema().columns();
    plan.schema()
        .columns()
        .into_iter()
        .zip(input_cols)
        .filter_map(|(out, inp)| t.get(&inp).map(|o| (out, o.clone())))
        .collect()
}

/// Bare tainted columns pass through under their output names; any other use is refused.
fn project(exprs: &[Expr], plan: &LogicalPlan, t: &Taint) -> Result<Taint, GatewayError> {
    let mut out = Taint::new();
    for (e, c) in exprs.iter().zip(plan.schema().columns()) {
        match bare_column(e).and_then(|b| lookup(t, b)) {
            Some((_, o)) => {
                out.insert(c, o.clone());
            }
            None => check(&[e], IN_AN_EXPRESSION, t)?,
        }
    }
    Ok(out)
}

/// Output columns of `plan` that keep a tainted input column's name and qualifier.
fn pass_through(plan: &LogicalPlan, taint: &Taint) -> Taint {
    plan.schema()
        .columns()
        .into_iter()
        .filter_map(|c| taint.get(&c).map(|o| (c, o.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Each node's rule on a hand-made input taint: `t.diagnosis` is aggregate-only.
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::functions_aggregate::expr_fn::{count, max, sum};
    use datafusion::logical_expr::{logical_plan::builder::LogicalTableSource, LogicalPlanBuilder};

    fn table() -> LogicalPlanBuilder {
        let schema = Schema::new(vec![
            Field::new("diagnosis", DataType::Utf8, true),
            Field::new("district", DataType::Utf8, true),
            Field::new("cost", DataType::Int64, true),
            Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
        ]);
        let source = Arc::new(LogicalTableSource::new(Arc::new(schema)));
        LogicalPlanBuilder::scan("t", source, None).unwrap()
    }

    fn tainted() -> Taint {
        Taint::from([(
            Column::new(Some("t"), "diagnosis"),
            Origin {
                table: "health.visits".into(),
            },
        )])
    }

    /// The rule of the top node of `plan`, its input carrying `tainted()`.
    fn rule(plan: LogicalPlan) -> Result<Taint, GatewayError> {
        let mut checker = Checker {
            needs_check: vec![],
            released: vec![],
            seen: Taint::new(),
        };
        let inputs = vec![tainted(); plan.inputs().len()];
        checker.node(&plan, &inputs)
    }

    fn refusal(plan: LogicalPlan) -> String {
        rule(plan).unwrap_err().to_string()
    }

    #[test]
    fn bare_columns_pass_through_projections_filters_sorts_and_limits() {
        let projected = table().project([col("diagnosis").alias("d")]).unwrap();
        let out = rule(projected.build().unwrap()).unwrap();
        assert!(out.contains_key(&Column::new_unqualified("d")), "{out:?}");
        let filtered = table().filter(col("district").eq(lit("x"))).unwrap();
        assert_eq!(rule(filtered.build().unwrap()).unwrap().len(), 1);
        let sorted = table().sort([col("district").sort(true, true)]).unwrap();
        assert_eq!(rule(sorted.build().unwrap()).unwrap().len(), 1);
        let limited = table().limit(0, Some(5)).unwrap();
        assert_eq!(rule(limited.build().unwrap()).unwrap().len(), 1);
    }

    #[test]
    fn every_other_use_of_the_column_is_refused_with_its_rule() {
        let cases = [
            (
                table().project([col("diagnosis").eq(lit("B20"))]).unwrap(),
                "only as the bare argument",
            ),
            (
                table().filter(col("diagnosis").eq(lit("B20"))).unwrap(),
                "WHERE or HAVING",
            ),
            (
                table().sort([col("diagnosis").sort(true, true)]).unwrap(),
                "ORDER BY",
            ),
            (table().distinct().unwrap(), "DISTINCT"),
        ];
        for (plan, rule) in cases {
            let err = refusal(plan.build().unwrap());
            assert!(
                err.contains("column health.visits.diagnosis is aggregate-only")
                    && err.contains(rule),
                "{rule}: {err}"
            );
        }
        let union = table().union(table().build().unwrap()).unwrap();
        assert!(refusal(union.build().unwrap()).contains("set operation"));
    }

    #[test]
    fn a_releasing_aggregate_takes_bare_keys_and_counts_only_what_is_hidden() {
        let counted = table()
            .aggregate([col("diagnosis")], [count(lit(1))])
            .unwrap()
            .build()
            .unwrap();
        let mut checker = Checker {
            needs_check: vec![],
            released: vec![],
            seen: Taint::new(),
        };
        // Nothing flows on above the aggregate; it waits for a minimum-group check.
        assert!(checker.node(&counted, &[tainted()]).unwrap().is_empty());
        assert_eq!(checker.needs_check.len(), 1);

        let cases = [
            (
                table().aggregate([col("diagnosis")], [sum(col("cost"))]),
                "aggregates other than count(*)",
            ),
            (
                table().aggregate([col("district")], [max(col("diagnosis"))]),
                "max() over it is refused",
            ),
            (
                table().aggregate([col("diagnosis"), col("cost").gt(lit(10))], [count(lit(1))]),
                "GROUP BY keys are bare columns",
            ),
        ];
        for (plan, rule) in cases {
            let err = refusal(plan.unwrap().build().unwrap());
            assert!(err.contains(rule), "{rule}: {err}");
        }
    }

    #[test]
    fn an_unknown_node_fails_closed_when_a_column_reaches_it_and_not_otherwise() {
        let plan = table().unnest_column("tags").unwrap().build().unwrap();
        assert!(refusal(plan.clone()).contains("it may not flow into"));
        let mut checker = Checker {
            needs_check: vec![],
            released: vec![],
            seen: Taint::new(),
        };
        assert!(checker.node(&plan, &[Taint::new()]).unwrap().is_empty());
    }
}
