//! The checker: follows every aggregate-only column through a plan and refuses any use other
//! than a safe aggregate's bare argument or a bare GROUP BY key.

use super::*;

/// What is known of one aggregate-only column flowing through the plan.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    /// The table it was read from (`schema.table`), for messages.
    pub(super) table: String,
}

/// Aggregate-only columns among a node's output columns.
pub(super) type Taint = HashMap<Column, Origin>;

pub(super) fn refuse(rule: &str, column: &Column, origin: &Origin) -> GatewayError {
    GatewayError::AggregateOnly(format!(
        "column {}.{} is aggregate-only: {rule}",
        origin.table, column.name
    ))
}

/// The taint entry `c` refers to: exact match, or by name when `c` is unqualified.
pub(super) fn lookup<'a>(taint: &'a Taint, c: &Column) -> Option<(&'a Column, &'a Origin)> {
    taint.get_key_value(c).or_else(|| {
        if c.relation.is_none() {
            taint.iter().find(|(t, _)| t.name == c.name)
        } else {
            None
        }
    })
}

/// The first tainted column an expression reads, subqueries' outer references included.
pub(super) fn tainted_in<'a>(e: &Expr, taint: &'a Taint) -> Option<(&'a Column, &'a Origin)> {
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
pub(super) fn bare_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Alias(a) => bare_column(&a.expr),
        _ => None,
    }
}

/// A cast of a bare numeric column that cannot fail: what type coercion puts under `avg` and
/// `sum`. A fallible cast would turn a withheld row's value into an error.
pub(super) fn widening_cast_of_column(e: &Expr, schema: &DFSchemaRef) -> bool {
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

pub(super) fn secure_table(
    scan: &TableScan,
) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: &dyn Any = provider.as_ref();
    any.is::<SecureTable>().then_some(provider)
}

pub(super) fn as_secure(p: &Arc<dyn datafusion::catalog::TableProvider>) -> &SecureTable {
    let any: &dyn Any = p.as_ref();
    any.downcast_ref::<SecureTable>()
        .expect("checked by secure_table")
}

/// The checker: walks `plan`, refuses forbidden flows, and records the aggregates that need a
/// minimum-group check. `outer` is the taint of the enclosing query, for correlated subqueries.
pub(super) struct Checker {
    /// Aggregates needing a k check, by their output schema (unique per node).
    /// Each with the aggregate-only columns it consumes, as its expressions name them.
    pub(super) needs_check: Vec<(DFSchemaRef, Vec<Column>)>,
    /// Aggregates with a release above them (on an optimized plan), by output schema.
    pub(super) released: Vec<DFSchemaRef>,
    /// Every aggregate-only column any node walked so far has carried: an outer reference
    /// may name a column the node's inputs no longer carry (an ORDER BY subquery reads the
    /// FROM scope below the SELECT's projection, attacker round 28 F4).
    pub(super) seen: Taint,
}

impl Checker {
    pub(super) fn walk(
        &mut self,
        plan: &LogicalPlan,
        outer: &Taint,
    ) -> Result<Taint, GatewayError> {
        // Plans as deep as the statement limits allow (a long UNION chain): grow the stack.
        stacker::maybe_grow(64 * 1024, 1024 * 1024, || self.walk_node(plan, outer))
    }

    fn walk_node(&mut self, plan: &LogicalPlan, outer: &Taint) -> Result<Taint, GatewayError> {
        // Subqueries in this node's expressions: their results must carry no aggregate-only
        // column, and their outer references are uses too.
        // Each input sees the enclosing query's columns and its earlier siblings': a LATERAL
        // subquery (a join's later input) reads the earlier ones by outer reference.
        let mut visible: Taint = outer.clone();
        let mut inputs: Vec<Taint> = Vec::new();
        for p in plan.inputs() {
            let t = self.walk(p, &visible)?;
            visible.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.seen
                .extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
            inputs.push(t);
        }
        // An aggregate-only column read by outer reference (a correlated or LATERAL
        // subquery's `outer_ref(v.diagnosis)`) is read row by row: refused (attacker round 26
        // M3: nine such statements were allowed, and failed only because DataFusion 55
        // cannot run them yet).
        let mut outer_err = None;
        let _ = plan.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::OuterReferenceColumn(_, c) = e {
                    if let Some((c, o)) = lookup(outer, c).or_else(|| lookup(&self.seen, c)) {
                        outer_err = Some(refuse(
                            "it may not be read by a correlated or LATERAL subquery",
                            c,
                            o,
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        if let Some(e) = outer_err {
            return Err(e);
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
        self.node(plan, &inputs)
    }

    pub(super) fn aggregate(&mut self, a: &Aggregate, t: &Taint) -> Result<Taint, GatewayError> {
        let mut consumes = false;
        let mut consumed: Vec<Column> = Vec::new();
        for g in &a.group_expr {
            if let Expr::GroupingSet(_) = g {
                // Refused only when this aggregate consumes an aggregate-only column (as a
                // key or in an aggregate): one that merely has them in its input releases
                // nothing of them (attacker round 26 L1: `GROUP BY ROLLUP(hospital)` with
                // count(*) was refused).
                let consumed =
                    tainted_in(g, t).or_else(|| a.aggr_expr.iter().find_map(|e| tainted_in(e, t)));
                if let Some((c, o)) = consumed {
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
            self.releasing_aggregates_count_only_what_is_hidden(a, t)?;
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

    /// The aggregates of a releasing aggregate: `count(*)`, or `count`, `sum` or `avg` of an
    /// aggregate-only column. An aggregate of a column the caller sees row by row is a tracker,
    /// because the caller chooses the rows: `sum(visit_id)` over padding rows whose ids are
    /// multiples of 128 plus seven chosen visits names each one's group in the sum's low bits
    /// (round 15 H1, 210 of 210 right); `count(col)` over padding where `col` is NULL, or
    /// `count(DISTINCT district)` over one district's padding plus a visit from another, counts
    /// the chosen visit in its group alone. `count(DISTINCT)` of an aggregate-only column counts
    /// the values of withheld groups too (round 15 M2).
    fn releasing_aggregates_count_only_what_is_hidden(
        &self,
        a: &Aggregate,
        t: &Taint,
    ) -> Result<(), GatewayError> {
        for e in &a.aggr_expr {
            let inner = match e {
                Expr::Alias(al) => al.expr.as_ref(),
                e => e,
            };
            let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
                continue;
            };
            // The release's own count of subjects (user SQL cannot name the subject column).
            let of_subject =
                |a: &Expr| matches!(bare_column(a), Some(c) if c.name == SUBJECT_COLUMN);
            if params.args.iter().any(of_subject) {
                continue;
            }
            let name = func.name();
            let hidden = params.args.iter().any(|a| tainted_in(a, t).is_some());
            let count_all = name == "count"
                && !params.distinct
                && params.args.iter().all(|a| matches!(a, Expr::Literal(..)));
            let why = if count_all {
                continue;
            } else if params.distinct {
                format!(
                    "{name}(DISTINCT ...) is refused (it would count values of withheld groups \
                     too)"
                )
            } else if !hidden {
                format!(
                    "{}: aggregates other than count(*) take only aggregate-only columns, because \
                     an aggregate of a column you can see row by row, over rows you choose, can \
                     tell who is in which group (use count(*))",
                    e.schema_name()
                )
            } else {
                continue;
            };
            let (c, o) = t.iter().next().expect("a releasing aggregate reads one");
            return Err(refuse(&format!("in a query that releases it, {why}"), c, o));
        }
        Ok(())
    }
}
