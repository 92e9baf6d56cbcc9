//! Helpers for lakegate's end-to-end tests: a real server on 127.0.0.1 over a real Delta lake,
//! and a real Flight SQL client. The tests themselves live in `tests/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::FlightInfo;
use futures::TryStreamExt;
use tonic::transport::Channel;

use flight_server::demo::DemoLake;
use flight_server::session_options::{
    OptionValue, SessionOptionValue, SetSessionOptionsRequest, SetSessionOptionsResult,
    SET_SESSION_OPTIONS,
};
use lake_config::Config;

pub mod attack;

/// Rows of the demo lake the tests share (market.enterprises then has 200 rows).
pub const DEMO_ROWS: usize = 1_000;

/// A new folder that outlives the test (a server may still write to it while the test ends).
/// All of them live under `$TMPDIR/lakegate-tests`, which `scripts/test.sh` empties first.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let parent = std::env::temp_dir().join("lakegate-tests");
    std::fs::create_dir_all(&parent).expect("scratch parent");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .expect("scratch dir")
        .keep()
}

/// A demo lake built once per test binary, in a folder that lives as long as the process.
pub fn shared_demo() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir("lakegate-demo-");
        let build_dir = dir.clone();
        // Built on its own runtime: tests call this from inside theirs.
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(DemoLake::new(&build_dir).with_rows(DEMO_ROWS).build())
                .expect("demo lake")
        })
        .join()
        .expect("demo build thread");
        dir
    })
}

/// A demo lake of a test's own under `dir` (for tests that change the lake or its trail), and
/// its configuration.
pub async fn private_demo(dir: &Path) -> Config {
    let path = DemoLake::new(dir)
        .with_rows(DEMO_ROWS)
        .build()
        .await
        .expect("demo lake");
    Config::load(&path).expect("demo config")
}

/// A lakegate server running in this process on 127.0.0.1 until dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Serves the configuration file `config` on a free port.
    pub async fn start(config: &Path) -> Self {
        let config = Config::load(config).expect("config");
        Self::start_with(&config).await
    }

    /// Serves `config` on a free port. A server over the shared demo gets an audit folder of its
    /// own: one writer per audit folder.
    pub async fn start_with(config: &Config) -> Self {
        let mut config = config.clone();
        if config.audit.dir == shared_demo().join("audit") {
            config.audit.dir = scratch_dir("lakegate-audit-");
        }
        let server = flight_server::Server::bind(&config, Some("127.0.0.1:0".parse().unwrap()))
            .await
            .expect("server binds");
        if config.acceleration.is_some() {
            // Tests mean the held versions: wait until every listed table is held.
            let status = server
                .gateway()
                .lake()
                .load_accelerated()
                .await
                .expect("accelerated tables load");
            for s in status {
                assert!(
                    matches!(s.state, catalog::accel::TableState::Held { .. }),
                    "{s:?}"
                );
            }
        }
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs")
        });
        Self {
            addr,
            shutdown: Some(tx),
        }
    }

    /// The demo lake, served.
    pub async fn demo() -> Self {
        Self::start(&shared_demo().join("lakegate.toml")).await
    }

    /// An unauthenticated client.
    pub async fn client(&self) -> FlightSqlServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        FlightSqlServiceClient::new(channel)
    }

    /// A client logged in as `user` with `password`.
    pub async fn login(&self, user: &str, password: &str) -> FlightSqlServiceClient<Channel> {
        let mut c = self.client().await;
        c.handshake(user, password).await.expect("handshake");
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Runs a Flight action and collects its result bodies, or the error text.
pub async fn action(
    c: &mut FlightSqlServiceClient<Channel>,
    kind: &str,
    body: Vec<u8>,
) -> Result<Vec<bytes::Bytes>, String> {
    let stream = c
        .do_action(arrow_flight::Action::new(kind.to_string(), body))
        .await
        .map_err(|e| e.to_string())?;
    let results: Vec<arrow_flight::Result> =
        stream.try_collect().await.map_err(|e| e.to_string())?;
    Ok(results.into_iter().map(|r| r.body).collect())
}

/// Sets the session option `scenario` (SetSessionOptions), as ADBC does.
pub async fn set_scenario(
    c: &mut FlightSqlServiceClient<Channel>,
    scenario: &str,
) -> Result<SetSessionOptionsResult, String> {
    use prost::Message;
    let request = SetSessionOptionsRequest {
        session_options: std::collections::HashMap::from([(
            "scenario".to_string(),
            SessionOptionValue {
                option_value: Some(OptionValue::StringValue(scenario.to_string())),
            },
        )]),
    };
    let results = action(c, SET_SESSION_OPTIONS, request.encode_to_vec()).await?;
    let body = results.first().cloned().unwrap_or_default();
    SetSessionOptionsResult::decode(body).map_err(|e| e.to_string())
}

/// A demo user (password `<user>-demo`) logged in, working under `scenario`.
pub async fn as_user(
    server: &TestServer,
    user: &str,
    scenario: &str,
) -> FlightSqlServiceClient<Channel> {
    let mut c = server.login(user, &format!("{user}-demo")).await;
    let result = set_scenario(&mut c, scenario).await.expect("scenario set");
    assert!(result.errors.is_empty(), "{result:?}");
    c
}

/// Fetches every endpoint of `info`.
pub async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, String> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
        out.extend(batches);
    }
    Ok(out)
}

