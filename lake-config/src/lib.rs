//! The typed configuration of lakegate: `lakegate.toml` plus environment overrides for secrets.
//!
//! This crate owns the file format of `policy-model.md` §2, its validation and its error messages.
//! It knows nothing about Delta, Cedar or Flight: other crates read the typed [`Config`].
//!
//! Paths in the file are relative to the file's folder; [`Config::load`] resolves them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod error;
pub use error::ConfigError;

/// Environment variables that override secrets in the file (so that secrets need not be written
/// into it). Names follow the AWS SDK where one exists.
pub mod env {
    /// S3 access key id.
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// S3 secret access key.
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// S3 session token (temporary credentials).
    pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// The deployment's secret key for keyed masks (`hash`).
    pub const LAKEGATE_MASK_KEY: &str = "LAKEGATE_MASK_KEY";
}

/// The whole configuration, with paths resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (for messages), if any.
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[lake]`.
    pub lake: LakeConfig,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// `[[users]]`.
    pub users: Vec<UserConfig>,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[execution]`.
    pub execution: ExecutionConfig,
    /// `[auth.jwt]`: bearer JWTs accepted beside passwords.
    pub jwt: Option<JwtConfig>,
    /// `[products]`: the data products folder (`policy-model.md` §7), if any.
    pub products: Option<ProductsConfig>,
    /// `[acceleration]`: tables served from memory, if any.
    pub acceleration: Option<AccelerationConfig>,
}

/// `[acceleration]`: tables whose current Delta version is held in memory as Arrow batches and
/// served from there (below the secure scan, as Parquet is).
#[derive(Debug, Clone)]
pub struct AccelerationConfig {
    /// `max_bytes`: the memory all held tables (batches and key indexes) may take together. A
    /// budget of its own, apart from `[execution] memory_limit_bytes`: size the pool for the
    /// rest of the machine. A table that does not fit is read from Parquet.
    pub max_bytes: u64,
    /// `tables`: `schema.table` names always held (while they fit), loaded at start.
    pub tables: Vec<String>,
    /// `hot`: also hold other tables, once read twice, most read first, within what the listed
    /// tables leave of the budget.
    pub hot: bool,
}

/// The smallest `[acceleration] max_bytes` accepted (1 MiB).
pub const MIN_ACCELERATION_BYTES: u64 = 1 << 20;

/// `[products]`: where the data products' files are.
#[derive(Debug, Clone)]
pub struct ProductsConfig {
    /// `dir`: one `<name>.toml` per product ([`products::read_products`]).
    pub dir: PathBuf,
}

/// `[auth.jwt]`: tokens a service's identity provider signs. A token is accepted as a bearer
/// token on every call and as the password of a basic login; its `sub` names the user.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `issuer`: the `iss` every token must carry.
    pub issuer: String,
    /// `audience`: the `aud` every token must carry.
    pub audience: String,
    /// `public_key` (a PEM file) or `jwks` (a JSON Web Key Set file, keys chosen by `kid`).
    pub key: JwtKey,
    /// `algorithm`: `RS256` (default), `RS384`, `RS512`, `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// `scenario_claim`: a claim whose string value is the scenario, for clients that can send
    /// neither a header nor a session option (default: none).
    pub scenario_claim: Option<String>,
}

/// Where `[auth.jwt]` finds the provider's public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// `public_key`: one PEM public key (RSA, EC or Ed25519).
    Pem(PathBuf),
    /// `jwks`: a JSON Web Key Set file as providers publish it; a token's `kid` picks its key.
    Jwks(PathBuf),
}

/// `[server]`: where and how the Flight SQL endpoint listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`: the socket address, e.g. `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// `token_ttl_secs`: how long a bearer token from the handshake stays valid (default 3600).
    pub token_ttl_secs: u64,
    /// `shutdown_grace_secs`: on SIGTERM or SIGINT, how long running calls may take to finish
    /// before they are cancelled (default 30).
    pub shutdown_grace_secs: u64,
    /// `[server.tls]`: serve TLS instead of plaintext.
    pub tls: Option<TlsConfig>,
    /// `metrics_listen`: where Prometheus scrapes `GET /metrics` (plain HTTP; default: off).
    pub metrics_listen: Option<SocketAddr>,
    /// `max_connections`: connections held at once (default 4096; at most half the process's
    /// open-file limit); more are refused at accept.
    pub max_connections: usize,
    /// `max_connections_per_client`: connections one client address may hold (default 256).
    pub max_connections_per_client: usize,
    /// `login_timeout_secs`: how long a connection may go without an authenticated call before
    /// it is closed (default 30).
    pub login_timeout_secs: u64,
}

/// `[server.tls]`: the server's certificate and key (PEM), and optionally the CA whose
/// certificates clients must present (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// `cert`: the certificate chain, PEM.
    pub cert: PathBuf,
    /// `key`: the private key, PEM.
    pub key: PathBuf,
    /// `client_ca`: the CA certificate(s) clients' certificates must chain to, PEM. Without it
    /// clients are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
}

