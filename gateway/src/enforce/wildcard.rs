//! `SELECT *` leaves aggregate-only columns out (`policy-model.md` §5), as it leaves hidden ones
//! out. DataFusion expands wildcards while planning, from the tables' schemas, which hold the
//! aggregate-only columns (they may still be grouped and counted), so each wildcard over a lake
//! table with such columns gets them as `EXCLUDE (...)` on the parsed statement:
//!
//! ```text
//! SELECT * FROM hr.employees             →  SELECT * EXCLUDE ("diagnosis") FROM hr.employees
//! SELECT e.*, d.* FROM hr.employees e …  →  SELECT e.* EXCLUDE ("diagnosis"), d.* FROM …
//! SELECT * FROM hr.employees e JOIN … d  →  SELECT e.* EXCLUDE ("diagnosis"), d.* FROM …
//! ```
//!
//! An inner USING join of two tables keeps one copy of each USING column, as DataFusion does
//! (the copy of the relation whose reference sorts first):
//!
//! ```text
//! SELECT * FROM hr.employees a JOIN hr.employees b USING (id)
//!   →  SELECT "a".* EXCLUDE ("diagnosis"), "b".* EXCLUDE ("diagnosis", "id") FROM …
//! ```
//!
//! A wildcard this cannot resolve (over a relation whose columns it does not know, or other
//! USING and NATURAL joins) is left as written; the aggregate-only checker then refuses it if
//! it reaches one.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    ExcludeSelectItem, Ident, JoinConstraint, JoinOperator, ObjectName, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableWithJoins, VisitMut,
    VisitorMut, WildcardAdditionalOptions,
};

use datafusion::common::TableReference;

/// What the session sees of a lake table: its served columns and which are aggregate-only.
pub(crate) struct Served {
    pub(crate) columns: Vec<String>,
    pub(crate) aggregate_only: Vec<String>,
}

/// Adds the aggregate-only columns of the tables each wildcard covers to its `EXCLUDE`.
/// `lookup` answers for a table name as written (`schema.table`, `lake.schema.table`), `None`
/// when it is no lake table the session may query.
pub(crate) fn exclude_aggregate_only(
    statement: &mut Statement,
    lookup: &dyn Fn(&ObjectName) -> Option<Served>,
) {
    let mut v = Rewriter { lookup };
    let _ = statement.visit(&mut v);
}

struct Rewriter<'a> {
    lookup: &'a dyn Fn(&ObjectName) -> Option<Served>,
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let mut bodies = vec![query.body.as_mut()];
        while let Some(body) = bodies.pop() {
            match body {
                SetExpr::Select(select) => self.select(select),
                SetExpr::SetOperation { left, right, .. } => {
                    bodies.push(left.as_mut());
                    bodies.push(right.as_mut());
                }
                // Nested queries are visited on their own.
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }
}

/// One relation of a FROM clause.
struct Relation {
    /// The name a qualified wildcard uses for it (alias, or the table's last name part).
    qualifier: Option<String>,
    /// How DataFusion qualifies its columns (alias, or the name as written).
    reference: Option<TableReference>,
    /// Its columns, when it is a lake table without column aliases.
    served: Option<Served>,
}

impl Relation {
    /// The name a qualified wildcard over it is written with: its alias, or the table's name
    /// as written (`"hr"."employees".*`: DataFusion qualifies an unaliased table so).
    fn wildcard_name(&self) -> Option<ObjectName> {
        let parts: Vec<String> = match &self.reference {
            Some(TableReference::Bare { table }) => vec![table.to_string()],
            Some(TableReference::Partial { schema, table }) => {
                vec![schema.to_string(), table.to_string()]
            }
            Some(TableReference::Full {
                catalog,
                schema,
                table,
            }) => vec![catalog.to_string(), schema.to_string(), table.to_string()],
            None => vec![self.qualifier.clone()?],
        };
        Some(ObjectName::from(
            parts
                .into_iter()
                .map(|p| Ident::with_quote('"', p))
                .collect::<Vec<_>>(),
        ))
    }
}

