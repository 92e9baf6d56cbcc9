//! Prometheus metrics (`[server] metrics_listen`): queries by outcome, refusals by gRPC code,
//! query latency, bytes out, running queries, policy reloads, audit write latency. One registry
//! per process (the counters of every server in it), served as text at `GET /metrics`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::sync::Arc;

use gateway::{Completion, Gateway, Query, QueryToken};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Table {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reload {
    result: String,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    queries: Family<Outcome, Counter>,
    refusals: Family<Code, Counter>,
    latency: Histogram,
    bytes_out: Counter,
    running: Gauge,
    sessions: Gauge,
    reloads: Family<Reload, Counter>,
    audit_write: Histogram,
    connections_refused: Counter,
    accel_bytes: Family<Table, Gauge>,
    accel_version: Family<Table, Gauge>,
    accel_hits: Family<Table, Gauge>,
    accel_misses: Family<Table, Gauge>,
    accel_load_ms: Family<Table, Gauge>,
    accel_loads: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("lakegate");
        let m = Self {
            queries: Family::default(),
            refusals: Family::default(),
            latency: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            bytes_out: Counter::default(),
            running: Gauge::default(),
            sessions: Gauge::default(),
            reloads: Family::default(),
            audit_write: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            connections_refused: Counter::default(),
            accel_bytes: Family::default(),
            accel_version: Family::default(),
            accel_hits: Family::default(),
            accel_misses: Family::default(),
            accel_load_ms: Family::default(),
            accel_loads: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "queries",
            "Queries executed, by how they ended (completed, failed, refused, cancelled)",
            m.queries.clone(),
        );
        registry.register(
            "refusals",
            "Statements refused before they ran, by gRPC status code",
            m.refusals.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "From execution to the end of the stream",
            m.latency.clone(),
        );
        registry.register(
            "bytes_out",
            "Arrow IPC bytes sent to clients",
            m.bytes_out.clone(),
        );
        registry.register("running_queries", "Queries running now", m.running.clone());
        registry.register(
            "active_sessions",
            "Logged-in sessions whose token has not expired",
            m.sessions.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy folder reloads, by result (ok, failed)",
            m.reloads.clone(),
        );
        registry.register(
            "audit_write_seconds",
            "Time to write a completion record to the audit trail",
            m.audit_write.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept: past server.max_connections or max_connections_per_client",
            m.connections_refused.clone(),
        );
        registry.register(
            "accel_bytes",
            "[acceleration] bytes held in memory per table (batches and key index; 0 = read from Parquet)",
            m.accel_bytes.clone(),
        );
        registry.register(
            "accel_version",
            "[acceleration] the Delta version held per table (-1 = none)",
            m.accel_version.clone(),
        );
        registry.register(
            "accel_hits",
            "[acceleration] reads served from memory since start, per table",
            m.accel_hits.clone(),
        );
        registry.register(
            "accel_misses",
            "[acceleration] reads of an accelerated table served from Parquet since start (loading, over budget, failed)",
            m.accel_misses.clone(),
        );
        registry.register(
            "accel_load_milliseconds",
            "[acceleration] how long decoding the held version took, per table",
            m.accel_load_ms.clone(),
        );
        registry.register(
            "accel_loads",
            "[acceleration] table versions loaded into memory since start",
            m.accel_loads.clone(),
        );
        Self { registry, ..m }
    }

    /// The accelerator's state, read when metrics are scraped.
    fn accelerated(&self, accel: &catalog::accel::Accelerator) {
        use catalog::accel::TableState;
        self.accel_loads.set(accel.loads() as i64);
        for s in accel.status() {
            let label = Table {
                table: s.table.to_string(),
            };
            let (version, bytes, load_ms) = match s.state {
                TableState::Held {
                    version,
                    bytes,
                    load_time,
                    ..
                } => (version as i64, bytes as i64, load_time.as_millis() as i64),
                _ => (-1, 0, 0),
            };
            self.accel_version.get_or_create(&label).set(version);
            self.accel_bytes.get_or_create(&label).set(bytes);
            self.accel_load_ms.get_or_create(&label).set(load_ms);
            self.accel_hits.get_or_create(&label).set(s.hits as i64);
            self.accel_misses.get_or_create(&label).set(s.misses as i64);
        }
    }

    /// The metrics as Prometheus text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A statement refused before it ran.
    pub(crate) fn refused(&self, status: &tonic::Status) {
        let code = format!("{:?}", status.code());
        self.refusals.get_or_create(&Code { code }).inc();
    }

    /// A connection refused at accept for a bound.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A policy reload and whether the new set serves.
    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" }.to_string();
        self.reloads.get_or_create(&Reload { result }).inc();
    }

    pub(crate) fn started(&self) {
        self.running.inc();
    }

    pub(crate) fn ended(&self) {
        self.running.dec();
    }

    fn completed(&self, c: &Completion, write: Duration) {
        self.queries
            .get_or_create(&Outcome {
                outcome: c.outcome.to_string(),
            })
            .inc();
        self.latency.observe(c.duration.as_secs_f64());
        self.bytes_out.inc_by(c.bytes);
        self.audit_write.observe(write.as_secs_f64());
    }
}

/// A query token that counts its completion in the metrics once its record is written.
pub(crate) fn tracked(gateway: &Arc<Gateway>, query: &Query, started: Instant) -> QueryToken {
    QueryToken::new(gateway.clone(), query.clone(), started)
        .observed(Box::new(|c, write| metrics().completed(c, write)))
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    sessions: std::sync::Arc<crate::auth::Sessions>,
    accel: Option<Arc<catalog::accel::Accelerator>>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            metrics().sessions.set(sessions.active() as i64);
            if let Some(accel) = &accel {
                metrics().accelerated(accel);
            }
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics().text(),
            )
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the metrics endpoint stopped: {e}");
    }
}
