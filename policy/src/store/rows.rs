//! Row predicates: `read_row` partially evaluated with the row unknown, and its residuals translated.

use super::*;

impl PolicySet {
    /// The row predicate: `read_row` with the row unknown. Permit residuals are OR-ed, forbid
    /// residuals subtracted. A residual the translator does not understand fails closed: a
    /// permit then admits no row, a forbid excludes every row.
    pub(super) fn rows(
        &self,
        ask: &Ask<'_>,
        desc: &TableDescription,
    ) -> Result<(RowPredicate, Vec<String>), PolicyError> {
        let set = &ask.slice.sets[Action::ReadRow];
        if set.policies.is_empty() {
            // No permit: no row, and nothing to name.
            return Ok((RowPredicate::None, vec![]));
        }
        let memo = ask.slice.exact && set.shared;
        let table = desc.id();
        if memo {
            if let Some(answer) = set.rows.get(ask.scenario, &table) {
                return Ok(answer);
            }
        }
        let answer = self.partially_evaluate_rows(&set.policies, desc, ask)?;
        if memo {
            set.rows.put(ask.scenario, &table, answer.clone());
        }
        Ok(answer)
    }

    pub(super) fn partially_evaluate_rows(
        &self,
        policies: &cedar_policy::PolicySet,
        desc: &TableDescription,
        ask: &Ask<'_>,
    ) -> Result<(RowPredicate, Vec<String>), PolicyError> {
        let (principal, context) = (ask.principal, ask.context);
        let Some(row_type) = row_type(desc) else {
            tracing::warn!(table = %desc.id(), "table name is not a Cedar identifier: no rows");
            return Ok((RowPredicate::None, vec![]));
        };
        let request_err = |e: &dyn Diagnostic| PolicyError::Request(describe(e));
        let ty = EntityTypeName::from_str(&row_type).map_err(|e| request_err(&e))?;
        let request = PartialRequest::new(
            PartialEntityUid::from_concrete(principal.clone()),
            self.actions[Action::ReadRow].0.clone(),
            PartialEntityUid::new(ty, None),
            Some(context.clone()),
            &self.schema,
        )
        .map_err(|e| request_err(&e))?;
        let response = policies
            .tpe(&request, &self.partial_entities, &self.schema)
            .map_err(|e| request_err(&e))?;
        let columns: Vec<String> = desc.columns.iter().map(|c| c.name.clone()).collect();
        let mut ids = Vec::new();
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        for id in response.true_permits() {
            ids.push(id_text(id));
            permits.push(self.sampled(id, Predicate::Const(true), desc));
        }
        for id in response.true_forbids() {
            ids.push(id_text(id));
            forbids.push(Predicate::Const(true));
        }
        for id in response.error_forbids() {
            tracing::warn!(policy = %id, table = %desc.id(), "forbid errors on read_row: no rows");
            ids.push(id_text(id));
            forbids.push(Predicate::Const(true));
        }
        let residual = |id: &PolicyId| -> Result<Predicate, predicate::Untranslatable> {
            let policy = response
                .get_policy(id)
                .ok_or_else(|| predicate::Untranslatable(format!("residual {id} is missing")))?;
            let pst = policy
                .to_pst()
                .map_err(|e| predicate::Untranslatable(e.to_string()))?;
            let body = pst.body();
            let scope_is_trivial = matches!(body.principal, pst::PrincipalConstraint::Any)
                && !matches!(body.action, pst::ActionConstraint::In(_))
                && match &body.resource {
                    pst::ResourceConstraint::Any => true,
                    pst::ResourceConstraint::Is(t) => t.to_string() == row_type,
                    _ => false,
                };
            if !scope_is_trivial {
                return Err(predicate::Untranslatable(format!(
                    "the scope of residual {id}"
                )));
            }
            predicate::translate_clauses(body.clauses(), &columns)
        };
        // Sorted, so that the predicate does not depend on the response's iteration order.
        fn sorted<'a>(ids: impl Iterator<Item = &'a PolicyId>) -> Vec<&'a PolicyId> {
            let mut ids: Vec<_> = ids.collect();
            ids.sort_by_key(|id| AsRef::<str>::as_ref(*id));
            ids
        }
        for id in sorted(response.residual_permits()) {
            ids.push(id_text(id));
            match residual(id) {
                Ok(p) => permits.push(self.sampled(id, p, desc)),
                Err(e) => {
                    tracing::warn!(policy = %id, table = %desc.id(), "{e}: the permit admits no row")
                }
            }
        }
        for id in sorted(response.residual_forbids()) {
            ids.push(id_text(id));
            match residual(id) {
                Ok(p) => forbids.push(p),
                Err(e) => {
                    tracing::warn!(policy = %id, table = %desc.id(), "{e}: the forbid excludes every row");
                    forbids.push(Predicate::Const(true));
                }
            }
        }
        ids.sort();
        let rows = match predicate::combine(permits, forbids) {
            Predicate::Const(true) => RowPredicate::All,
            Predicate::Const(false) => RowPredicate::None,
            p => RowPredicate::Where(p),
        };
        Ok((rows, ids))
    }

    /// A permit's rows narrowed to its `@sample` (§8): subjects in the keyed sample. A table
    /// without a subject key has no subjects to sample, so the permit admits no row.
    fn sampled(&self, id: &PolicyId, rows: Predicate, desc: &TableDescription) -> Predicate {
        let Some(&basis_points) = self.samples.get(AsRef::<str>::as_ref(id)) else {
            return rows;
        };
        match &desc.subject_key {
            Some(column) => predicate::all(vec![
                rows,
                Predicate::Sample {
                    column: column.clone(),
                    basis_points,
                },
            ]),
            None => {
                tracing::warn!(policy = %id, table = %desc.id(), "a sampled permit on a table without a subject key: no rows");
                Predicate::Const(false)
            }
        }
    }
}