/// `[lake]`: where the departments' Delta tables live.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// `root`: `file:///abs/path` or `s3://bucket/prefix`. Always ends with `/`.
    pub root: url::Url,
    /// `[lake.s3]`: object-store options for `s3://` roots.
    pub s3: Option<S3Config>,
    /// `[lake.tables."schema.table"]`: per-table overrides.
    pub tables: BTreeMap<String, TableOverride>,
}

/// `[lake.s3]`: options for any S3-compatible endpoint.
#[derive(Clone, Default)]
pub struct S3Config {
    /// `endpoint`, e.g. `http://127.0.0.1:3900`; absent means AWS itself.
    pub endpoint: Option<String>,
    /// `region` (default `us-east-1`).
    pub region: String,
    /// `allow_http`: permit a plain-HTTP endpoint (loopback test servers).
    pub allow_http: bool,
    /// `virtual_hosted_style`: bucket in the host name instead of the path (default false, which
    /// is what most S3-compatible servers want).
    pub virtual_hosted_style: bool,
    /// `access_key_id`, overridden by `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `secret_access_key`, overridden by `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `session_token`, overridden by `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, even in debug logs.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl S3Config {
    /// The options in the key names that both `object_store` and `deltalake` understand.
    pub fn storage_options(&self) -> BTreeMap<String, String> {
        let mut o = BTreeMap::new();
        if let Some(e) = &self.endpoint {
            o.insert("aws_endpoint".into(), e.clone());
        }
        o.insert("aws_region".into(), self.region.clone());
        o.insert("aws_allow_http".into(), self.allow_http.to_string());
        o.insert(
            "aws_virtual_hosted_style_request".into(),
            self.virtual_hosted_style.to_string(),
        );
        if let Some(k) = &self.access_key_id {
            o.insert("aws_access_key_id".into(), k.clone());
        }
        if let Some(k) = &self.secret_access_key {
            o.insert("aws_secret_access_key".into(), k.clone());
        }
        if let Some(k) = &self.session_token {
            o.insert("aws_session_token".into(), k.clone());
        }
        o
    }
}

/// `[lake.tables."schema.table"]`: overrides of what the table itself declares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOverride {
    /// `subject_key`: overrides the table property `lakegate.subject_key`.
    pub subject_key: Option<String>,
}

/// `[policy]`: the Cedar policy folder and the mask key.
#[derive(Clone)]
pub struct PolicyConfig {
    /// `dir`: holds `*.cedar`, `*.cedarschema` and `entities.json`.
    pub dir: PathBuf,
    /// `mask_key`, overridden by `LAKEGATE_MASK_KEY`: the secret of keyed masks and samples, at
    /// least [`MIN_MASK_KEY_BYTES`] long.
    pub mask_key: Option<String>,
}

impl std::fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyConfig")
            .field("dir", &self.dir)
            .field("mask_key", &self.mask_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `[[users]]`: one user who may authenticate with a password.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// `name`: becomes `Lake::User::"<name>"`.
    pub name: String,
    /// `password_hash`: an argon2id PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
    /// `default_scenario`: the scenario of this user's calls that name none.
    pub default_scenario: Option<String>,
}

/// `[audit]`: where the audit trail is kept.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `dir`: the audit folder.
    pub dir: PathBuf,
    /// `segment_bytes`: a segment file is closed and a new one begun past this size
    /// (default 64 MiB).
    pub segment_bytes: u64,
    /// `max_result_bytes`: output review's limit on the bytes one result may send (default none).
    pub max_result_bytes: Option<u64>,
    /// `anchor_interval_secs`: how often the end of the chain is anchored to the lake's object
    /// store (default 60; also on every segment rotation and on shutdown).
    pub anchor_interval_secs: u64,
    /// `min_free_bytes`: while the audit folder's disk has less free, newly allowed queries
    /// are refused (records of running ones are still written down to half of it); 0 turns the
    /// check off. Default [`DEFAULT_AUDIT_MIN_FREE_BYTES`].
    pub min_free_bytes: u64,
    /// `max_sql_bytes_per_user_minute`: statement text one user may send for planning per
    /// minute (a token bucket: a minute's worth at once, then at that rate); past it statements
    /// are refused (RESOURCE_EXHAUSTED) until it refills. 0 turns it off. Default
    /// [`DEFAULT_SQL_BYTES_PER_USER_MINUTE`].
    pub max_sql_bytes_per_user_minute: u64,
}

/// `[audit] max_sql_bytes_per_user_minute` when not set: 128 MiB, a hundred and twenty-eight
/// statements of the largest default size, or about 2 MiB/s per user into the trail.
pub const DEFAULT_SQL_BYTES_PER_USER_MINUTE: u64 = 128 << 20;

/// The shortest mask key accepted: a short key lets anyone who knows the values' format
/// recompute hashed identities by trying every candidate.
pub const MIN_MASK_KEY_BYTES: usize = 16;