/// An identifier as DataFusion resolves it: lowercase unless quoted.
fn normalized(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

impl Rewriter<'_> {
    fn relation(&self, factor: &TableFactor) -> Relation {
        match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let qualifier = match alias {
                    Some(a) => Some(normalized(&a.name)),
                    None => name.0.last().and_then(|p| p.as_ident()).map(normalized),
                };
                let parts: Option<Vec<String>> = name
                    .0
                    .iter()
                    .map(|p| p.as_ident().map(normalized))
                    .collect();
                let reference = match (alias, parts.as_deref()) {
                    (Some(a), _) => Some(TableReference::bare(normalized(&a.name))),
                    (None, Some([t])) => Some(TableReference::bare(t.as_str())),
                    (None, Some([s, t])) => Some(TableReference::partial(s.as_str(), t.as_str())),
                    (None, Some([c, s, t])) => {
                        Some(TableReference::full(c.as_str(), s.as_str(), t.as_str()))
                    }
                    _ => None,
                };
                let renamed = alias.as_ref().is_some_and(|a| !a.columns.is_empty());
                let served = if args.is_none() && !renamed {
                    (self.lookup)(name)
                } else {
                    None
                };
                Relation {
                    qualifier,
                    reference,
                    served,
                }
            }
            // An UNNEST holds no lake column: nothing of it is aggregate-only, and its columns
            // are its aliases' (without aliases, names no lake column has).
            TableFactor::UNNEST { alias, .. } => Relation {
                qualifier: alias.as_ref().map(|a| normalized(&a.name)),
                reference: None,
                served: Some(Served {
                    columns: alias
                        .iter()
                        .flat_map(|a| &a.columns)
                        .map(|c| normalized(&c.name))
                        .collect(),
                    aggregate_only: vec![],
                }),
            },
            TableFactor::Derived { alias, .. } => Relation {
                qualifier: alias.as_ref().map(|a| normalized(&a.name)),
                reference: None,
                served: None,
            },
            _ => Relation {
                qualifier: None,
                reference: None,
                served: None,
            },
        }
    }

    /// The relations of `twj`, a parenthesized join without alias taken apart (its tables
    /// are named as if not parenthesized); whether any of its joins is USING or NATURAL.
    fn relations(&self, twj: &TableWithJoins, out: &mut Vec<Relation>) -> bool {
        let mut using = false;
        let factors = std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| {
            let text = j.to_string().to_uppercase();
            using |= text.contains("USING") || text.contains("NATURAL");
            &j.relation
        }));
        let mut nested = false;
        for factor in factors.collect::<Vec<_>>() {
            match factor {
                TableFactor::NestedJoin {
                    table_with_joins,
                    alias: None,
                } => nested |= self.relations(table_with_joins, out),
                f => out.push(self.relation(f)),
            }
        }
        using || nested
    }

    fn select(&self, select: &mut Select) {
        let mut relations = Vec::new();
        let mut using = false;
        for twj in &select.from {
            using |= self.relations(twj, &mut relations);
        }
        let any_hidden = relations.iter().any(|r| {
            r.served
                .as_ref()
                .is_some_and(|s| !s.aggregate_only.is_empty())
        });
        if !any_hidden {
            return;
        }
        let using_pair = inner_using_pair(select);
        let mut items = Vec::with_capacity(select.projection.len());
        for item in std::mem::take(&mut select.projection) {
            match item {
                SelectItem::Wildcard(opts) => match &using_pair {
                    Some(columns) => items.extend(self.using_wildcard(opts, &relations, columns)),
                    None => items.extend(self.wildcard(opts, &relations, using)),
                },
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    mut opts,
                ) => {
                    let q = n.0.last().and_then(|p| p.as_ident()).map(normalized);
                    let matching: Vec<&Relation> = relations
                        .iter()
                        .filter(|r| r.qualifier.is_some() && r.qualifier == q)
                        .collect();
                    if let [r] = matching.as_slice() {
                        if let Some(s) = &r.served {
                            exclude(&mut opts, &s.aggregate_only);
                        }
                    }
                    items.push(SelectItem::QualifiedWildcard(
                        SelectItemQualifiedWildcardKind::ObjectName(n),
                        opts,
                    ));
                }
                other => items.push(other),
            }
        }
        select.projection = items;
    }

    /// An unqualified `*`: an EXCLUDE when the names are unambiguous, else one qualified
    /// wildcard per relation; as written when neither is possible.
    fn wildcard(
        &self,
        mut opts: WildcardAdditionalOptions,
        relations: &[Relation],
        using: bool,
    ) -> Vec<SelectItem> {
        let hidden: Vec<&String> = relations
            .iter()
            .filter_map(|r| r.served.as_ref())
            .flat_map(|s| &s.aggregate_only)
            .collect();
        let unambiguous = hidden.iter().all(|h| {
            relations
                .iter()
                .filter(|r| r.served.as_ref().is_some_and(|s| s.columns.contains(h)))
                .count()
                == 1
        });
        // A relation whose columns are not known (a subquery, VALUES) may have a column of
        // the same name: DataFusion then refuses the EXCLUDE as ambiguous, naming it.
        if unambiguous {
            let names: Vec<String> = hidden.into_iter().cloned().collect();
            exclude(&mut opts, &names);
            return vec![SelectItem::Wildcard(opts)];
        }
        let qualified = !using
            && opts.opt_exclude.is_none()
            && opts.opt_except.is_none()
            && opts.opt_replace.is_none()
            && opts.opt_rename.is_none()
            && opts.opt_ilike.is_none()
            && relations.iter().all(|r| r.wildcard_name().is_some());
        if !qualified {
            return vec![SelectItem::Wildcard(opts)];
        }
        relations
            .iter()
            .map(|r| {
                let mut o = WildcardAdditionalOptions::default();
                if let Some(s) = &r.served {
                    exclude(&mut o, &s.aggregate_only);
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(
                        r.wildcard_name().expect("checked"),
                    ),
                    o,
                )
            })
            .collect()
    }
}

