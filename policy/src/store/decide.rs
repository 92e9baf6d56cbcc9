//! Deciding grants: the cached grant of a (user, scenario, table), its columns and its privacy.

use super::*;

/// One grant's requests: who asks, under which scenario, with which policies.
pub(super) struct Ask<'a> {
    pub(super) slice: &'a Slice,
    pub(super) principal: &'a EntityUid,
    pub(super) scenario: &'a str,
    pub(super) context: &'a Context,
}

/// A Cedar decimal's text (`decimal("1.5")` or `1.5`) as ε; negative or malformed: none (fail
/// closed: no budget).
pub(super) fn decimal_epsilon(text: &str) -> Option<crate::Epsilon> {
    let t = text.trim();
    let t = t
        .strip_prefix("decimal(\"")
        .and_then(|t| t.strip_suffix("\")"))
        .unwrap_or(t);
    crate::Epsilon::parse_amount(t).ok()
}

impl PolicySet {
    /// Whether `user` may query any table of the lake, or call any data product, under
    /// `scenario` at `now`: a scenario that grants the user nothing (another organisation's,
    /// or one whose time is up) is, to that user, no scenario at all. A scenario that only
    /// approves products (verification services) grants something.
    pub fn grants_anything(
        &self,
        user: &str,
        scenario: &str,
        now: SystemTime,
    ) -> Result<bool, PolicyError> {
        for table in self.tables.keys() {
            if self.grant(user, scenario, table, now)?.allowed {
                return Ok(true);
            }
        }
        for product in &self.products {
            if self.may_invoke(user, scenario, product, now)?.0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The grant for `user` reading `table` (`schema.table`) under `scenario` at `now`
    /// (`policy-model.md` §5): table scope from `query`; per column `read_column` (raw), else
    /// `read_masked` (the most restrictive `@mask` of the determining permits), else `aggregate`
    /// (the largest `@min_group`, 10 if absent), else hidden; rows from `read_row` evaluated with
    /// the row unknown.
    ///
    /// Decisions are made at whole seconds (`context.now`) and cached per (user, scenario, table,
    /// second) for the life of this set, so a repeated request costs a map lookup (the grant is
    /// shared with the cache, not copied). Only the
    /// policies that can apply to the (user, scenario) are evaluated (a slice); a column or row
    /// decision of policies that read neither the principal nor the time is memoized per
    /// (scenario, resource) and serves every user whose slice holds the same policies.
    pub fn grant(
        &self,
        user: &str,
        scenario: &str,
        table: &str,
        now: SystemTime,
    ) -> Result<std::sync::Arc<Grant>, PolicyError> {
        self.grant_for(
            &crate::Principal::User(user.to_string()),
            scenario,
            table,
            now,
        )
    }

    /// [`Self::grant`] for any principal: a data product plans its query with its own grants
    /// (definer rights), under the caller's scenario and time.
    pub fn grant_for(
        &self,
        principal: &crate::Principal,
        scenario: &str,
        table: &str,
        now: SystemTime,
    ) -> Result<std::sync::Arc<Grant>, PolicyError> {
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key = (principal.clone(), scenario.to_string(), table.to_string());
        {
            let mut cache = self.grants.lock().expect("grant cache poisoned");
            if let Some((at, g)) = cache.get(&key) {
                if *at == second {
                    return Ok(g.clone());
                }
            }
        }
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
        let grant = std::sync::Arc::new(self.decide_grant(principal, scenario, table, now)?);
        let evicted = self
            .grants
            .lock()
            .expect("grant cache poisoned")
            .push(key, (second, grant.clone()));
        // Dropped outside the lock: the least recently used grant, or this key's older one.
        drop(evicted);
        Ok(grant)
    }

    /// The (user, scenario, table) of the grants used most recently (decided or answered from
    /// the cache), newest first, at most `limit`: what [`Self::warm`] on the next policy set
    /// decides before it serves.
    pub fn recent_grants(&self, limit: usize) -> Vec<(crate::Principal, String, String)> {
        let cache = self.grants.lock().expect("grant cache poisoned");
        // Most recently used first.
        cache.iter().take(limit).map(|(k, _)| k.clone()).collect()
    }

    /// Decides the grants of `requests` (user, scenario, table) at `now`, so that the slices and
    /// memos they fill answer the first queries after a reload; a request that errors is left
    /// to its query to report. Returns how many were decided.
    pub fn warm(&self, requests: &[(crate::Principal, String, String)], now: SystemTime) -> usize {
        let mut decided = 0;
        for (principal, scenario, table) in requests {
            if self.grant_for(principal, scenario, table, now).is_ok() {
                decided += 1;
            }
        }
        decided
    }

    pub(super) fn decide_grant(
        &self,
        who: &crate::Principal,
        scenario: &str,
        table: &str,
        now: SystemTime,
    ) -> Result<Grant, PolicyError> {
        let Some(desc) = self.tables.get(table) else {
            return Ok(Grant::denied(vec![]));
        };
        let known = entity_uid("Lake::Scenario", scenario)
            .is_ok_and(|uid| self.entities.get(&uid).is_some());
        if !known {
            return Ok(Grant::denied(vec![]));
        }
        let principal = entity_uid(who.type_name(), who.id())?;
        let slice = self.slice(&principal, who, scenario)?;
        self.decide_grant_with(&slice, desc, &principal, scenario, now)
    }

    /// Whether `user` may call the data product `product` under `scenario` at `now` (`invoke`
    /// on `Lake::Product::"<product>"`), with the determining policies. An unknown scenario or
    /// product: no.
    pub fn may_invoke(
        &self,
        user: &str,
        scenario: &str,
        product: &str,
        now: SystemTime,
    ) -> Result<(bool, Vec<String>), PolicyError> {
        let known = |ty: &str, id: &str| {
            entity_uid(ty, id).is_ok_and(|uid| self.entities.get(&uid).is_some())
        };
        if !known("Lake::Scenario", scenario) || !known("Lake::Product", product) {
            return Ok((false, vec![]));
        }
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
        let who = crate::Principal::User(user.to_string());
        let principal = entity_uid(who.type_name(), who.id())?;
        let slice = self.slice(&principal, &who, scenario)?;
        let context = self.context(scenario, now)?;
        let ask = Ask {
            slice: &slice,
            principal: &principal,
            scenario,
            context: &context,
        };
        self.decide(&ask, Action::Invoke, entity_uid("Lake::Product", product)?)
    }

    /// The grant for `desc`, decided against `slice` (the whole set gives the same grant).
    pub(super) fn decide_grant_with(
        &self,
        slice: &Slice,
        desc: &TableDescription,
        principal: &EntityUid,
        scenario: &str,
        now: SystemTime,
    ) -> Result<Grant, PolicyError> {
        let table = desc.id();
        let context = self.context(scenario, now)?;
        let ask = Ask {
            slice,
            principal,
            scenario,
            context: &context,
        };
        let table_uid = entity_uid("Lake::Table", &table)?;
        let (allowed, table_policies) = self.decide(&ask, Action::Query, table_uid)?;
        if !allowed {
            return Ok(Grant::denied(table_policies));
        }

        let mut columns = BTreeMap::new();
        let mut column_policies = BTreeMap::new();
        for c in &desc.columns {
            let (treatment, why) = self.column(&ask, &table, &c.name)?;
            columns.insert(c.name.clone(), treatment);
            column_policies.insert(c.name.clone(), why);
        }
        let (rows, row_policies) = self.rows(&ask, desc)?;
        Ok(Grant {
            allowed: true,
            columns,
            rows,
            table_policies,
            column_policies,
            row_policies,
        })
    }

    /// `read_column`, else `read_masked`, else `aggregate`, else hidden.
    pub(super) fn column(
        &self,
        ask: &Ask<'_>,
        table: &str,
        column: &str,
    ) -> Result<(ColumnTreatment, Vec<String>), PolicyError> {
        let uid = EntityUid::from_type_name_and_id(
            self.column_type.clone(),
            EntityId::new(format!("{table}.{column}")),
        );
        if let (true, why) = self.decide(ask, Action::ReadColumn, uid.clone())? {
            return Ok((ColumnTreatment::Raw, why));
        }
        if let (true, why) = self.decide(ask, Action::ReadMasked, uid.clone())? {
            let masks = why
                .iter()
                .map(|id| {
                    self.masks.get(id).cloned().ok_or_else(|| {
                        PolicyError::Request(format!(
                            "policy `{id}` permits read_masked without a @mask annotation"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mask = Mask::most_restrictive(masks).expect("an allow has a reason");
            return Ok((ColumnTreatment::Masked(mask), why));
        }
        if let (true, why) = self.decide(ask, Action::Aggregate, uid)? {
            let k = why
                .iter()
                .map(|id| {
                    self.min_groups
                        .get(id)
                        .copied()
                        .unwrap_or(DEFAULT_MIN_GROUP)
                })
                .max()
                .unwrap_or(DEFAULT_MIN_GROUP);
            let privacy = self.privacy_of(&why, table, column)?;
            return Ok((
                ColumnTreatment::AggregateOnly {
                    min_group: k,
                    privacy,
                },
                why,
            ));
        }
        Ok((ColumnTreatment::Hidden, vec![]))
    }

    /// The differential privacy of an aggregate-only column, from its determining permits: if
    /// any asks for noise, the smallest ε of them, and the narrowest of their bounds (none
    /// overlapping: no decision, fail closed).
    pub(super) fn privacy_of(
        &self,
        why: &[String],
        table: &str,
        column: &str,
    ) -> Result<Option<crate::Privacy>, PolicyError> {
        let asked: Vec<&crate::Privacy> =
            why.iter().filter_map(|id| self.privacy.get(id)).collect();
        let Some(epsilon) = asked.iter().map(|p| p.epsilon).min() else {
            return Ok(None);
        };
        let mut bounds: Option<crate::Bounds> = None;
        for b in asked.iter().filter_map(|p| p.bounds) {
            bounds = match bounds {
                None => Some(b),
                Some(a) => Some(a.intersect(b).ok_or_else(|| {
                    PolicyError::Request(format!(
                        "the @bounds of the permits releasing {table}.{column} do not overlap"
                    ))
                })?),
            };
        }
        Ok(Some(crate::Privacy { epsilon, bounds }))
    }

    /// One Cedar decision of `action` on `resource` against the slice's policies
    /// for that action: allowed or not, and the determining policy ids.
    pub(super) fn decide(
        &self,
        ask: &Ask<'_>,
        action: Action,
        resource: EntityUid,
    ) -> Result<(bool, Vec<String>), PolicyError> {
        let set = &ask.slice.sets[action];
        if set.policies.is_empty() {
            // What Cedar answers for no policies: deny, no reasons, no errors.
            return Ok((false, vec![]));
        }
        let memo = ask.slice.exact && set.shared;
        if memo {
            if let Some(answer) = set.decisions.get(ask.scenario, resource.id().unescaped()) {
                return Ok(answer);
            }
        }
        // Not validated against the schema here: [`Self::context`] validated the context, and
        // the principal (a `Lake::User` or `Lake::Product`) and resources (a `Lake::Table` for
        // `query`, a `Lake::Column` for the column actions, a `Lake::Product` for `invoke`) are
        // of the types the lake schema gives them.
        let request = Request::new(
            ask.principal.clone(),
            self.actions[action].0.clone(),
            resource,
            ask.context.clone(),
            None,
        )
        .map_err(|e| PolicyError::Request(describe(&e)))?;
        let response = self
            .authorizer
            .is_authorized(&request, &set.policies, &self.entities);
        for e in response.diagnostics().errors() {
            // Cedar skips a policy that errors; the decision stands on the rest.
            let action = action.name();
            let principal = ask.principal;
            tracing::warn!(%principal, action, "policy evaluation error: {e}");
        }
        let mut ids: Vec<String> = response.diagnostics().reason().map(id_text).collect();
        // Cedar's reasons come from a hash set: sorted, records do not depend on its order.
        ids.sort();
        let answer = (response.decision() == Decision::Allow, ids);
        if let (true, Some(resource)) = (memo, request.resource()) {
            set.decisions
                .put(ask.scenario, resource.id().unescaped(), answer.clone());
        }
        Ok(answer)
    }

    /// `{scenario, now}`, validated against the schema's request context; the last one built
    /// per scenario is kept (building parses the datetime, which costs more than a decision).
    pub(super) fn context(&self, scenario: &str, now: SystemTime) -> Result<Context, PolicyError> {
        if let Some((at, context)) = self
            .contexts
            .lock()
            .expect("context cache poisoned")
            .get(scenario)
        {
            if *at == now {
                return Ok(context.clone());
            }
        }
        let context = Context::from_pairs([
            (
                "scenario".to_string(),
                RestrictedExpression::new_entity_uid(entity_uid("Lake::Scenario", scenario)?),
            ),
            ("now".to_string(), self.datetime(now)),
        ])
        .map_err(|e| PolicyError::Request(describe(&e)))?;
        // Every action has the same context type; one check stands for all requests with it.
        context
            .validate(&self.schema, &self.actions[Action::Query].0)
            .map_err(|e| PolicyError::Request(describe(&e)))?;
        self.contexts
            .lock()
            .expect("context cache poisoned")
            .put(scenario.to_string(), (now, context.clone()));
        Ok(context)
    }

    /// `now` as a Cedar datetime; the last one is kept, as every scenario's context of the same
    /// second holds it.
    pub(super) fn datetime(&self, now: SystemTime) -> RestrictedExpression {
        let mut last = self.now.lock().expect("datetime cache poisoned");
        if let Some((at, expr)) = &*last {
            if *at == now {
                return expr.clone();
            }
        }
        let at: chrono::DateTime<chrono::Utc> = now.into();
        let expr =
            RestrictedExpression::new_datetime(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        *last = Some((now, expr.clone()));
        expr
    }
}
