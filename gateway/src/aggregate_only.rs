//! Aggregate-only columns (`policy-model.md` §5): the checker and the minimum-group rewrite.
//!
//! The checker follows every aggregate-only column through the plan (subqueries included) and
//! refuses any flow other than the bare argument of `count`, `count(DISTINCT)`, `sum`, `avg`, or a
//! bare GROUP BY key. In a query that releases such a column, every aggregate of the query is one
//! of those over a bare column, and the releasing aggregate's keys are bare columns: no per-group
//! computation (`array_agg(name)`, `sum(CASE WHEN id = 10 ...)`) can name people. Each aggregate
//! such a column flows into is then given a [`MinGroupRelease`] directly above it, so that every
//! released group covers at least k distinct subjects and nothing above sees another:
//!
//! ```text
//! before:                                   after:
//!   Aggregate: groupBy=[diagnosis]            MinGroupRelease: __lakegate_k0 >= 10
//!     aggr=[count(*)]                           Aggregate: groupBy=[diagnosis]
//!     TableScan: health.visits                    aggr=[count(*), count(DISTINCT __lakegate_subject) AS __lakegate_k0]
//!                                                 TableScan: health.visits (+ __lakegate_subject)
//! ```
//!
//! Without GROUP BY the one group's aggregates become NULL below k, so that 0 and 1..k-1 look the
//! same. The subject column is served by the secure scan only to this rewrite: user SQL cannot
//! name it, and it never reaches the output. [`verify`] runs the checker again on the optimized
//! plan: whatever DataFusion moved, no aggregate-only column is used below the release, and every
//! aggregate that consumes one sits under a release.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::default_table_source::{provider_as_source, source_as_provider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, TableReference};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::count::count_distinct;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    col, lit, when, Aggregate, Expr, Filter, LogicalPlan, Projection, TableScan, TableScanBuilder,
};

use crate::dp_release::{DpRelease, DpSpec, Measure, DP_PREFIX};
use crate::min_group::{Check, MinGroupRelease, K_PREFIX};
use crate::secure_scan::{SecureTable, SUBJECT_COLUMN};
use crate::GatewayError;

/// What is known of one aggregate-only column flowing through the plan.
#[derive(Debug, Clone)]
struct Origin {
    /// The table it was read from (`schema.table`), for messages.
    table: String,
}

/// Aggregate-only columns among a node's output columns.
type Taint = HashMap<Column, Origin>;

fn refuse(rule: &str, column: &Column, origin: &Origin) -> GatewayError {
    GatewayError::AggregateOnly(format!(
        "column {}.{} is aggregate-only: {rule}",
        origin.table, column.name
    ))
}

/// The taint entry `c` refers to: exact match, or by name when `c` is unqualified.
fn lookup<'a>(taint: &'a Taint, c: &Column) -> Option<(&'a Column, &'a Origin)> {
    taint.get_key_value(c).or_else(|| {
        if c.relation.is_none() {
            taint.iter().find(|(t, _)| t.name == c.name)
        } else {
            None
        }
    })
}

