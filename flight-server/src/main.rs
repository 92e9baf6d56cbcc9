//! `lakegate`: serve a lake over Arrow Flight SQL, build the demo, manage policies.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use flight_server::demo::{connection_help, DemoLake};
use lake_config::Config;

#[derive(Parser)]
#[command(
    name = "lakegate",
    version,
    about = "A policy-enforcing Flight SQL gateway over a Delta lake"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the lake named by a configuration file.
    Serve {
        /// The configuration file (lakegate.toml).
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of the configured [server] listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Build a demo lake with users, scenarios and policies (or reuse it), then serve it.
    Demo {
        /// The demo folder.
        #[arg(long, default_value = "demo-lake")]
        dir: PathBuf,
        /// Listen here instead of 127.0.0.1:50051.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Rows of the largest tables when the lake is built.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Build the demo folder and exit without serving.
        #[arg(long)]
        build_only: bool,
        /// Serve TLS with certificates generated into `<dir>/tls` (a demo CA; `[server.tls]`
        /// is added to the demo's configuration).
        #[arg(long)]
        tls: bool,
    },
    /// Policy files: check them, or print the composed Cedar schema.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Data products (`[products] dir`): list them, or check that each loads.
    Product {
        #[command(subcommand)]
        command: ProductCommand,
    },
    /// Show the decisions for one query: per table and column the treatment and the determining
    /// policies, the row predicate, the secure views and the query as planned.
    Explain {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The user to decide for.
        #[arg(long)]
        user: String,
        /// The scenario the user works under.
        #[arg(long)]
        scenario: String,
        /// The SQL.
        sql: String,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Usage per day, user and scenario, from the verified audit trail: a monthly bill.
    Usage {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Only this scenario.
        #[arg(long)]
        scenario: Option<String>,
        /// Only this month (YYYY-MM).
        #[arg(long)]
        month: Option<String>,
    },
    /// Print an argon2id hash for a [[users]] password_hash (reads the password from stdin).
    HashPassword,
    /// Tables held in memory (`[acceleration]`).
    Accel {
        #[command(subcommand)]
        command: AccelCommand,
    },
}

#[derive(Subcommand)]
enum AccelCommand {
    /// Load the newest version of every listed table as a server would, and print what each
    /// takes (rows, bytes held, load time, index) against `max_bytes`: a sizing check. A
    /// running server's state is in its metrics (`lakegate_accel_*`).
    Status {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of every segment; exits non-zero and names the first bad record.
    Verify {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProductCommand {
    /// List the data products with their parameters, output and approving scenarios.
    List {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Load every product as the server does (each planned with its own grants under every
    /// scenario that approves it); a product that does not load is named with the reason.
    Check {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Call a product as a user under a scenario, recorded and metered on the audit trail as
    /// a client's call is (so not beside a server that holds the audit folder).
    Call {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The user who calls.
        #[arg(long)]
        user: String,
        /// The scenario the user works under.
        #[arg(long)]
        scenario: String,
        /// The product.
        name: String,
        /// Its arguments, in the order of its [params].
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse and validate the policy folder against the schema composed with the lake's tables.
    Check {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the composed Cedar schema (generated lake part, then the admin's files).
    Schema {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEGATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,lakegate=info,flight_server=info,gateway=info,catalog=info,policy=info",
        )
    });
    // Colours only for a person at a terminal, not in files or journals.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn load(config: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(config)?)
}

async fn load_policies(config: &Config) -> anyhow::Result<policy::PolicySet> {
    let lake = catalog::Lake::open(&config.lake).await?;
    let mut description = gateway::describe_lake(&lake).await?;
    // The data products are entities too (`Lake::Product`).
    if let Some(products) = &config.products {
        description.products = lake_config::products::read_products(&products.dir)?
            .into_iter()
            .map(|p| p.name)
            .collect();
    }
    Ok(policy::PolicySet::load(&config.policy.dir, &description)?)
}

/// `lakegate product list` (`check` false) or `check`.
async fn products_report(config: &std::path::Path, check: bool) -> anyhow::Result<()> {
    let mut config = load(config)?;
    // Listing and checking plan but run nothing: no audit trail, so they work beside a
    // server that holds the folder.
    let scratch = std::env::temp_dir().join(format!("lakegate-products-{}", uuid::Uuid::new_v4()));
    config.audit.dir = scratch.clone();
    let opened = gateway::Gateway::open(&config).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let products = opened?.product_summaries();
    if check {
        let approved = products.iter().filter(|p| !p.scenarios.is_empty()).count();
        println!(
            "ok: {approved} data product(s) plan with their own grants under every scenario \
             that approves them"
        );
        for p in products.iter().filter(|p| p.scenarios.is_empty()) {
            println!(
                "warning: no scenario approves {} (Scenario.products): no one can call it",
                p.name
            );
        }
        return Ok(());
    }
    for p in &products {
        println!("{}({})", p.name, p.parameters);
        if !p.description.is_empty() {
            println!("  {}", p.description);
        }
        if !p.output.is_empty() {
            println!(
                "  returns: {} (at most {} rows per call)",
                p.output, p.max_rows
            );
            println!("  version: {}", p.version);
        }
        let by = if p.scenarios.is_empty() {
            "no scenario".to_string()
        } else {
            p.scenarios.join(", ")
        };
        println!("  approved by: {by}");
    }
    Ok(())
}

/// mimalloc: see [`flight_server::allocator`].
#[global_allocator]
static ALLOC: flight_server::allocator::MiMalloc = flight_server::allocator::MiMalloc;

/// Stack of every runtime thread. Statements are bounded in depth before planning
/// (`[execution] max_expression_depth`) and DataFusion grows its own stack where it recurses;
/// this is headroom for what recurses beside them (expression evaluation, drops of plans).
const THREAD_STACK: usize = 16 << 20;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()?;
    let result = runtime.block_on(run());
    // Dropping a runtime waits for every blocking task (a password check, a file write) to
    // return: a stopped server must not wait on them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn run() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Serve { config, listen } => {
            let config = load(&config)?;
            flight_server::serve(&config, listen).await
        }
        Command::Demo {
            dir,
            listen,
            rows,
            build_only,
            tls,
        } => {
            let path = DemoLake::new(&dir).with_rows(rows).build().await?;
            if tls {
                flight_server::demo::enable_tls(&path)?;
            }
            if build_only {
                println!("demo configuration: {}", path.display());
                return Ok(());
            }
            let config = load(&path)?;
            let shutdown = flight_server::shutdown_signal();
            let server = flight_server::Server::bind(&config, listen).await?;
            let ca = config
                .server
                .tls
                .as_ref()
                .map(|_| dir.join("tls").join("ca.pem"));
            println!(
                "{}",
                connection_help(&server.local_addr()?.to_string(), ca.as_deref())
            );
            server.run(shutdown).await
        }
        Command::Policy { command } => match command {
            PolicyCommand::Check { config } => {
                let config = load(&config)?;
                let set = load_policies(&config).await?;
                println!(
                    "ok: {} policies validate against the composed schema (policy set {})",
                    set.policy_count(),
                    set.hash()
                );
                for w in set.warnings() {
                    println!("warning: {w}");
                }
                Ok(())
            }
            PolicyCommand::Schema { config } => {
                let config = load(&config)?;
                print!("{}", load_policies(&config).await?.schema_text());
                Ok(())
            }
        },
        Command::Product { command } => match command {
            ProductCommand::Call {
                config,
                user,
                scenario,
                name,
                args,
            } => {
                let config = load(&config)?;
                let gateway = std::sync::Arc::new(gateway::Gateway::open_serving(&config).await?);
                let who = gateway::Principal {
                    user,
                    scenario: Some(scenario),
                };
                let called = gateway.call_product(&who, &name, args).await;
                gateway.anchor_audit(true).await?;
                let batches = called?;
                println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
                Ok(())
            }
            ProductCommand::List { config } => products_report(&config, false).await,
            ProductCommand::Check { config } => products_report(&config, true).await,
        },
        Command::Explain {
            config,
            user,
            scenario,
            sql,
        } => {
            let mut config = load(&config)?;
            // Explaining decides and plans but runs nothing and records nothing: it needs no
            // audit trail, so it works beside a server that holds the folder.
            let scratch =
                std::env::temp_dir().join(format!("lakegate-explain-{}", uuid::Uuid::new_v4()));
            config.audit.dir = scratch.clone();
            let explained = async {
                let gateway = gateway::Gateway::open_serving(&config).await?;
                let who = gateway::Principal {
                    user,
                    scenario: Some(scenario),
                };
                anyhow::Ok(gateway.explain(&who, &sql).await?)
            }
            .await;
            let _ = std::fs::remove_dir_all(&scratch);
            print!("{}", explained?);
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => {
            let config = load(&config)?;
            let v = gateway::verify_audit(&config).await?;
            println!(
                "ok: {} records in {} segments verify; head {}",
                v.records, v.segments, v.head
            );
            Ok(())
        }
        Command::Accel {
            command: AccelCommand::Status { config },
        } => {
            let config = load(&config)?;
            let Some(accel) = &config.acceleration else {
                anyhow::bail!("the configuration has no [acceleration] section");
            };
            let lake = catalog::Lake::open(&config.lake)
                .await?
                .with_acceleration(accel);
            let status = lake.load_accelerated().await?;
            print!("{}", accel_report(accel.max_bytes, &status));
            Ok(())
        }
        Command::Usage {
            config,
            scenario,
            month,
        } => {
            if let Some(m) = &month {
                let valid = m.len() == 7
                    && m.as_bytes()[4] == b'-'
                    && m[..4].bytes().all(|b| b.is_ascii_digit())
                    && matches!(m[5..].parse::<u8>(), Ok(1..=12));
                anyhow::ensure!(valid, "--month {m}: expected YYYY-MM, e.g. 2026-11");
            }
            let config = load(&config)?;
            // A bill is only drawn from a trail that verifies.
            gateway::verify_audit(&config).await?;
            let rows =
                gateway::audit::usage(&config.audit.dir, scenario.as_deref(), month.as_deref())?;
            println!(
                "{:<10} {:<12} {:<24} {:>8} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}",
                "day",
                "user",
                "scenario",
                "queries",
                "refused",
                "review",
                "rows",
                "bytes",
                "wall ms",
                "scanned",
                "cpu ms"
            );
            let mut total = gateway::audit::UsageRow::default();
            for r in &rows {
                println!(
                    "{:<10} {:<12} {:<24} {:>8} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}",
                    r.day,
                    r.user,
                    r.scenario,
                    r.queries,
                    r.refused,
                    r.review_refused,
                    r.rows_out,
                    r.bytes_out,
                    r.wall_ms,
                    r.rows_scanned,
                    r.cpu_ms
                );
                total.queries += r.queries;
                total.refused += r.refused;
                total.review_refused += r.review_refused;
                total.rows_out += r.rows_out;
                total.bytes_out += r.bytes_out;
                total.wall_ms += r.wall_ms;
                total.rows_scanned += r.rows_scanned;
                total.cpu_ms += r.cpu_ms;
            }
            println!(
                "{:<48} {:>8} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>10}",
                "total",
                total.queries,
                total.refused,
                total.review_refused,
                total.rows_out,
                total.bytes_out,
                total.wall_ms,
                total.rows_scanned,
                total.cpu_ms
            );
            // Data products are billed per completed call.
            let mut per_product: std::collections::BTreeMap<&str, u64> = Default::default();
            for r in &rows {
                for (product, calls) in &r.product_calls {
                    *per_product.entry(product).or_default() += calls;
                }
            }
            if !per_product.is_empty() {
                println!(
                    "\n{:<10} {:<12} {:<24} {:<24} {:>8}",
                    "day", "user", "scenario", "data product", "calls"
                );
                for r in &rows {
                    for (product, calls) in &r.product_calls {
                        println!(
                            "{:<10} {:<12} {:<24} {:<24} {:>8}",
                            r.day, r.user, r.scenario, product, calls
                        );
                    }
                }
                for (product, calls) in per_product {
                    println!("{:<48} {:<24} {:>8}", "total", product, calls);
                }
            }
            Ok(())
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "the password is empty");
            println!("{}", flight_server::auth::hash_password(password));
            Ok(())
        }
    }
}

/// `lakegate accel status`: one line per table.
fn accel_report(max_bytes: u64, status: &[catalog::accel::TableStatus]) -> String {
    use catalog::accel::TableState;
    use std::fmt::Write;
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let held: u64 = status
        .iter()
        .map(|s| match s.state {
            TableState::Held { bytes, .. } => bytes,
            _ => 0,
        })
        .sum();
    let mut out = format!(
        "acceleration: {} of max_bytes {} held\n{:<36} {:<12} {:>8} {:>12} {:>12} {:>9}  index\n",
        mib(held),
        mib(max_bytes),
        "table",
        "state",
        "version",
        "rows",
        "bytes",
        "load ms"
    );
    for s in status {
        let line = match &s.state {
            TableState::Held {
                version,
                bytes,
                rows,
                load_time,
                indexed,
            } => format!(
                "{:<36} {:<12} {:>8} {:>12} {:>12} {:>9}  {}",
                s.table,
                "held",
                version,
                rows,
                mib(*bytes),
                load_time.as_millis(),
                indexed.as_deref().unwrap_or("-")
            ),
            TableState::OverBudget {
                version,
                needed_at_least,
            } => format!(
                "{:<36} {:<12} {:>8} {:>12} {:>12}  does not fit: read from Parquet",
                s.table,
                "over budget",
                version,
                "-",
                format!(">{}", mib(*needed_at_least))
            ),
            TableState::Failed { version, reason } => {
                format!("{:<36} {:<12} {:>8}  {reason}", s.table, "failed", version)
            }
            TableState::Loading { version } => {
                format!("{:<36} {:<12} {:>8}", s.table, "loading", version)
            }
            TableState::Cold => format!(
                "{:<36} {:<12}  (no such table, or not loaded)",
                s.table, "cold"
            ),
        };
        let _ = writeln!(out, "{line}");
    }
    out
}
