//! The differentially private release of `@epsilon` columns, and how it is shown (audit trail,
//! `explain`).

use super::*;

pub(super) fn dp_refuse(table: &str, why: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{table} is released with differential privacy: {why}"
    ))
}

/// The aggregate as a [`DpRelease`] over one row per (group, subject).
pub(super) fn dp_release(
    a: Aggregate,
    subject: Column,
    info: &ScanInfo,
    suppressed: &Suppressed,
) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    let epsilon = info.epsilon.expect("a private table");
    let input_schema = a.input.schema().clone();
    let mut group_expr = a.group_expr.clone();
    group_expr.push(Expr::Column(subject.clone()));
    let mut partials = Vec::new();
    let mut outputs = Vec::new();
    for (i, e) in a.aggr_expr.iter().enumerate() {
        let inner = match e {
            Expr::Alias(al) => al.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
            return Err(dp_refuse(
                &info.table,
                "only count, sum and avg are released",
            ));
        };
        let name = func.name().to_string();
        if params.distinct {
            return Err(dp_refuse(
                &info.table,
                &format!("{name}(DISTINCT ...) is refused; one subject could change many values"),
            ));
        }
        let arg = match params.args.as_slice() {
            [arg] => arg.clone(),
            _ => {
                return Err(dp_refuse(
                    &info.table,
                    &format!("{name}() takes one column"),
                ))
            }
        };
        let column = arg.column_refs().into_iter().next().cloned();
        let bounds = || {
            column
                .as_ref()
                .filter(|c| c.relation.is_none() || c.relation == subject.relation)
                .and_then(|c| {
                    info.provider
                        .as_ref()
                        .and_then(|p| as_secure(p).column_privacy(&c.name))
                })
                .and_then(|p| p.bounds)
                .ok_or_else(|| {
                    dp_refuse(
                        &info.table,
                        &format!(
                            "{name}({}) needs @bounds(\"lo,hi\") on the column's aggregate permit",
                            arg.schema_name()
                        ),
                    )
                })
        };
        let p = format!("{DP_PREFIX}{i}");
        let measure = match name.as_str() {
            "count" if matches!(&arg, Expr::Literal(v, _) if v.is_null()) => {
                return Err(dp_refuse(&info.table, "count(NULL) counts nothing"));
            }
            "count" if matches!(arg, Expr::Literal(..)) => Measure::Subjects,
            "count" => {
                partials.push(count(arg.clone()).alias(&p));
                Measure::NonNull { count: p }
            }
            "sum" => {
                let b = bounds()?;
                let integer =
                    datafusion::logical_expr::ExprSchemable::get_type(&arg, &input_schema)?
                        .is_integer();
                partials.push(sum(arg.clone()).alias(&p));
                Measure::Sum {
                    sum: p,
                    integer,
                    lo: b.lo,
                    hi: b.hi,
                }
            }
            "avg" => {
                let b = bounds()?;
                let c = format!("{p}c");
                partials.push(sum(arg.clone()).alias(&p));
                partials.push(count(arg.clone()).alias(&c));
                Measure::Avg {
                    sum: p,
                    count: c,
                    lo: b.lo,
                    hi: b.hi,
                }
            }
            other => {
                return Err(dp_refuse(
                    &info.table,
                    &format!("{other}() is refused; only count, sum and avg"),
                ))
            }
        };
        outputs.push(measure);
    }
    let keys = a.group_expr.len();
    let names = a
        .schema
        .iter()
        .skip(keys)
        .map(|(q, f)| (q.cloned(), f.name().clone()))
        .collect();
    let per_subject =
        LogicalPlan::Aggregate(Aggregate::try_new(a.input.clone(), group_expr, partials)?);
    let spec = DpSpec {
        table: info.table.clone(),
        keys,
        subject: SUBJECT_COLUMN.to_string(),
        outputs,
        epsilon,
        min_group: info.k,
    };
    Ok(DpRelease::try_new(per_subject, spec, names, suppressed.clone())?.into_plan())
}

/// `plan` with each release written as the filter it stands for (`HAVING
/// lakegate_release(count(DISTINCT subject) >= k)`, or NULL aggregates for a global one), so
/// that DataFusion's unparser can print it for the audit trail and `explain`. Never executed.
pub(crate) fn display_form(plan: &LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    plan.clone()
        .transform_up_with_subqueries(|node| {
            if let Some(dp) = DpRelease::of(&node) {
                return Ok(Transformed::yes(dp_display(dp)?));
            }
            let Some(release) = MinGroupRelease::of(&node) else {
                return Ok(Transformed::no(node));
            };
            let input = Arc::new(release.input().clone());
            let cond = release
                .checks()
                .iter()
                .map(|c| col(Column::from_name(c.column.clone())).gt_eq(lit(c.k as i64)))
                .reduce(|x, y| x.and(y))
                .expect("a release has checks");
            let ok = self::release(cond.clone(), release.suppressed());
            let outputs: Vec<_> = release.schema_fields();
            let plan = if release.global() {
                let exprs = outputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (q, f))| {
                        let c = Expr::Column(Column::new(q.clone(), f.name()));
                        let test = if i == 0 { ok.clone() } else { cond.clone() };
                        Ok(when(test, c)
                            .otherwise(lit(datafusion::common::ScalarValue::try_from(
                                f.data_type(),
                            )?))?
                            .alias_qualified(q, f.name()))
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                LogicalPlan::Projection(Projection::try_new(exprs, input)?)
            } else {
                let filtered = LogicalPlan::Filter(Filter::try_new(ok, input)?);
                let exprs = outputs
                    .into_iter()
                    .map(|(q, f)| Expr::Column(Column::new(q, f.name())))
                    .collect();
                LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(filtered))?)
            };
            Ok(Transformed::yes(plan))
        })
        .map(|t| t.data)
}

/// A differentially private release as SQL: the per-group aggregate over the per-subject one,
/// each value wrapped in `lakegate_dp_noise(value, ε)`. Never executed.
pub(super) fn dp_display(dp: &DpRelease) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::functions_aggregate::expr_fn::{avg, count, sum};
    use datafusion::logical_expr::UserDefinedLogicalNodeCore;
    let input = dp.inputs()[0].clone();
    let spec = dp.spec();
    let keys: Vec<Expr> = input
        .schema()
        .iter()
        .take(spec.keys)
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    let mut aggs = Vec::new();
    for (i, m) in spec.outputs.iter().enumerate() {
        let e = match m {
            Measure::Subjects => count(lit(1i64)),
            Measure::NonNull { count: c } => count(col(Column::from_name(c.clone()))),
            Measure::Sum { sum: s, .. } => sum(col(Column::from_name(s.clone()))),
            Measure::Avg { sum: s, .. } => avg(col(Column::from_name(s.clone()))),
        };
        aggs.push(e.alias(format!("{DP_PREFIX}out{i}")));
    }
    let grouped = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), keys.clone(), aggs)?);
    let noise = crate::enforce::dp_release::display_udf();
    let names: Vec<_> = dp
        .schema()
        .iter()
        .map(|(q, f)| (q.cloned(), f.name().clone()))
        .collect();
    let mut exprs: Vec<Expr> = keys;
    for (i, (q, name)) in names.into_iter().skip(spec.keys).enumerate() {
        let v = col(Column::from_name(format!("{DP_PREFIX}out{i}")));
        exprs.push(
            Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                noise.clone(),
                vec![v, lit(spec.epsilon.to_string())],
            ))
            .alias_qualified(q, name),
        );
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(grouped),
    )?))
}
