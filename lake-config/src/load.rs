//! Reading `lakegate.toml`: the file as written, checked and resolved into [`Config`].

use super::*;

// ---- the file as written ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    lake: RawLake,
    policy: RawPolicy,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    execution: RawExecution,
    #[serde(default)]
    auth: RawAuth,
    products: Option<RawProducts>,
    acceleration: Option<RawAcceleration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcceleration {
    max_bytes: u64,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    hot: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProducts {
    dir: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt: Option<RawJwt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    audience: String,
    public_key: Option<String>,
    jwks: Option<String>,
    algorithm: Option<String>,
    scenario_claim: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExecution {
    memory_limit_bytes: Option<u64>,
    query_memory_limit_bytes: Option<u64>,
    spill_dir: Option<String>,
    max_spill_bytes: Option<u64>,
    #[serde(default)]
    sort_merge_joins: bool,
    #[serde(default)]
    parquet_pushdown: bool,
    max_sql_bytes: Option<usize>,
    max_expression_depth: Option<usize>,
    query_timeout_secs: Option<u64>,
    max_concurrent_queries: Option<usize>,
    max_concurrent_queries_per_user: Option<usize>,
    threads: Option<usize>,
    max_batch_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    token_ttl_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    tls: Option<RawTls>,
    metrics_listen: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    login_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLake {
    root: String,
    s3: Option<RawS3>,
    #[serde(default)]
    tables: BTreeMap<String, TableOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<String>,
    region: Option<String>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default)]
    virtual_hosted_style: bool,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: String,
    mask_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    default_scenario: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    dir: Option<String>,
    segment_bytes: Option<u64>,
    max_result_bytes: Option<u64>,
    anchor_interval_secs: Option<u64>,
    min_free_bytes: Option<u64>,
    max_sql_bytes_per_user_minute: Option<u64>,
}

impl Config {
    /// Reads and validates `path`, applying environment overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        Self::parse(&text, Some(path), &base, &|k| std::env::var(k).ok())
    }

    /// Parses configuration text. `base` resolves relative paths; `env` looks up overrides.
    pub fn parse(
        text: &str,
        source: Option<&Path>,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = source
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<config>".into());
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let invalid = |key: &str, problem: String, hint: &str| ConfigError::Invalid {
            file: file.clone(),
            key: key.to_string(),
            problem,
            hint: hint.to_string(),
        };

        let listen = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("`{listen}` is not a socket address"),
                "write an IP address and port, e.g. listen = \"127.0.0.1:50051\"",
            )
        })?;
        let metrics_listen = match raw.server.metrics_listen.as_deref() {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "server.metrics_listen",
                    format!("{a:?} is not a socket address ({e})"),
                    "write an address and port, e.g. metrics_listen = \"127.0.0.1:9464\"",
                )
            })?),
        };
        let token_ttl_secs = raw.server.token_ttl_secs.unwrap_or(3600);
        if token_ttl_secs == 0 {
            return Err(invalid(
                "server.token_ttl_secs",
                "a token that expires at once cannot be used".into(),
                "write a number of seconds greater than 0, e.g. 3600",
            ));
        }

        let root = parse_root(&raw.lake.root, base).map_err(|problem| {
            invalid(
                "lake.root",
                problem,
                "write \"file:///absolute/path\", a path relative to this file, or \"s3://bucket/prefix\"",
            )
        })?;
        let is_s3 = root.scheme() == "s3";
        if raw.lake.s3.is_some() && !is_s3 {
            return Err(invalid(
                "lake.s3",
                format!("[lake.s3] is set but lake.root `{root}` is not an s3:// URI"),
                "remove [lake.s3], or point lake.root at s3://bucket/prefix",
            ));
        }
        let s3 = if is_s3 {
            let r = raw.lake.s3.unwrap_or(RawS3 {
                endpoint: None,
                region: None,
                allow_http: false,
                virtual_hosted_style: false,
                access_key_id: None,
                secret_access_key: None,
                session_token: None,
            });
            if let Some(e) = &r.endpoint {
                let u = url::Url::parse(e).map_err(|err| {
                    invalid(
                        "lake.s3.endpoint",
                        format!("`{e}` is not a URL: {err}"),
                        "write e.g. endpoint = \"http://127.0.0.1:3900\"",
                    )
                })?;
                if u.scheme() == "http" && !r.allow_http {
                    return Err(invalid(
                        "lake.s3.allow_http",
                        format!("endpoint `{e}` is plain HTTP but allow_http is false"),
                        "use an https:// endpoint, or write allow_http = true (loopback test servers only)",
                    ));
                }
            }
            Some(S3Config {
                endpoint: r.endpoint,
                region: r.region.unwrap_or_else(|| "us-east-1".into()),
                allow_http: r.allow_http,
                virtual_hosted_style: r.virtual_hosted_style,
                access_key_id: env(env::AWS_ACCESS_KEY_ID).or(r.access_key_id),
                secret_access_key: env(env::AWS_SECRET_ACCESS_KEY).or(r.secret_access_key),
                session_token: env(env::AWS_SESSION_TOKEN).or(r.session_token),
            })
        } else {
            None
        };
        for name in raw.lake.tables.keys() {
            let parts: Vec<&str> = name.split('.').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(
                    &format!("lake.tables.\"{name}\""),
                    format!("`{name}` is not a schema.table name"),
                    "write the table as [lake.tables.\"department.table\"]",
                ));
            }
        }

        if raw.policy.dir.trim().is_empty() {
            return Err(invalid(
                "policy.dir",
                "the policy folder is empty".into(),
                "write the folder holding *.cedar, *.cedarschema and entities.json, e.g. dir = \"policies\"",
            ));
        }
        // A set but empty variable is a mistake (`LAKEGATE_MASK_KEY=$KEY` with KEY unset), not a
        // key: every keyed mask and sample would be keyed with "" (attacker round 25 M1).
        let mask_key = match env(env::LAKEGATE_MASK_KEY) {
            Some(k) if k.is_empty() => {
                return Err(invalid(
                    "LAKEGATE_MASK_KEY",
                    "the environment variable is set but empty".into(),
                    "unset it to use [policy] mask_key, or give the deployment's secret (at least 16 bytes)",
                ))
            }
            Some(k) => Some(k),
            None => raw.policy.mask_key,
        };
        if let Some(k) = &mask_key {
            if k.len() < MIN_MASK_KEY_BYTES {
                return Err(invalid(
                    "policy.mask_key",
                    format!("the mask key is {} bytes long", k.len()),
                    "hashed identities and samples are only as secret as this key: use at least 16 bytes, e.g. 32 random bytes in base64",
                ));
            }
        }
        let policy = PolicyConfig {
            dir: base.join(&raw.policy.dir),
            mask_key,
        };

        let mut users = Vec::with_capacity(raw.users.len());
        for (i, u) in raw.users.into_iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty()
                || !u
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c))
            {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("`{}` is not a usable user name", u.name),
                    "use letters, digits and _ - . @ only",
                ));
            }
            if users.iter().any(|x: &UserConfig| x.name == u.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("user `{}` is listed twice", u.name),
                    "keep one [[users]] entry per name",
                ));
            }
            if !u.password_hash.starts_with("$argon2id$") {
                return Err(invalid(
                    &format!("{key}.password_hash"),
                    format!(
                        "the hash of user `{}` is not an argon2id PHC string",
                        u.name
                    ),
                    "generate one with `lakegate hash-password` and paste the `$argon2id$...` line",
                ));
            }
            users.push(UserConfig {
                name: u.name,
                password_hash: u.password_hash,
                default_scenario: u.default_scenario.filter(|s| !s.is_empty()),
            });
        }

        let segment_bytes = raw.audit.segment_bytes.unwrap_or(64 * 1024 * 1024);
        if segment_bytes < 4096 {
            return Err(invalid(
                "audit.segment_bytes",
                format!("{segment_bytes} bytes cannot hold a record"),
                "write at least 4096, e.g. segment_bytes = 67108864",
            ));
        }
        let audit = AuditConfig {
            dir: base.join(raw.audit.dir.as_deref().unwrap_or("audit")),
            segment_bytes,
            max_result_bytes: raw.audit.max_result_bytes,
            anchor_interval_secs: raw.audit.anchor_interval_secs.unwrap_or(60).max(1),
            min_free_bytes: raw
                .audit
                .min_free_bytes
                .unwrap_or(DEFAULT_AUDIT_MIN_FREE_BYTES),
            max_sql_bytes_per_user_minute: raw
                .audit
                .max_sql_bytes_per_user_minute
                .unwrap_or(DEFAULT_SQL_BYTES_PER_USER_MINUTE),
        };
        if let Some(limit) = raw.execution.memory_limit_bytes {
            if limit < MIN_MEMORY_LIMIT {
                return Err(invalid(
                    "execution.memory_limit_bytes",
                    format!("{limit} bytes cannot hold a query's working set"),
                    "write at least 67108864 (64 MiB), e.g. memory_limit_bytes = 4294967296 for 4 GiB",
                ));
            }
        }
        if let Some(limit) = raw.execution.query_memory_limit_bytes {
            if limit < MIN_MEMORY_LIMIT {
                return Err(invalid(
                    "execution.query_memory_limit_bytes",
                    format!("{limit} bytes cannot hold a query's working set"),
                    "write at least 67108864 (64 MiB)",
                ));
            }
        }
        let execution = ExecutionConfig {
            memory_limit_bytes: raw.execution.memory_limit_bytes,
            query_memory_limit_bytes: raw.execution.query_memory_limit_bytes,
            spill_dir: raw.execution.spill_dir.as_deref().map(|d| base.join(d)),
            max_spill_bytes: raw
                .execution
                .max_spill_bytes
                .unwrap_or(DEFAULT_MAX_SPILL_BYTES),
            sort_merge_joins: raw.execution.sort_merge_joins,
            parquet_pushdown: raw.execution.parquet_pushdown,
            max_sql_bytes: raw.execution.max_sql_bytes.unwrap_or(DEFAULT_MAX_SQL_BYTES),
            max_expression_depth: raw
                .execution
                .max_expression_depth
                .unwrap_or(DEFAULT_MAX_EXPRESSION_DEPTH),
            query_timeout_secs: raw
                .execution
                .query_timeout_secs
                .unwrap_or(DEFAULT_QUERY_TIMEOUT_SECS),
            max_concurrent_queries: raw
                .execution
                .max_concurrent_queries
                .unwrap_or(DEFAULT_MAX_CONCURRENT_QUERIES),
            max_concurrent_queries_per_user: raw
                .execution
                .max_concurrent_queries_per_user
                .unwrap_or(DEFAULT_MAX_CONCURRENT_QUERIES_PER_USER),
            threads: raw.execution.threads,
            max_batch_bytes: raw
                .execution
                .max_batch_bytes
                .unwrap_or(DEFAULT_MAX_BATCH_BYTES),
        };
        if execution.threads == Some(0) || execution.threads.is_some_and(|t| t > 1024) {
            return Err(invalid(
                "execution.threads",
                format!(
                    "{} threads cannot run queries",
                    execution.threads.unwrap_or(0)
                ),
                "write between 1 and 1024, or leave it out (default: the machine's cores)",
            ));
        }
        if execution.max_batch_bytes < 1 << 20 {
            return Err(invalid(
                "execution.max_batch_bytes",
                format!(
                    "{} bytes refuse ordinary batches",
                    execution.max_batch_bytes
                ),
                "write at least 1048576 (1 MiB), or leave it out (default 128 MiB)",
            ));
        }
        if execution.max_concurrent_queries == 0 || execution.max_concurrent_queries_per_user == 0 {
            return Err(invalid(
                "execution.max_concurrent_queries",
                "0 concurrent queries refuses every query".to_string(),
                "write at least 1, or leave it out (defaults: 64 in total, 8 per user)",
            ));
        }
        if execution.max_sql_bytes < 1024 || execution.max_expression_depth < 16 {
            return Err(invalid(
                "execution.max_sql_bytes",
                format!(
                    "max_sql_bytes = {} and max_expression_depth = {} refuse ordinary queries",
                    execution.max_sql_bytes, execution.max_expression_depth
                ),
                "write at least 1024 bytes and a depth of at least 16, or leave both out",
            ));
        }
        let max_connections = raw.server.max_connections.unwrap_or(4096);
        let max_connections_per_client = raw.server.max_connections_per_client.unwrap_or(256);
        let login_timeout_secs = raw.server.login_timeout_secs.unwrap_or(30);
        if login_timeout_secs == 0 {
            return Err(invalid(
                "server.login_timeout_secs",
                "0 s closes every connection before it can log in".to_string(),
                "write at least 1, or leave it out (default 30)",
            ));
        }
        if max_connections == 0 || max_connections_per_client == 0 {
            return Err(invalid(
                "server.max_connections",
                "0 connections refuses every client".to_string(),
                "write at least 1, or leave it out (defaults: 4096 in all, 256 per client address)",
            ));
        }

        let acceleration = match raw.acceleration {
            None => None,
            Some(a) => {
                for name in &a.tables {
                    let parts: Vec<&str> = name.split('.').collect();
                    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                        return Err(invalid(
                            "acceleration.tables",
                            format!("`{name}` is not a schema.table name"),
                            "write tables = [\"department.table\", ...]",
                        ));
                    }
                }
                if a.tables.is_empty() && !a.hot {
                    return Err(invalid(
                        "acceleration",
                        "names no table and is not hot".into(),
                        "write tables = [\"department.table\"], or hot = true (the most read tables that fit)",
                    ));
                }
                if a.max_bytes < MIN_ACCELERATION_BYTES {
                    return Err(invalid(
                        "acceleration.max_bytes",
                        format!("{} bytes hold no table", a.max_bytes),
                        "write at least 1 MiB (1048576), e.g. max_bytes = 4294967296 for 4 GiB",
                    ));
                }
                Some(AccelerationConfig {
                    max_bytes: a.max_bytes,
                    tables: a.tables,
                    hot: a.hot,
                })
            }
        };
        let jwt = match raw.auth.jwt {
            None => None,
            Some(j) => {
                let algorithm = j.algorithm.unwrap_or_else(|| "RS256".into());
                if !["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]
                    .contains(&algorithm.as_str())
                {
                    return Err(invalid(
                        "auth.jwt.algorithm",
                        format!("{algorithm:?} is not a supported signature algorithm"),
                        "write RS256, RS384, RS512, ES256, ES384 or EdDSA",
                    ));
                }
                let key = match (j.public_key, j.jwks) {
                    (Some(pem), None) => JwtKey::Pem(base.join(pem)),
                    (None, Some(jwks)) => JwtKey::Jwks(base.join(jwks)),
                    _ => {
                        return Err(invalid(
                            "auth.jwt",
                            "needs exactly one of public_key and jwks".to_string(),
                            "write public_key = \"idp.pem\" or jwks = \"jwks.json\"",
                        ))
                    }
                };
                Some(JwtConfig {
                    issuer: j.issuer,
                    audience: j.audience,
                    key,
                    algorithm,
                    scenario_claim: j.scenario_claim,
                })
            }
        };
        Ok(Config {
            source: source.map(Path::to_path_buf),
            server: ServerConfig {
                listen,
                token_ttl_secs,
                shutdown_grace_secs: raw.server.shutdown_grace_secs.unwrap_or(30),
                metrics_listen,
                max_connections,
                max_connections_per_client,
                login_timeout_secs,
                tls: raw.server.tls.map(|t| TlsConfig {
                    cert: base.join(t.cert),
                    key: base.join(t.key),
                    client_ca: t.client_ca.map(|c| base.join(c)),
                }),
            },
            lake: LakeConfig {
                root,
                s3,
                tables: raw.lake.tables,
            },
            policy,
            users,
            audit,
            execution,
            jwt,
            products: raw.products.map(|p| ProductsConfig {
                dir: base.join(p.dir),
            }),
            acceleration,
        })
    }
}

/// Turns `lake.root` into a URL that ends with `/`.
fn parse_root(root: &str, base: &Path) -> Result<url::Url, String> {
    let mut url = if root.contains("://") {
        url::Url::parse(root).map_err(|e| format!("`{root}` is not a URI: {e}"))?
    } else {
        let p = base.join(root);
        url::Url::from_directory_path(&p)
            .map_err(|_| format!("`{}` is not an absolute folder", p.display()))?
    };
    match url.scheme() {
        "file" => {}
        "s3" | "s3a" => {
            if url.host_str().unwrap_or("").is_empty() {
                return Err(format!("`{root}` names no bucket"));
            }
            if url.scheme() == "s3a" {
                url = url::Url::parse(&url.as_str().replacen("s3a://", "s3://", 1))
                    .map_err(|e| e.to_string())?;
            }
        }
        other => return Err(format!("the scheme `{other}` is not supported")),
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}
