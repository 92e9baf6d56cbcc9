//! The DataFusion session a request gets: a template made once per gateway (optimizer rules,
//! query planner, runtime with its memory pool) and cloned with the principal's own `lake`
//! catalog.

use super::*;

/// Everything a statement is planned with: shared by the gateway and by the data product calls
/// planned inside its queries (a product plans its own SQL with its own rights, §7).
pub(crate) struct Sessions {
    pub(crate) lake: Arc<Lake>,
    /// The serving policy set (the gateway's handle: a reload is seen by the next planning).
    pub(crate) policies: Arc<RwLock<Arc<PolicySet>>>,
    /// The serving data products (reloaded with the policies).
    pub(crate) products: Arc<RwLock<Arc<crate::products::ProductSet>>>,
    pub(crate) mask_key: Option<Arc<[u8]>>,
    /// What every query's session starts from: configuration, runtime, DataFusion's functions
    /// and rules. Built once and cloned per query (building one registers every built-in
    /// function: a fifth of planning a query), never given a catalog.
    pub(crate) template: datafusion::execution::SessionState,
    /// `[execution] query_memory_limit_bytes`, resolved: one query's cap in the shared pool.
    pub(crate) query_memory: usize,
    pub(crate) limits: statement::StatementLimits,
    /// Data product calls per (user, scenario, day), for `max_calls_per_day`.
    pub(crate) calls: Arc<crate::audit::calls::CallLedger>,
    /// The audit trail, where each data product call is recorded as it releases its output.
    pub(crate) audit: Arc<crate::audit::AuditLog>,
}

/// A read statement planned and checked for one principal, not yet optimized.
pub(crate) struct Planned {
    pub(crate) state: datafusion::execution::SessionState,
    pub(crate) plan: datafusion::logical_expr::LogicalPlan,
    pub(crate) suppressed: enforce::aggregate_only::Suppressed,
}

impl Sessions {
    /// The same, deciding with `set` (a reload checks its products under the set it brings
    /// before either serves).
    pub(crate) fn with_policies(&self, set: Arc<PolicySet>) -> Sessions {
        Sessions {
            lake: self.lake.clone(),
            policies: Arc::new(RwLock::new(set)),
            products: self.products.clone(),
            mask_key: self.mask_key.clone(),
            template: self.template.clone(),
            query_memory: self.query_memory,
            limits: self.limits,
            calls: self.calls.clone(),
            audit: self.audit.clone(),
        }
    }

    /// The serving policy set.
    pub(crate) fn policies(&self) -> Arc<PolicySet> {
        self.policies.read().expect("policy lock poisoned").clone()
    }

    /// The serving data products.
    pub(crate) fn products(&self) -> Arc<crate::products::ProductSet> {
        self.products.read().expect("product lock poisoned").clone()
    }

    /// A DataFusion session for one request: the `lake` catalog behind this principal's gate,
    /// no other catalog, no URL tables, no information_schema. A user's session may call the
    /// data products `calls` offers; a product's session calls none.
    pub(crate) fn session(
        &self,
        who: policy::Principal,
        scenario: &str,
        calls: Option<crate::products::Calls>,
    ) -> (
        datafusion::execution::SessionState,
        Arc<LakeCatalogProvider>,
        Arc<SessionGate>,
    ) {
        let gate = Arc::new(SessionGate::new(
            self.policies(),
            who,
            scenario,
            SystemTime::now(),
            self.mask_key.clone(),
            Arc::new(self.lake.storage_options().clone()),
        ));
        let lake = Arc::new(LakeCatalogProvider::new(self.lake.clone(), gate.clone()));
        let catalog: Arc<dyn datafusion::catalog::CatalogProvider> = match &calls {
            Some(calls) => Arc::new(calls.catalog(lake.clone())),
            None => lake.clone(),
        };
        let mut state = session_from(&self.template, catalog, self.query_memory);
        if let Some(calls) = calls {
            if let Err(e) = state.register_relation_planner(Arc::new(calls)) {
                // Fail closed: without its planner the session calls no product.
                tracing::error!("cannot offer data product calls: {e}");
            }
        }
        (state, lake, gate)
    }

    /// Parses, checks and plans one read statement of `who` under `scenario`: the statement's
    /// checks, `SELECT *` without aggregate-only columns, every named table's snapshot, the
    /// plan's depth, read-only, and the aggregate-only rewrite. Placeholders stay unbound.
    pub(crate) async fn plan_read(
        &self,
        who: policy::Principal,
        scenario: &str,
        sql: &str,
        calls: Option<crate::products::Calls>,
    ) -> Result<Planned, GatewayError> {
        self.plan_read_typed(who, scenario, sql, calls, Vec::new())
            .await
    }

