//! The six ways of answering a TPC-H query that the harness compares.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use gateway::{Gateway, Principal};
use tonic::transport::Channel;

use crate::tpch;

/// A mode, by the letter the issue and RESULTS.md use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// (a) raw DataFusion over the Delta tables, no gateway.
    Raw,
    /// (b) the gateway in-process, a permissive policy.
    Permissive,
    /// (c) the gateway in-process, a realistic policy set.
    Realistic,
    /// (d) end to end over Flight SQL, Rust client.
    FlightSql,
    /// (e) end to end through the Python ADBC driver into pyarrow.
    Adbc,
    /// (f) DuckDB in-process on the same Parquet files.
    DuckDb,
    /// (g) DuckDB in-process with the same tables loaded into its own memory first (what a
    /// DuckDB user could do too; issue 20 compares held tables with it).
    DuckDbMemory,
}

impl Mode {
    /// All modes in report order.
    pub const ALL: [Mode; 7] = [
        Mode::Raw,
        Mode::Permissive,
        Mode::Realistic,
        Mode::FlightSql,
        Mode::Adbc,
        Mode::DuckDb,
        Mode::DuckDbMemory,
    ];

    /// The letter.
    pub fn letter(self) -> char {
        match self {
            Mode::Raw => 'a',
            Mode::Permissive => 'b',
            Mode::Realistic => 'c',
            Mode::FlightSql => 'd',
            Mode::Adbc => 'e',
            Mode::DuckDb => 'f',
            Mode::DuckDbMemory => 'g',
        }
    }

    /// Parses a letter.
    pub fn from_letter(c: char) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.letter() == c)
    }

    /// What it is, for reports.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Raw => "raw DataFusion",
            Mode::Permissive => "gateway, permissive",
            Mode::Realistic => "gateway, realistic policies",
            Mode::FlightSql => "Flight SQL, Rust client",
            Mode::Adbc => "ADBC (Python) → pyarrow",
            Mode::DuckDb => "DuckDB (Python)",
            Mode::DuckDbMemory => "DuckDB (Python), tables in its memory",
        }
    }
}

/// Raw DataFusion with the Delta tables registered once.
pub struct Raw {
    ctx: SessionContext,
}

impl Raw {
    /// Registers the bench dir's tables. `LAKEGATE_BENCH_RAW_CONFIG` (`key=value,...`) sets
    /// DataFusion options of this mode only, for experiments such as turning off dynamic filters.
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        let mut config = datafusion::prelude::SessionConfig::new();
        if let Ok(options) = std::env::var("LAKEGATE_BENCH_RAW_CONFIG") {
            for kv in options.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("`{kv}` is not key=value"))?;
                config.options_mut().set(k.trim(), v.trim())?;
            }
        }
        let ctx = SessionContext::new_with_config(config);
        tpch::register_raw(&ctx, dir, "tpch").await?;
        Ok(Self { ctx })
    }

    /// Plans, runs and collects `sql`.
    pub async fn run(&self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        Ok(self.ctx.sql(sql).await?.collect().await?)
    }
}

/// Raw DataFusion over views that apply the realistic policy set by hand: the answers mode (c)
/// must give, computed without the gateway.
pub struct PolicedReference {
    ctx: SessionContext,
}

impl PolicedReference {
    /// Registers raw tables as `raw.*` and the hand-written views as `tpch.*`.
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        let ctx = SessionContext::new();
        tpch::register_raw(&ctx, dir, "raw").await?;
        ctx.sql("CREATE SCHEMA tpch").await?.collect().await?;
        let nations = tpch::REALISTIC_NATIONS
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for (table, _) in tpch::TABLES {
            let view = if table == "customer" {
                format!(
                    "CREATE VIEW tpch.customer AS SELECT c_custkey, \
                       CASE WHEN c_name IS NULL THEN NULL ELSE '****' END AS c_name, \
                       c_address, c_nationkey, \
                       concat(substr(c_phone, 1, 2), repeat('*', character_length(c_phone) - 2)) AS c_phone, \
                       c_acctbal, c_mktsegment, c_comment \
                     FROM raw.customer WHERE c_nationkey IN ({nations})"
                )
            } else {
                format!("CREATE VIEW tpch.{table} AS SELECT * FROM raw.{table}")
            };
            ctx.sql(&view).await?.collect().await?;
        }
        Ok(Self { ctx })
    }

    /// The reference answer of `sql`.
    pub async fn run(&self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        Ok(self.ctx.sql(sql).await?.collect().await?)
    }
}

/// The gateway in-process, as one principal.
pub struct InProcess {
    gateway: Arc<Gateway>,
    who: Principal,
}

impl InProcess {
    /// `who` under `scenario` on `gateway`.
    pub fn new(gateway: Arc<Gateway>, scenario: &str) -> Self {
        Self {
            gateway,
            who: Principal {
                user: tpch::USER.to_string(),
                scenario: Some(scenario.to_string()),
            },
        }
    }

    /// Decides, plans, runs and collects `sql`, with the audit records the server writes: the
    /// decision before execution and the completion after (each fsynced), through the same
    /// output review. Nothing is encoded for a wire here, so the completion counts no bytes.
    pub async fn run(&self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        let query = self
            .gateway
            .prepare_audited(&self.who, sql, Some("lakegate-bench".into()))
            .await?;
        let token = gateway::QueryToken::new(self.gateway.clone(), query.clone(), Instant::now());
        let (stream, plan) = query
            .execute_with_plan()
            .await
            .inspect_err(|e| token.end(gateway::Outcome::Failed, e.record_text()))?;
        token.executing(plan);
        let batches: Vec<RecordBatch> = token.review(stream, None).try_collect().await?;
        token.completed();
        Ok(batches)
    }
}

/// A logged-in Flight SQL client working under one scenario.
pub struct Remote {
    client: FlightSqlServiceClient<Channel>,
}

impl Remote {
    /// Connects to `addr`, logs in as the bench user and declares `scenario`.
    pub async fn connect(addr: SocketAddr, scenario: &str) -> anyhow::Result<Self> {
        Self::connect_with(addr, scenario, None).await
    }

    /// [`Remote::connect`] over TLS when `ca_pem` (the CA to trust) is given.
    pub async fn connect_with(
        addr: SocketAddr,
        scenario: &str,
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(ca) = ca_pem {
            endpoint = endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let mut client = FlightSqlServiceClient::new(channel);
        client
            .handshake(tpch::USER, tpch::PASSWORD)
            .await
            .context("login")?;
        client.set_header(flight_server::SCENARIO_HEADER, scenario);
        Ok(Self { client })
    }

    /// Executes `sql` and fetches every endpoint.
    pub async fn run(&self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        // A clone shares the channel and the bearer token.
        let mut client = self.client.clone();
        let info = client.execute(sql.to_string(), None).await?;
        let mut out = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
            let stream = client.do_get(ticket).await?;
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            out.extend(batches);
        }
        Ok(out)
    }
}

/// Times one call.
pub async fn timed<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<(T, f64)> {
    let started = Instant::now();
    let out = f.await?;
    Ok((out, started.elapsed().as_secs_f64()))
}
