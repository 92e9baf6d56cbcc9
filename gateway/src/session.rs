//! The DataFusion session a request gets: a template made once per gateway (optimizer rules,
//! query planner, runtime with its memory pool) and cloned with the principal's own `lake`
//! catalog.

use super::*;

impl Gateway {
    /// A DataFusion session for one request: the `lake` catalog behind this principal's gate,
    /// no other catalog, no URL tables, no information_schema.
    pub(crate) fn session(
        &self,
        user: &str,
        scenario: &str,
    ) -> (
        datafusion::execution::SessionState,
        Arc<LakeCatalogProvider>,
        Arc<SessionGate>,
    ) {
        let gate = Arc::new(SessionGate::new(
            self.policies(),
            user,
            scenario,
            SystemTime::now(),
            self.mask_key.clone(),
            Arc::new(self.lake.storage_options().clone()),
        ));
        let lake = Arc::new(LakeCatalogProvider::new(self.lake.clone(), gate.clone()));
        (
            session_from(&self.template, lake.clone(), self.query_memory),
            lake,
            gate,
        )
    }
}

/// The session [`Gateway::session`] clones: the lake catalog as default, no information schema,
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