    /// [`Sessions::plan_read`] with the named placeholders `typed` given their types before
    /// planning (a data product's list parameters: `unnest($ids)` plans only on a typed list).
    pub(crate) async fn plan_read_typed(
        &self,
        who: policy::Principal,
        scenario: &str,
        sql: &str,
        calls: Option<crate::products::Calls>,
        typed: Vec<(String, String)>,
    ) -> Result<Planned, GatewayError> {
        let (state, lake, gate) = self.session(who, scenario, calls);
        // Parsing and planning take seconds for a 1 MiB statement: on the query runtime, never
        // on the threads that serve clients (twelve concurrent 1 MiB statements held another
        // user's login and query for 25 s, attacker round 7).
        let executor = state
            .config()
            .get_extension::<Executor>()
            .ok_or_else(|| GatewayError::Config("the session has no query runtime".into()))?;
        let (text, limits) = (sql.to_string(), self.limits);
        // Parsing, `SELECT *`'s rewrite and naming the tables all walk the whole statement.
        let (statement, state, named) = executor
            .spawn(async move {
                let mut statement = statement::parse_read_statement(&text, limits)?;
                crate::products::type_placeholders(&mut statement, &typed)?;
                enforce::wildcard::exclude_from_statement(&mut statement, &gate);
                let named = state
                    .resolve_table_references(&statement)
                    .map_err(GatewayError::from_planning)?;
                Ok::<_, GatewayError>((statement, state, named))
            })
            .await
            .map_err(joined)??;
        // Fresh snapshots of every named lake table at once; planning then takes them in turn.
        let catalog = &state.config_options().catalog;
        lake.prefetch(named.into_iter().filter_map(|r| {
            let r = r.resolve(&catalog.default_catalog, &catalog.default_schema);
            (*r.catalog == *LAKE_CATALOG).then(|| TableRef::new(&*r.schema, &*r.table))
        }))
        .await;
        let (state, plan) = executor
            .spawn(async move {
                let plan = state.statement_to_plan(statement).await;
                (state, plan)
            })
            .await
            .map_err(joined)?;
        let plan = plan.map_err(GatewayError::from_planning)?;
        plan_depth::check(&plan)?;
        crate::type_depth::check_logical(&plan)?;
        statement::verify_read_plan(&plan)?;
        let suppressed = enforce::aggregate_only::Suppressed::default();
        let (plan, suppressed) = executor
            .spawn(async move {
                (
                    enforce::aggregate_only::enforce(plan, &suppressed),
                    suppressed,
                )
            })
            .await
            .map_err(joined)?;
        Ok(Planned {
            state,
            plan: plan?,
            suppressed,
        })
    }
}

/// The session [`Sessions::session`] clones: the lake catalog as default, no information schema,
/// DataFusion's built-in functions and rules, every function call bounded, and the
/// [`Executor`] its queries run on (a config extension).
pub(crate) fn session_template(
    runtime: Arc<RuntimeEnv>,
    sort_merge_joins: bool,
    executor: Arc<Executor>,
) -> datafusion::execution::SessionState {
    let limit = executor.max_batch_bytes();
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(LAKE_CATALOG, "public")
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(false)
        .with_extension(executor);
    if sort_merge_joins {
        config.options_mut().optimizer.prefer_hash_join = false;
    }
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_optimizer_rules(crate::planning_deadline::rules_with_deadline())
        .with_query_planner(Arc::new(enforce::min_group::LakegateQueryPlanner))
        .build();
    state.add_analyzer_rule(Arc::new(bounded_functions::BoundFunctions { limit }));
    state
}

/// A clone of `template` whose only catalog is `lake`, in a catalog list of its own: the
/// template's list (shared by every clone) stays empty, so no session sees another's gate.
/// Its runtime draws from the template's memory pool through a [`query_memory::QueryPool`] of
/// its own, capped at `query_memory` bytes.
pub(crate) fn session_from(
    template: &datafusion::execution::SessionState,
    lake: Arc<dyn datafusion::catalog::CatalogProvider>,
    query_memory: usize,
) -> datafusion::execution::SessionState {
    let shared = template.runtime_env();
    let mut runtime = RuntimeEnv::clone(shared);
    runtime.memory_pool = Arc::new(query_memory::QueryPool::new(
        shared.memory_pool.clone(),
        query_memory,
    ));
    let mut state = SessionStateBuilder::new_from_existing(template.clone())
        .with_runtime_env(Arc::new(runtime))
        .build();
    state.register_catalog_list(Arc::new(MemoryCatalogProviderList::new()));
    state
        .catalog_list()
        .register_catalog(LAKE_CATALOG.to_string(), lake);
    state
}

