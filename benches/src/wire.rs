//! Wire throughput: one large result streamed three ways — a bare arrow-flight DoGet of batches
//! already in memory (the ceiling), lakegate over Flight SQL with the Rust client, and lakegate
//! through the Python ADBC driver into pyarrow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

/// The wire table, `wire.rows`.
pub const TABLE: &str = "wire.rows";

/// Writes `wire.rows` with `rows` rows into the bench dir's lake, unless it has that many.
pub async fn generate(dir: &Path, rows: usize) -> anyhow::Result<()> {
    let path = crate::tpch::lake_dir(dir).join("wire").join("rows");
    let Some(mut table) = crate::tpch::fresh_table(&path, rows)? else {
        return Ok(());
    };
    const CHUNK: usize = 1_000_000;
    let flags = ["A", "N", "R"];
    let mut start = 0usize;
    while start < rows {
        let n = CHUNK.min(rows - start);
        let ids: Vec<i64> = (start..start + n).map(|i| i as i64).collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
            (
                "account",
                Arc::new(Int64Array::from_iter_values(
                    ids.iter().map(|i| i.wrapping_mul(7919) % 1_000_003),
                )) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(Float64Array::from_iter_values(
                    ids.iter().map(|i| (*i % 100_000) as f64 * 0.01),
                )) as ArrayRef,
            ),
            (
                "day",
                Arc::new(Date32Array::from_iter_values(
                    ids.iter().map(|i| 8_000 + (*i % 3_000) as i32),
                )) as ArrayRef,
            ),
            (
                "flag",
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| flags[(*i % 3) as usize]),
                )) as ArrayRef,
            ),
            (
                "note",
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("payment {i:>10}")),
                )) as ArrayRef,
            ),
        ])?;
        table = crate::tpch::write_part(table, vec![batch], start == 0).await?;
        start += n;
    }
    crate::tpch::mark_written(&path, rows)
}

/// A bare Flight server that answers every DoGet with the same in-memory batches.
#[derive(Clone)]
struct BatchServer {
    batches: Arc<Vec<RecordBatch>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlightService for BatchServer {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake"))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let batches = self.batches.clone();
        let input = futures::stream::iter((0..batches.len()).map(move |i| Ok(batches[i].clone())));
        let stream = FlightDataEncoderBuilder::new()
            .build(input)
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(Box::pin(stream)))
    }
    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put"))
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("do_action"))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
}

/// Throughput of one way of streaming the result.
#[derive(Debug, Clone, Serialize)]
pub struct WireFigure {
    /// What streamed it.
    pub path: String,
    /// Rows received per run.
    pub rows: u64,
    /// Seconds per timed run.
    pub times: Vec<f64>,
    /// The median of `times`.
    pub median_s: f64,
    /// MB (10^6 bytes of Arrow data) per second at the median time.
    pub mb_per_s: f64,
}

/// The three figures, and the Arrow size of the result they are computed on.
#[derive(Debug, Clone, Serialize)]
pub struct WireReport {
    /// Rows of the result.
    pub rows: u64,
    /// Bytes of Arrow buffers of the result (the same numerator for every path).
    pub bytes: u64,
    /// Raw DoGet, lakegate Flight SQL, ADBC.
    pub figures: Vec<WireFigure>,
}

