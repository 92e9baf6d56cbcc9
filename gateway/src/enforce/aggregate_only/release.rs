//! The minimum-group release: `count(DISTINCT subject) >= k` put directly above each aggregate
//! that releases an aggregate-only column, and the counter of groups it withholds.

use super::*;

/// Counts the groups the minimum-group rule withholds, for output review's record (how many,
/// never which).
#[derive(Debug, Clone, Default)]
pub struct Suppressed(Arc<std::sync::atomic::AtomicU64>);

impl Suppressed {
    /// Groups withheld so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `lakegate_release(ok)`: passes `ok` through (NULL as false) and counts the groups it
/// withholds. Volatile, so that no optimizer folds it away or moves it.
#[derive(Debug)]
pub(super) struct ReleaseUdf {
    suppressed: Suppressed,
    signature: datafusion::logical_expr::Signature,
}

impl PartialEq for ReleaseUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.suppressed.0, &other.suppressed.0)
    }
}
impl Eq for ReleaseUdf {}
impl std::hash::Hash for ReleaseUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.suppressed.0) as usize).hash(state)
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for ReleaseUdf {
    fn name(&self) -> &str {
        RELEASE_UDF
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::{Array, BooleanArray};
        let ok = args.args[0].clone().into_array(args.number_rows)?;
        let ok = ok
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataFusionError::Internal("lakegate_release takes a boolean".into()))?;
        let released: BooleanArray = ok.iter().map(|v| Some(v.unwrap_or(false))).collect();
        let withheld = released.len() - released.true_count();
        self.suppressed
            .0
            .fetch_add(withheld as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            released,
        )))
    }
}

/// The name of the release function in plans.
pub(crate) const RELEASE_UDF: &str = "lakegate_release";

/// The release function counting into `suppressed`.
pub(crate) fn release_udf(suppressed: &Suppressed) -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(ReleaseUdf {
        suppressed: suppressed.clone(),
        signature: datafusion::logical_expr::Signature::exact(
            vec![datafusion::arrow::datatypes::DataType::Boolean],
            datafusion::logical_expr::Volatility::Volatile,
        ),
    })
}

pub(super) fn release(ok: Expr, suppressed: &Suppressed) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(release_udf(suppressed)),
        vec![ok],
    ))
}

pub(super) fn rewrite(
    node: LogicalPlan,
    needs: &[(DFSchemaRef, Vec<Column>)],
    suppressed: &Suppressed,
) -> datafusion::error::Result<Transformed<LogicalPlan>> {
    match node {
        LogicalPlan::TableScan(scan) => {
            let Some(provider) = secure_table(&scan) else {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            };
            let table = as_secure(&provider);
            if !table.has_aggregate_only() {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            }
            let with_subject = Arc::new(table.with_subject_column()?);
            let subject_index = with_subject.served_len() - 1;
            let projection = Some(match scan.projection {
                Some(mut p) => {
                    p.push(subject_index);
                    p
                }
                None => (0..=subject_index).collect(),
            });
            let new =
                TableScanBuilder::new(scan.table_name.clone(), provider_as_source(with_subject))
                    .with_projection(projection)
                    .with_filters(scan.filters.clone())
                    .with_fetch(scan.fetch)
                    .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(new)))
        }
        LogicalPlan::Aggregate(a) => {
            let consumed = needs
                .iter()
                .find(|(s, _)| Arc::ptr_eq(s, &a.schema) || **s == *a.schema)
                .map(|(_, c)| c.clone());
            match consumed {
                Some(consumed) => Ok(Transformed::yes(min_group_check(a, &consumed, suppressed)?)),
                None => Ok(Transformed::yes(
                    LogicalPlan::Aggregate(a).recompute_schema()?,
                )),
            }
        }
        other => {
            // Schemas above a rewritten scan gain the subject column where they pass all
            // columns through.
            Ok(Transformed::yes(other.recompute_schema()?))
        }
    }
}