/// The USING columns of a FROM clause that is one inner USING join of two relations.
fn inner_using_pair(select: &Select) -> Option<Vec<String>> {
    let [twj] = select.from.as_slice() else {
        return None;
    };
    let [join] = twj.joins.as_slice() else {
        return None;
    };
    let (JoinOperator::Join(JoinConstraint::Using(names))
    | JoinOperator::Inner(JoinConstraint::Using(names))) = &join.join_operator
    else {
        return None;
    };
    let nested = |f: &TableFactor| matches!(f, TableFactor::NestedJoin { .. });
    if nested(&twj.relation) || nested(&join.relation) {
        return None;
    }
    names
        .iter()
        .map(|n| match n.0.as_slice() {
            [part] => part.as_ident().map(normalized),
            _ => None,
        })
        .collect()
}

impl Rewriter<'_> {
    /// `*` over an inner USING join of two known relations: one qualified wildcard each, the
    /// aggregate-only columns left out of both and the USING columns out of the relation whose
    /// copy DataFusion drops (it keeps the copy whose qualified column sorts first); as
    /// written when that cannot be told.
    fn using_wildcard(
        &self,
        opts: WildcardAdditionalOptions,
        relations: &[Relation],
        using: &[String],
    ) -> Vec<SelectItem> {
        let plain = opts == WildcardAdditionalOptions::default();
        let [first, second] = relations else {
            return vec![SelectItem::Wildcard(opts)];
        };
        let known = |r: &Relation| {
            r.qualifier.is_some()
                && r.served.as_ref().is_some_and(|s| {
                    using.iter().all(|u| s.columns.contains(u))
                        && using.iter().all(|u| !s.aggregate_only.contains(u))
                })
        };
        let (Some(a), Some(b)) = (&first.reference, &second.reference) else {
            return vec![SelectItem::Wildcard(opts)];
        };
        if !plain || !known(first) || !known(second) || a == b {
            return vec![SelectItem::Wildcard(opts)];
        }
        let kept_first = a < b;
        [(first, kept_first), (second, !kept_first)]
            .into_iter()
            .map(|(r, keeps)| {
                let mut o = WildcardAdditionalOptions::default();
                let served = r.served.as_ref().expect("known");
                let mut names = served.aggregate_only.clone();
                if !keeps {
                    names.extend(using.iter().cloned());
                }
                exclude(&mut o, &names);
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(r.wildcard_name().expect("known")),
                    o,
                )
            })
            .collect()
    }
}