/// The first tainted column an expression reads, subqueries' outer references included.
fn tainted_in<'a>(e: &Expr, taint: &'a Taint) -> Option<(&'a Column, &'a Origin)> {
    let mut found = None;
    let _ = e.apply(|e| {
        let hit = match e {
            Expr::Column(c) => lookup(taint, c),
            Expr::OuterReferenceColumn(_, c) => lookup(taint, c),
            _ => None,
        };
        if hit.is_some() {
            found = hit;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A bare column (aliases allowed) or nothing.
fn bare_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Alias(a) => bare_column(&a.expr),
        _ => None,
    }
}

/// A cast of a bare numeric column that cannot fail: what type coercion puts under `avg` and
/// `sum`. A fallible cast would turn a withheld row's value into an error.
fn widening_cast_of_column(e: &Expr, schema: &DFSchemaRef) -> bool {
    use datafusion::arrow::datatypes::DataType as T;
    let (inner, to) = match e {
        Expr::Cast(c) => (c.expr.as_ref(), c.field.data_type()),
        Expr::TryCast(c) => (c.expr.as_ref(), c.field.data_type()),
        _ => return false,
    };
    let Some(column) = bare_column(inner) else {
        return false;
    };
    let Ok(from) = schema
        .qualified_field_from_column(column)
        .map(|(_, f)| f.data_type().clone())
    else {
        return false;
    };
    let signed = matches!(from, T::Int8 | T::Int16 | T::Int32 | T::Int64);
    let unsigned = matches!(from, T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64);
    let float = matches!(from, T::Float16 | T::Float32 | T::Float64);
    match to {
        T::Int64 => signed,
        T::UInt64 => unsigned,
        T::Float64 => signed || unsigned || float,
        T::Decimal128(p, s) | T::Decimal256(p, s) => match from {
            T::Decimal128(fp, fs) | T::Decimal256(fp, fs) => {
                *s >= fs && (*p as i16 - *s as i16) >= (fp as i16 - fs as i16)
            }
            _ => false,
        },
        _ => false,
    }
}

fn secure_table(scan: &TableScan) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: &dyn Any = provider.as_ref();
    any.is::<SecureTable>().then_some(provider)
}

fn as_secure(p: &Arc<dyn datafusion::catalog::TableProvider>) -> &SecureTable {
    let any: &dyn Any = p.as_ref();
    any.downcast_ref::<SecureTable>()
        .expect("checked by secure_table")
}

/// The checker: walks `plan`, refuses forbidden flows, and records the aggregates that need a
/// minimum-group check. `outer` is the taint of the enclosing query, for correlated subqueries.
struct Checker {
    /// Aggregates needing a k check, by their output schema (unique per node).
    /// Each with the aggregate-only columns it consumes, as its expressions name them.
    needs_check: Vec<(DFSchemaRef, Vec<Column>)>,
    /// Aggregates with a release above them (on an optimized plan), by output schema.
    released: Vec<DFSchemaRef>,
}

impl Checker {
    fn walk(&mut self, plan: &LogicalPlan, outer: &Taint) -> Result<Taint, GatewayError> {
        // Plans as deep as the statement limits allow (a long UNION chain): grow the stack.
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.walk_node(plan, outer))
    }

    fn walk_node(&mut self, plan: &LogicalPlan, outer: &Taint) -> Result<Taint, GatewayError> {
        // Subqueries in this node's expressions: their results must carry no aggregate-only
        // column, and their outer references are uses too.
        let inputs: Vec<Taint> = plan
            .inputs()
            .into_iter()
            .map(|p| self.walk(p, outer))
            .collect::<Result<_, _>>()?;
        let mut visible: Taint = outer.clone();
        for t in &inputs {
            visible.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut subquery_err = None;
        let _ = plan.apply_expressions(|e| {
            e.apply(|e| {
                let sub = match e {
                    Expr::ScalarSubquery(s) => Some(&s.subquery),
                    Expr::InSubquery(s) => Some(&s.subquery.subquery),
                    Expr::Exists(s) => Some(&s.subquery.subquery),
                    _ => None,
                };
                if let Some(sub) = sub {
                    match self.walk(sub, &visible) {
                        Ok(t) if t.is_empty() => {}
                        Ok(t) => {
                            let (c, o) = t.iter().next().expect("non-empty");
                            subquery_err =
                                Some(refuse("it may not be the result of a subquery", c, o));
                            return Ok(TreeNodeRecursion::Stop);
                        }
                        Err(err) => {
                            subquery_err = Some(err);
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        if let Some(e) = subquery_err {
            return Err(e);
        }
        let input_taint = |i: usize| inputs.get(i).cloned().unwrap_or_default();
        let check_exprs =
            |exprs: &[&Expr], rule: &str, taint: &Taint| -> Result<(), GatewayError> {
                for e in exprs {
                    if let Some((c, o)) = tainted_in(e, taint) {
                        return Err(refuse(rule, c, o));
                    }
                }
                Ok(())
            };
        // Bare tainted columns pass through under their output names; any other use is refused.
        let project = |exprs: &[Expr],
                       plan: &LogicalPlan,
                       t: &Taint|
         -> Result<Taint, GatewayError> {
            let mut out = Taint::new();
            for (e, c) in exprs.iter().zip(plan.schema().columns()) {
                match bare_column(e).and_then(|b| lookup(t, b)) {
                    Some((_, o)) => {
                        out.insert(c, o.clone());
                    }
                    None => check_exprs(
                        &[e],
                        "it may not be used in an expression, only as the bare argument of count, sum or avg or as a GROUP BY key",
                        t,
                    )?,
                }
            }
            Ok(out)
        };
        // Output columns of `plan` that keep a tainted input column's name and qualifier.
        let pass_through = |taint: &Taint| -> Taint {
            plan.schema()
                .columns()
                .into_iter()
                .filter_map(|c| taint.get(&c).map(|o| (c, o.clone())))
                .collect()
        };

        match plan {
            LogicalPlan::TableScan(scan) => {
                let Some(provider) = secure_table(scan) else {
                    return Ok(Taint::new());
                };
                let table = as_secure(&provider);
                // Filters the optimizer pushed into the scan (any column of the table).
                for f in &scan.filters {
                    if let Some(c) = f
                        .column_refs()
                        .into_iter()
                        .find(|c| table.aggregate_only(&c.name).is_some())
                    {
                        return Err(refuse(
                            "it may not be used in WHERE or HAVING",
                            c,
                            &Origin {
                                table: table.snapshot().table.to_string(),
                            },
                        ));
                    }
                }
                let mut out = Taint::new();
                for c in plan.schema().columns() {
                    if table.aggregate_only(&c.name).is_some() {
                        out.insert(
                            c,
                            Origin {
                                table: table.snapshot().table.to_string(),
                            },
                        );
                    }
                }
                if !out.is_empty() && table.snapshot().subject_key.is_none() {
                    let (c, o) = out.iter().next().expect("non-empty");
                    return Err(refuse(
                        "the table declares no subject key, so none of its aggregate-only columns can be released",
                        c,
                        o,
                    ));
                }
                Ok(out)
            }
            LogicalPlan::SubqueryAlias(_) => {
                // Same columns, new qualifier: map by position.
                let t = input_taint(0);
                let input_cols = plan.inputs()[0].schema().columns();
                Ok(plan
                    .schema()
                    .columns()
                    .into_iter()
                    .zip(input_cols)
                    .filter_map(|(out, inp)| t.get(&inp).map(|o| (out, o.clone())))
                    .collect())
            }
            LogicalPlan::Projection(p) => {
                let t = input_taint(0);
                project(&p.expr, plan, &t)
            }
            LogicalPlan::Filter(f) => {
                let t = input_taint(0);
                check_exprs(&[&f.predicate], "it may not be used in WHERE or HAVING", &t)?;
                Ok(pass_through(&t))
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
                check_exprs(&on, "it may not be used in a JOIN condition", &t)?;
                Ok(pass_through(&t))
            }
            LogicalPlan::Sort(s) => {
                let t = input_taint(0);
                let exprs: Vec<&Expr> = s.expr.iter().map(|e| &e.expr).collect();
                check_exprs(&exprs, "it may not be used in ORDER BY", &t)?;
                Ok(pass_through(&t))
            }
            LogicalPlan::Limit(_) | LogicalPlan::Repartition(_) => {
                Ok(pass_through(&input_taint(0)))
            }
            LogicalPlan::Window(w) => {
                let t = input_taint(0);
                let exprs: Vec<&Expr> = w.window_expr.iter().collect();
                check_exprs(&exprs, "it may not be used in a window function", &t)?;
                Ok(pass_through(&t))
            }
            LogicalPlan::Aggregate(a) => self.aggregate(a, &input_taint(0)),
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::On(on)) => {
                let t = input_taint(0);
                let keys: Vec<&Expr> = on
                    .on_expr
                    .iter()
                    .chain(on.sort_expr.iter().flatten().map(|s| &s.expr))
                    .collect();
                check_exprs(&keys, "it may not be selected DISTINCT; use GROUP BY", &t)?;
                project(&on.select_expr, plan, &t)
            }
            LogicalPlan::Distinct(_) => {
                let t = input_taint(0);
                match t.iter().next() {
                    Some((c, o)) => Err(refuse(
                        "it may not be selected DISTINCT; use GROUP BY",
                        c,
                        o,
                    )),
                    None => Ok(Taint::new()),
                }
            }
            LogicalPlan::Union(_) => match inputs.iter().flatten().next() {
                Some((c, o)) => Err(refuse("it may not be used in a set operation", c, o)),
                None => Ok(Taint::new()),
            },
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => {
                // The explained plan is checked as if it were run.
                if let Some((c, o)) = inputs.iter().flatten().next() {
                    return Err(refuse(
                        "it may not reach the output; use count, sum, avg or GROUP BY",
                        c,
                        o,
                    ));
                }
                Ok(Taint::new())
            }
            LogicalPlan::Extension(_)
                if MinGroupRelease::of(plan).is_some() || DpRelease::of(plan).is_some() =>
            {
                // An optimized plan: the aggregates below it (two when DataFusion split a
                // DISTINCT aggregate) are released.
                let mut below = plan.inputs()[0];
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
                Ok(Taint::new())
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok(Taint::new()),
            other => match inputs.iter().flatten().next() {
                // Fail closed on anything this checker does not know.
                Some((c, o)) => Err(refuse(
                    &format!("it may not flow into {}", other.display()),
                    c,
                    o,
                )),
                None => Ok(Taint::new()),
            },
        }
    }

    fn aggregate(&mut self, a: &Aggregate, t: &Taint) -> Result<Taint, GatewayError> {
        let mut consumes = false;
        let mut consumed: Vec<Column> = Vec::new();
        for g in &a.group_expr {
            if let Expr::GroupingSet(_) = g {
                if let Some((c, o)) = tainted_in(g, t).or_else(|| t.iter().next()) {
                    return Err(refuse("ROLLUP, CUBE and GROUPING SETS are refused", c, o));
                }
            }
            match bare_column(g).filter(|c| lookup(t, c).is_some()) {
                Some(c) => {
                    consumes = true;
                    consumed.push(c.clone());
                }
                None => {
                    if let Some((c, o)) = tainted_in(g, t) {
                        return Err(refuse("only the bare column may be a GROUP BY key", c, o));
                    }
                }
            }
        }
        for e in &a.aggr_expr {
            let inner = match e {
                Expr::Alias(al) => al.expr.as_ref(),
                e => e,
            };
            let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
                if let Some((c, o)) = tainted_in(e, t) {
                    return Err(refuse("it may flow only into count, sum or avg", c, o));
                }
                continue;
            };
            let reads: Vec<_> = params
                .args
                .iter()
                .filter_map(|a| tainted_in(a, t))
                .collect();
            if let Some((c, o)) = params
                .filter
                .as_deref()
                .and_then(|f| tainted_in(f, t))
                .or_else(|| params.order_by.iter().find_map(|s| tainted_in(&s.expr, t)))
            {
                return Err(refuse(
                    "it may not be used in FILTER or an aggregate's ORDER BY",
                    c,
                    o,
                ));
            }
            if let Some((c, o)) = reads.first() {
                let allowed = matches!(func.name(), "count" | "sum" | "avg");
                let bare = params.args.len() == 1 && bare_column(&params.args[0]).is_some();
                if !allowed || !bare {
                    return Err(refuse(
                        &format!(
                            "{}() over it is refused; only count, count(DISTINCT), sum and avg of the bare column",
                            func.name()
                        ),
                        c,
                        o,
                    ));
                }
                consumes = true;
                consumed.extend(params.args.iter().filter_map(bare_column).cloned());
            }
        }
        if consumes {
            // Keys computed from other columns would make trackers (`GROUP BY diagnosis,
            // id = 10`): a releasing aggregate groups by bare columns only.
            if let Some(g) = a.group_expr.iter().find(|g| bare_column(g).is_none()) {
                let (c, o) = t.iter().next().expect("consumes");
                return Err(refuse(
                    &format!(
                        "in a query that releases it, GROUP BY keys are bare columns, not {}",
                        g.schema_name()
                    ),
                    c,
                    o,
                ));
            }
            // A FILTER on any aggregate of this node would let a group be released from fewer
            // subjects than the check counts.
            let has_filter = |e: &Expr| {
                let inner = match e {
                    Expr::Alias(al) => al.expr.as_ref(),
                    e => e,
                };
                matches!(inner, Expr::AggregateFunction(f) if f.params.filter.is_some())
            };
            if a.aggr_expr.iter().any(has_filter) {
                let (c, o) = t.iter().next().expect("consumes");
                return Err(refuse(
                    "aggregates with FILTER are refused in a query that releases it",
                    c,
                    o,
                ));
            }
            self.needs_check.push((a.schema.clone(), consumed));
        }
        Ok(Taint::new())
    }
}

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
struct ReleaseUdf {
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

fn release(ok: Expr, suppressed: &Suppressed) -> Expr {
    Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
        Arc::new(release_udf(suppressed)),
        vec![ok],
    ))
}

/// Checks `plan` and puts a release above each aggregate that releases aggregate-only columns;
/// `suppressed` counts the groups withheld when it runs.
pub(crate) fn enforce(
    plan: LogicalPlan,
    suppressed: &Suppressed,
) -> Result<LogicalPlan, GatewayError> {
    let mut checker = Checker {
        needs_check: Vec::new(),
        released: Vec::new(),
    };
    let root = checker.walk(&plan, &Taint::new())?;
    if let Some((c, o)) = root.iter().next() {
        return Err(refuse(
            "it may not reach the output; use count, sum, avg or GROUP BY",
            c,
            o,
        ));
    }
    if checker.needs_check.is_empty() {
        return Ok(plan);
    }
    safe_aggregates(&plan)?;
    let needs = checker.needs_check;
    let rewritten = plan
        .transform_up_with_subqueries(|node| rewrite(node, &needs, suppressed))
        .map(|t| t.data)
        .map_err(|e| GatewayError::AggregateOnly(e.strip_backtrace()))?;
    // The subject column exists for the check only; it must never be an output.
    if rewritten
        .schema()
        .fields()
        .iter()
        .any(|f| f.name() == SUBJECT_COLUMN)
    {
        return Err(GatewayError::AggregateOnly(
            "the query would output the subject key; select columns explicitly".into(),
        ));
    }
    Ok(rewritten)
}

/// Checks an optimized plan again: no aggregate-only column is used where the checker refuses
/// it (a filter or join condition pushed below an aggregate, a filter pushed into a scan), and
/// every aggregate that consumes one has a release above it.
pub(crate) fn verify(plan: &LogicalPlan) -> Result<(), GatewayError> {
    let mut checker = Checker {
        needs_check: Vec::new(),
        released: Vec::new(),
    };
    let root = checker.walk(plan, &Taint::new())?;
    if let Some((c, o)) = root.iter().next() {
        return Err(refuse(
            "it may not reach the output; use count, sum, avg or GROUP BY",
            c,
            o,
        ));
    }
    if checker.needs_check.is_empty() {
        return Ok(());
    }
    let unreleased = checker
        .needs_check
        .iter()
        .any(|(s, _)| !checker.released.iter().any(|r| Arc::ptr_eq(r, s) || r == s));
    if unreleased {
        return Err(GatewayError::AggregateOnly(
            "an aggregate-only column would be released without its minimum-group check; the query is refused"
                .into(),
        ));
    }
    safe_aggregates(plan)?;
    crate::release_shape::check(plan)
}

/// In a query that releases an aggregate-only column, every aggregate anywhere in it is
/// `count`, `count(DISTINCT)`, `sum` or `avg` of one bare column (`count` of a constant too),
/// with no FILTER and no ORDER BY: `min(name)`, `array_agg(id)` or `sum(CASE WHEN id = 10 ...)`
/// per group would name the people in it.
fn safe_aggregates(plan: &LogicalPlan) -> Result<(), GatewayError> {
    let mut refusal = None;
    let _ = plan.apply_with_subqueries(|p| {
        let LogicalPlan::Aggregate(a) = p else {
            return Ok(TreeNodeRecursion::Continue);
        };
        for e in &a.aggr_expr {
            let inner = match e {
                Expr::Alias(al) => al.expr.as_ref(),
                e => e,
            };
            let why = match inner {
                Expr::AggregateFunction(AggregateFunction { func, params }) => {
                    let name = func.name();
                    let arg_ok = match params.args.as_slice() {
                        [arg] => {
                            bare_column(arg).is_some()
                                || widening_cast_of_column(arg, a.input.schema())
                                || (name == "count" && matches!(arg, Expr::Literal(..)))
                        }
                        _ => false,
                    };
                    if !matches!(name, "count" | "sum" | "avg") {
                        Some(format!("{name}() is refused"))
                    } else if params.distinct && name != "count" {
                        Some(format!("{name}(DISTINCT ...) is refused"))
                    } else if !arg_ok {
                        Some(format!(
                            "{name}() of an expression is refused; aggregate a bare column"
                        ))
                    } else if params.filter.is_some() {
                        Some("aggregates with FILTER are refused".to_string())
                    } else if !params.order_by.is_empty() {
                        Some("an aggregate's ORDER BY is refused".to_string())
                    } else {
                        None
                    }
                }
                other => Some(format!("{} is refused", other.schema_name())),
            };
            if let Some(why) = why {
                refusal = Some(GatewayError::AggregateOnly(format!(
                    "the query releases an aggregate-only column, so every aggregate in it is count, count(DISTINCT), sum or avg of a bare column: {why}"
                )));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match refusal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn rewrite(
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
fn min_group_check(
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
fn has_subject(schema: &DFSchemaRef, q: &TableReference) -> bool {
    schema
        .qualified_field_with_name(Some(q), SUBJECT_COLUMN)
        .is_ok_and(|(_, f)| crate::secure_scan::is_subject_field(f))
}

fn dp_refuse(table: &str, why: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{table} is released with differential privacy: {why}"
    ))
}

/// The aggregate as a [`DpRelease`] over one row per (group, subject).
fn dp_release(
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
fn dp_display(dp: &DpRelease) -> datafusion::error::Result<LogicalPlan> {
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
    let noise = crate::dp_release::display_udf();
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

/// What the release needs of an aggregate-only scan.
#[derive(Clone)]
struct ScanInfo {
    /// The largest `@min_group` of its aggregate-only columns.
    k: u64,
    /// The smallest `@epsilon` of its noisy columns, if any.
    epsilon: Option<policy::Epsilon>,
    /// `schema.table`.
    table: String,
    /// The secure table (None behind an alias of several).
    provider: Option<Arc<dyn datafusion::catalog::TableProvider>>,
}

/// Each aggregate-only scan below `plan`, by qualifier (aliases included).
fn collect_tables(plan: &LogicalPlan) -> HashMap<TableReference, ScanInfo> {
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