/// The memory pool when `[execution] memory_limit_bytes` is not set: half of the machine's
/// memory (4 GiB where it cannot be read), so that one query fails with "resources exhausted"
/// before it takes the machine.
pub fn default_memory_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    match total {
        Some(bytes) => (bytes / 2).max(lake_config::MIN_MEMORY_LIMIT),
        None => 4 << 30,
    }
}

/// One query's cap: `[execution] query_memory_limit_bytes`, or a quarter of the pool (at least
/// 64 MiB, at most the pool).
pub(crate) fn query_memory_limit(config: &lake_config::ExecutionConfig) -> usize {
    let pool = config
        .memory_limit_bytes
        .unwrap_or_else(default_memory_limit);
    let limit = config
        .query_memory_limit_bytes
        .unwrap_or((pool / 4).max(lake_config::MIN_MEMORY_LIMIT));
    limit.min(pool) as usize
}

/// The runtime all of one gateway's queries share: `[execution]`'s memory pool and spill folder.
pub(crate) fn runtime_env(
    config: &lake_config::ExecutionConfig,
) -> Result<Arc<RuntimeEnv>, GatewayError> {
    let mut builder = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    let limit = config
        .memory_limit_bytes
        .unwrap_or_else(default_memory_limit);
    builder = builder.with_memory_limit(limit as usize, 1.0);
    if let Some(dir) = &config.spill_dir {
        builder = builder.with_temp_file_path(dir);
    }
    // DataFusion's own cap is 100 GB: one GROUP BY spilled 0.3-0.5 GB/s into /tmp and would
    // have filled the disk, and with it the audit trail, in a minute (attacker round 20 H3).
    builder = builder.with_max_temp_directory_size(config.max_spill_bytes);
    builder.build_arc().map_err(|e| {
        GatewayError::Config(format!(
            "cannot set up query execution ({e}); check [execution] spill_dir"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};

    fn test_executor() -> Arc<Executor> {
        Arc::new(Executor::new(Some(1), lake_config::DEFAULT_MAX_BATCH_BYTES).unwrap())
    }

    #[tokio::test]
    async fn spilling_stops_at_max_spill_bytes() {
        let config = lake_config::ExecutionConfig {
            memory_limit_bytes: Some(lake_config::MIN_MEMORY_LIMIT),
            max_spill_bytes: 1 << 20,
            ..Default::default()
        };
        let ctx = datafusion::prelude::SessionContext::new_with_config_rt(
            datafusion::prelude::SessionConfig::new(),
            runtime_env(&config).unwrap(),
        );
        let err = ctx
            .sql(
                "SELECT value, repeat('x', 100) FROM generate_series(1, 2000000) \
                 ORDER BY value DESC",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        // The client is told lakegate's setting, not DataFusion's.
        let err = GatewayError::Execution(err).client_text();
        assert!(
            err.contains("spilling process has exceeded")
                && err.contains("[execution] max_spill_bytes"),
            "{err}"
        );
    }

    #[test]
    fn sessions_cloned_from_the_template_see_only_their_own_catalog() {
        let template = session_template(Arc::new(RuntimeEnv::default()), false, test_executor());
        let (a, b): (Arc<dyn CatalogProvider>, Arc<dyn CatalogProvider>) = (
            Arc::new(MemoryCatalogProvider::new()),
            Arc::new(MemoryCatalogProvider::new()),
        );
        let first = session_from(&template, a.clone(), 1 << 30);
        let second = session_from(&template, b.clone(), 1 << 30);
        let lake = |s: &datafusion::execution::SessionState| {
            s.catalog_list()
                .catalog(LAKE_CATALOG)
                .expect("a lake catalog")
        };
        assert!(Arc::ptr_eq(&lake(&first), &a));
        assert!(Arc::ptr_eq(&lake(&second), &b));
        assert!(template.catalog_list().catalog_names().is_empty());
        assert_eq!(first.catalog_list().catalog_names(), [LAKE_CATALOG]);
        // The clones keep the template's configuration.
        let options = first.config().options();
        assert_eq!(options.catalog.default_catalog, LAKE_CATALOG);
        assert!(!options.catalog.information_schema);
        assert!(options.optimizer.prefer_hash_join);
        let merge = session_template(Arc::new(RuntimeEnv::default()), true, test_executor());
        assert!(!merge.config().options().optimizer.prefer_hash_join);
    }
}