/// Refuses `* ILIKE '…'`: DataFusion's expansion ignores the pattern and returns every column,
/// which is not what was asked (attacker round 29 L1); `* RENAME` it refuses itself.
pub(crate) fn refuse_ignored_options(statement: &Statement) -> Result<(), crate::GatewayError> {
    use datafusion::sql::sqlparser::ast::{Visit, Visitor};
    struct Options;
    impl Visitor for Options {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            let mut bodies = vec![query.body.as_ref()];
            while let Some(body) = bodies.pop() {
                match body {
                    SetExpr::Select(select) => {
                        let ilike = select.projection.iter().any(|item| match item {
                            SelectItem::Wildcard(o) | SelectItem::QualifiedWildcard(_, o) => {
                                o.opt_ilike.is_some()
                            }
                            _ => false,
                        });
                        if ilike {
                            return ControlFlow::Break(());
                        }
                    }
                    SetExpr::SetOperation { left, right, .. } => {
                        bodies.push(left);
                        bodies.push(right);
                    }
                    _ => {}
                }
            }
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Options) {
        ControlFlow::Break(()) => Err(crate::GatewayError::Sql(
            datafusion::error::DataFusionError::NotImplemented(
                "SELECT * ILIKE '…' is not supported; name the columns".into(),
            ),
        )),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Adds `names` to a wildcard's EXCLUDE, keeping what the user excluded or excepted.
fn exclude(opts: &mut WildcardAdditionalOptions, names: &[String]) {
    let mut list: Vec<ObjectName> = match opts.opt_exclude.take() {
        Some(ExcludeSelectItem::Single(n)) => vec![n],
        Some(ExcludeSelectItem::Multiple(ns)) => ns,
        None => vec![],
    };
    let named = |list: &[ObjectName], opts: &WildcardAdditionalOptions, name: &str| {
        let in_exclude = list.iter().any(|n| {
            n.0.last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| normalized(i) == name)
        });
        let in_except = opts.opt_except.as_ref().is_some_and(|e| {
            normalized(&e.first_element) == name
                || e.additional_elements.iter().any(|i| normalized(i) == name)
        });
        in_exclude || in_except
    };
    for name in names {
        if !named(&list, opts, name) {
            list.push(ObjectName::from(vec![Ident::with_quote('"', name.clone())]));
        }
    }
    if !list.is_empty() {
        opts.opt_exclude = Some(ExcludeSelectItem::Multiple(list));
    }
}

/// `SELECT *` over a table with aggregate-only columns leaves them out ([`wildcard`]).
pub(crate) fn exclude_from_statement(
    statement: &mut datafusion::sql::parser::Statement,
    gate: &crate::enforce::session_gate::SessionGate,
) {
    use datafusion::sql::parser::Statement;
    use datafusion::sql::sqlparser::ast::ObjectName;
    let inner = match statement {
        Statement::Statement(s) => s.as_mut(),
        Statement::Explain(e) => match e.statement.as_mut() {
            Statement::Statement(s) => s.as_mut(),
            _ => return,
        },
        _ => return,
    };
    let lookup = |name: &ObjectName| -> Option<Served> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| {
                p.as_ident().map(|i| match i.quote_style {
                    Some(_) => i.value.clone(),
                    None => i.value.to_lowercase(),
                })
            })
            .collect::<Option<_>>()?;
        let t = match parts.as_slice() {
            [schema, table] => catalog::TableRef::new(schema, table),
            [catalog, schema, table] if catalog.as_str() == catalog::LAKE_CATALOG => {
                catalog::TableRef::new(schema, table)
            }
            _ => return None,
        };
        let grant = gate.grant(&t).ok()?;
        if !grant.allowed {
            return None;
        }
        let mut served = Served {
            columns: Vec::new(),
            aggregate_only: Vec::new(),
        };
        for (c, treatment) in &grant.columns {
            match treatment {
                policy::ColumnTreatment::Hidden => {}
                policy::ColumnTreatment::AggregateOnly { .. } => {
                    served.columns.push(c.clone());
                    served.aggregate_only.push(c.clone());
                }
                _ => served.columns.push(c.clone()),
            }
        }
        Some(served)
    };
    exclude_aggregate_only(inner, &lookup);
}