/// Everything a client sees of a query, as text: FlightInfo, schemas, rows, or the error.
pub async fn seen(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let info = match c.execute(sql.to_string(), None).await {
        Ok(info) => info,
        Err(e) => return format!("ERROR {e}"),
    };
    // The descriptor echoes the client's own SQL (which may name a canary); all else is searched.
    let mut shown = info.clone();
    shown.flight_descriptor = None;
    let mut text = format!("{shown:?}\n");
    if let Ok(schema) = arrow::datatypes::Schema::try_from(info.clone()) {
        text.push_str(&format!("{schema:?}\n"));
    }
    match fetch(c, info).await {
        Ok(batches) => {
            if let Some(b) = batches.first() {
                text.push_str(&format!("{:?}\n", b.schema()));
            }
            text.push_str(&pretty(&batches));
        }
        Err(e) => text.push_str(&format!("ERROR {e}")),
    }
    text
}

/// Runs `sql` and returns the batches, or the error text.
pub async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    fetch(client, info).await
}

/// The batches as a pretty table (for comparisons and failure messages).
pub fn pretty(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .expect("formats")
        .to_string()
}

/// The first value of the first column, an `Int64` (a `count(*)`, say).
pub fn first_i64(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("int64")
        .value(0)
}

/// The total row count of `batches`.
/// Column `i` of every batch, cast to text (`NULL` for nulls).
pub fn column_strings(batches: &[RecordBatch], i: usize) -> Vec<String> {
    use arrow::array::AsArray;
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap();
            c.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("NULL").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Runs `sql` straight on the shared demo's Delta tables with DataFusion, no gateway: the raw
/// truth tests compare against. Tables are named as in lakegate (`market.enterprises`).
pub async fn raw_query(sql: &str) -> Vec<RecordBatch> {
    raw_query_in(&shared_demo().join("lake"), sql).await
}

/// [`raw_query`] on the demo lake at `lake` (a test's own).
pub async fn raw_query_in(lake: &Path, sql: &str) -> Vec<RecordBatch> {
    let ctx = datafusion::prelude::SessionContext::new();
    let mut sql = sql.to_string();
    for (schema, table) in [
        ("health", "visits"),
        ("market", "enterprises"),
        ("market", "penalties"),
        ("social_security", "contributions"),
        ("utilities", "building_energy"),
    ] {
        let url = url::Url::from_directory_path(lake.join(schema).join(table)).unwrap();
        let t = deltalake::open_table(url).await.unwrap();
        let provider = t.table_provider().await.unwrap();
        let name = format!("{schema}_{table}");
        ctx.register_table(name.as_str(), provider).unwrap();
        sql = sql.replace(&format!("{schema}.{table}"), &name);
    }
    ctx.sql(&sql).await.unwrap().collect().await.unwrap()
}

/// Every record of the audit trail in `dir`, in order.
pub fn audit_records(dir: &Path) -> Vec<gateway::audit::AuditRecord> {
    gateway::audit::segments(dir)
        .unwrap()
        .into_iter()
        .flat_map(|(_, p)| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}