/// `[audit] min_free_bytes` when not set: 256 MiB.
pub const DEFAULT_AUDIT_MIN_FREE_BYTES: u64 = 256 << 20;

/// `[execution]`: the resources one server's queries may use.
#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    /// `memory_limit_bytes`: the memory pool all running queries share; operators that can spill
    /// (sorts, aggregations, joins) go to disk beyond it and others fail with a resources error.
    /// Default (`None`): half of the machine's memory, so that one query cannot take it.
    pub memory_limit_bytes: Option<u64>,
    /// `query_memory_limit_bytes`: the most of that pool one query may hold (default: a quarter
    /// of the pool), so one query cannot starve the others; operators that can spill spill at
    /// it, others fail with a resources error naming it.
    pub query_memory_limit_bytes: Option<u64>,
    /// `spill_dir`: where spill files go (default: the system's temporary folder).
    pub spill_dir: Option<PathBuf>,
    /// `max_spill_bytes`: the most all queries together may spill (default 4 GiB); a query
    /// that would spill more fails. Keep it below the spill folder's free space: a full disk
    /// stops the audit trail, and with it every query.
    pub max_spill_bytes: u64,
    /// `sort_merge_joins`: plan equi-joins as sort-merge joins, which spill, instead of hash
    /// joins, whose build side must fit the pool. Slower; for pools smaller than a join's build
    /// side. Default: false.
    pub sort_merge_joins: bool,
    /// `parquet_pushdown`: evaluate the filters a scan receives inside the Parquet reader, row by
    /// row before the other columns are decoded (late materialization), instead of after
    /// decoding. TPC-H ran 20% slower with it (benches/HISTORY.md §1); very selective filters on
    /// wide rows are where it can pay off. Default: false, as DataFusion's own default.
    pub parquet_pushdown: bool,
    /// `max_sql_bytes`: the longest statement accepted (default 1 MiB).
    pub max_sql_bytes: usize,
    /// `max_expression_depth`: how deep expressions, subqueries and set operations may nest
    /// (default 1000); deeper statements are refused before planning.
    pub max_expression_depth: usize,
    /// `query_timeout_secs`: how long one query may run, from its start to its last batch
    /// (default 600); past it the query is cancelled and its client told so. 0: no limit.
    pub query_timeout_secs: u64,
    /// `max_concurrent_queries`: queries running at once on this server (default 64); more are
    /// refused at once with RESOURCE_EXHAUSTED, not queued.
    pub max_concurrent_queries: usize,
    /// `max_concurrent_queries_per_user`: queries one user may run at once (default 8), so that
    /// one user cannot take every slot.
    pub max_concurrent_queries_per_user: usize,
    /// `threads`: worker threads of the runtime queries execute on, apart from the one that
    /// answers clients, so a query that computes without pause never stalls logins, other
    /// queries' streams or shutdown (default: the machine's cores).
    pub threads: Option<usize>,
    /// `max_batch_bytes`: the largest batch one operator may produce and the largest value
    /// array one string or list function may build (default 128 MiB); past it the query fails
    /// with "too large" before the memory is taken. Functions that grow their input (`repeat`,
    /// `lpad`, `replace`, `range`, …) are checked on their arguments before they run.
    pub max_batch_bytes: u64,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: None,
            query_memory_limit_bytes: None,
            spill_dir: None,
            max_spill_bytes: DEFAULT_MAX_SPILL_BYTES,
            sort_merge_joins: false,
            parquet_pushdown: false,
            max_sql_bytes: DEFAULT_MAX_SQL_BYTES,
            max_expression_depth: DEFAULT_MAX_EXPRESSION_DEPTH,
            query_timeout_secs: DEFAULT_QUERY_TIMEOUT_SECS,
            max_concurrent_queries: DEFAULT_MAX_CONCURRENT_QUERIES,
            max_concurrent_queries_per_user: DEFAULT_MAX_CONCURRENT_QUERIES_PER_USER,
            threads: None,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

/// The default `execution.max_sql_bytes`.
pub const DEFAULT_MAX_SQL_BYTES: usize = 1 << 20;
/// The default `execution.max_expression_depth`.
pub const DEFAULT_MAX_EXPRESSION_DEPTH: usize = 1000;
/// The default `execution.query_timeout_secs`.
pub const DEFAULT_QUERY_TIMEOUT_SECS: u64 = 600;
/// The default `execution.max_concurrent_queries`.
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 64;
/// The default `execution.max_concurrent_queries_per_user`.
pub const DEFAULT_MAX_CONCURRENT_QUERIES_PER_USER: usize = 8;
/// The default `execution.max_batch_bytes`.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 128 << 20;
/// The default of `execution.max_spill_bytes` (4 GiB).
pub const DEFAULT_MAX_SPILL_BYTES: u64 = 4 << 30;

/// The smallest `execution.memory_limit_bytes` accepted (64 MiB).
pub const MIN_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

mod load;
pub mod products;

#[cfg(test)]
mod tests;