/// Runs the wire benchmark over `wire.rows` of a bench dir; with `tls`, lakegate's two paths
/// again over TLS (`[server.tls]`, certificates generated into the bench dir).
pub async fn run(
    dir: &Path,
    runs: usize,
    python: Option<&Path>,
    tls: bool,
) -> anyhow::Result<WireReport> {
    let dir = std::fs::canonicalize(dir)?;
    crate::tpch::write_setup(&dir)?;
    let sql = format!("SELECT * FROM {TABLE}");

    // The same batches, read once with raw DataFusion.
    let ctx = datafusion::prelude::SessionContext::new();
    let path = crate::tpch::lake_dir(&dir).join("wire").join("rows");
    let t =
        deltalake::open_table_with_storage_options(crate::tpch::table_url(&path)?, HashMap::new())
            .await
            .context("no wire table: run `lakegate-bench gen --wire-rows N` first")?;
    ctx.register_table("wire_rows", t.table_provider().await?)?;
    let batches = ctx.sql("SELECT * FROM wire_rows").await?.collect().await?;
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let bytes: u64 = batches
        .iter()
        .map(|b| b.get_array_memory_size() as u64)
        .sum();
    let mb = bytes as f64 / 1e6;

    let raw = BatchServer {
        batches: Arc::new(batches),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let raw_addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(
                FlightServiceServer::new(raw)
                    .max_encoding_message_size(64 * 1024 * 1024)
                    .max_decoding_message_size(64 * 1024 * 1024),
            )
            .serve_with_incoming(tokio_stream_listener(listener))
            .await;
    });

    let config = crate::tpch::config(&dir, None)?;
    let (addr, tx) = serve(&config).await?;

    let mut figures = Vec::new();
    let raw_times = time_runs(runs, || raw_doget(raw_addr)).await?;
    figures.push(figure(
        "arrow-flight DoGet, batches in memory",
        raw_times,
        mb,
    ));
    let remote = crate::modes::Remote::connect(addr, crate::tpch::PERMISSIVE).await?;
    let lg_times = time_runs(runs, || async {
        let b = remote.run(&sql).await?;
        Ok(b.iter().map(|b| b.num_rows() as u64).sum())
    })
    .await?;
    figures.push(figure("lakegate Flight SQL, Rust client", lg_times, mb));
    if let Some(python) = python {
        let adbc = adbc_times(python, addr, &sql, runs, None).await?;
        figures.push(figure("lakegate through ADBC into pyarrow", adbc, mb));
    }
    let _ = tx.send(());
    if tls {
        flight_server::tls::install_crypto_provider();
        let files = flight_server::tls::generate(&dir.join("tls"))?;
        let mut config = config.clone();
        config.server.tls = Some(lake_config::TlsConfig {
            cert: files.cert.clone(),
            key: files.key.clone(),
            client_ca: None,
        });
        let (addr, tx) = serve(&config).await?;
        let ca = std::fs::read(&files.ca)?;
        let remote =
            crate::modes::Remote::connect_with(addr, crate::tpch::PERMISSIVE, Some(&ca)).await?;
        let times = time_runs(runs, || async {
            let b = remote.run(&sql).await?;
            Ok(b.iter().map(|b| b.num_rows() as u64).sum())
        })
        .await?;
        figures.push(figure(
            "lakegate Flight SQL over TLS, Rust client",
            times,
            mb,
        ));
        if let Some(python) = python {
            let adbc = adbc_times(python, addr, &sql, runs, Some(&files.ca)).await?;
            figures.push(figure(
                "lakegate over TLS through ADBC into pyarrow",
                adbc,
                mb,
            ));
        }
        let _ = tx.send(());
    }
    for f in &mut figures {
        f.rows = rows;
    }
    Ok(WireReport {
        rows,
        bytes,
        figures,
    })
}

/// Serves `config` in this process on a free port until the sender is used or dropped.
pub(crate) async fn serve(
    config: &lake_config::Config,
) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let server = flight_server::Server::bind(config, Some("127.0.0.1:0".parse()?)).await?;
    // With [acceleration], measured once the tables are held.
    crate::tpch::held(server.gateway()).await?;
    let addr = server.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok((addr, tx))
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.and_then(|(s, _)| {
            s.set_nodelay(true)?;
            Ok(s)
        });
        Some((next, l))
    })
}

fn figure(path: &str, (rows, times): (u64, Vec<f64>), mb: f64) -> WireFigure {
    let median_s = crate::harness::Measured {
        times: times.clone(),
        problem: None,
    }
    .median()
    .unwrap_or(f64::NAN);
    WireFigure {
        path: path.into(),
        rows,
        median_s,
        mb_per_s: mb / median_s,
        times,
    }
}

async fn time_runs<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<(u64, Vec<f64>)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut times = Vec::new();
    let mut rows = 0;
    // One warm-up run.
    for i in 0..runs.max(1) + 1 {
        let started = Instant::now();
        rows = f().await?;
        if i > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok((rows, times))
}

async fn raw_doget(addr: SocketAddr) -> anyhow::Result<u64> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = arrow_flight::FlightClient::new(channel);
    let stream = client.do_get(Ticket::new("all")).await?;
    let mut rows = 0u64;
    let mut stream = stream.map_err(anyhow::Error::from);
    while let Some(b) = stream.next().await {
        rows += b?.num_rows() as u64;
    }
    Ok(rows)
}

async fn adbc_times(
    python: &Path,
    addr: SocketAddr,
    sql: &str,
    runs: usize,
    ca: Option<&Path>,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/modes.py");
    let mut command = tokio::process::Command::new(python);
    command.arg(&script);
    match ca {
        Some(ca) => command
            .args(["--wire", sql, "--endpoint", &format!("grpc+tls://{addr}")])
            .arg("--tls-root-certs")
            .arg(ca),
        None => command.args(["--wire", sql, "--endpoint", &format!("grpc://{addr}")]),
    };
    let out = command
        .args([
            "--user",
            crate::tpch::USER,
            "--password",
            crate::tpch::PASSWORD,
        ])
        .args(["--scenario", crate::tpch::PERMISSIVE])
        .args(["--manifest", "-", "--queries", "-"])
        .args(["--runs", &runs.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        anyhow::bail!("the ADBC wire run failed ({})", out.status);
    }
    #[derive(serde::Deserialize)]
    struct Wire {
        rows: u64,
        times: Vec<f64>,
    }
    let w: Wire = serde_json::from_slice(&out.stdout).context("modes.py --wire printed no JSON")?;
    Ok((w.rows, w.times))
}