/// Adds `count(DISTINCT subject) >= k` per aggregate-only table read by the aggregate, or the
/// differentially private release when the table has an `@epsilon` column.
pub(super) fn min_group_check(
    a: Aggregate,
    consumed: &[Column],
    suppressed: &Suppressed,
) -> datafusion::error::Result<LogicalPlan> {
    let input_schema = a.input.schema().clone();
    let tables = collect_tables(&a.input);
    // Every aggregate-only column it releases comes with the subject key of its own table:
    // counting another table's subjects (a cross join with a subquery that selects one
    // person's value) would release one person as a large group.
    for c in consumed {
        let covered = c
            .relation
            .as_ref()
            .is_some_and(|q| tables.contains_key(q) && has_subject(&input_schema, q));
        if !covered {
            return Err(DataFusionError::Plan(format!(
                "aggregate-only column {} must be aggregated directly over its table (through joins and aliases, not through a subquery that selects columns)",
                c.flat_name()
            )));
        }
    }
    // Which scans' aggregate-only columns does this aggregate read, and their k.
    let mut scans: HashMap<TableReference, u64> = HashMap::new();
    let mut visit = |e: &Expr| {
        for c in e.column_refs() {
            if let Some(q) = &c.relation {
                scans.entry(q.clone()).or_insert(0);
            }
        }
    };
    a.group_expr.iter().chain(&a.aggr_expr).for_each(&mut visit);
    // Keep the scans that carry a subject column; k comes from the secure tables below.
    let mut checks = Vec::new();
    for (q, _) in scans {
        if let Some(info) = tables.get(&q) {
            let subject = Column::new(Some(q.clone()), SUBJECT_COLUMN);
            if has_subject(&input_schema, &q) {
                checks.push((subject, info));
            }
        }
    }
    if checks.is_empty() {
        return Err(DataFusionError::Plan(
            "aggregate-only columns must be aggregated directly over their table, not through a subquery that selects columns"
                .into(),
        ));
    }
    if checks.iter().any(|(_, info)| info.epsilon.is_some()) {
        let [(subject, info)] = checks.as_slice() else {
            return Err(DataFusionError::Plan(
                "a differentially private release protects the subjects of one table: aggregate its columns without other aggregate-only tables".into(),
            ));
        };
        return dp_release(a, subject.clone(), info, suppressed);
    }
    let mut aggr_expr = a.aggr_expr.clone();
    let mut release_checks = Vec::new();
    for (i, (subject, info)) in checks.into_iter().enumerate() {
        let name = format!("{K_PREFIX}{i}");
        aggr_expr.push(count_distinct(Expr::Column(subject)).alias(&name));
        release_checks.push(Check {
            column: name,
            k: info.k,
        });
    }
    let checked = LogicalPlan::Aggregate(Aggregate::try_new(
        a.input.clone(),
        a.group_expr.clone(),
        aggr_expr,
    )?);
    Ok(MinGroupRelease::try_new(
        checked,
        release_checks,
        a.group_expr.is_empty(),
        suppressed.clone(),
    )?
    .into_plan())
}

/// Whether `schema` carries the subject column of the secure scan behind qualifier `q` (by its
/// mark, not its name).
pub(super) fn has_subject(schema: &DFSchemaRef, q: &TableReference) -> bool {
    schema
        .qualified_field_with_name(Some(q), SUBJECT_COLUMN)
        .is_ok_and(|(_, f)| crate::enforce::secure_scan::is_subject_field(f))
}

/// What the release needs of an aggregate-only scan.
#[derive(Clone)]
pub(super) struct ScanInfo {
    /// The largest `@min_group` of its aggregate-only columns.
    pub(super) k: u64,
    /// The smallest `@epsilon` of its noisy columns, if any.
    pub(super) epsilon: Option<policy::Epsilon>,
    /// `schema.table`.
    pub(super) table: String,
    /// The secure table (None behind an alias of several).
    pub(super) provider: Option<Arc<dyn datafusion::catalog::TableProvider>>,
}

/// Each aggregate-only scan below `plan`, by qualifier (aliases included).
pub(super) fn collect_tables(plan: &LogicalPlan) -> HashMap<TableReference, ScanInfo> {
    let mut out = HashMap::new();
    let _ = plan.apply(|p| {
        match p {
            LogicalPlan::TableScan(scan) => {
                if let Some(provider) = secure_table(scan) {
                    let t = as_secure(&provider);
                    if let Some(k) = t.min_group() {
                        let info = ScanInfo {
                            k,
                            epsilon: t.epsilon(),
                            table: t.snapshot().table.to_string(),
                            provider: Some(provider.clone()),
                        };
                        out.insert(scan.table_name.clone(), info);
                    }
                }
            }
            LogicalPlan::SubqueryAlias(s) => {
                let inner = collect_tables(&s.input);
                let mut all = inner.into_values();
                if let Some(first) = all.next() {
                    let merged = all.fold(first, |mut m, i| {
                        m.k = m.k.max(i.k);
                        m.epsilon = match (m.epsilon, i.epsilon) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        m.provider = None;
                        m
                    });
                    out.insert(s.alias.clone(), merged);
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
