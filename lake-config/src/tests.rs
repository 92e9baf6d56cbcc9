use super::*;
use std::collections::HashMap;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(
        text,
        Some(Path::new("/etc/lakegate/lakegate.toml")),
        Path::new("/etc/lakegate"),
        &|k| env.get(k).cloned(),
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, &[])
}

#[test]
fn full_contract_example_parses() {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:50051"

[lake]
root = "s3://bucket/prefix"

[lake.s3]
endpoint = "http://127.0.0.1:3900"
region = "garage"
allow_http = true

[lake.tables."health.visits"]
subject_key = "patient_id"

[policy]
dir = "policies"

[[users]]
name = "alice"
password_hash = "{HASH}"

[audit]
dir = "audit"
"#
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.lake.root.as_str(), "s3://bucket/prefix/");
    let s3 = c.lake.s3.as_ref().unwrap();
    assert_eq!(s3.region, "garage");
    assert!(s3.allow_http);
    assert_eq!(
        c.lake.tables["health.visits"].subject_key.as_deref(),
        Some("patient_id")
    );
    assert_eq!(c.policy.dir, Path::new("/etc/lakegate/policies"));
    assert_eq!(c.audit.dir, Path::new("/etc/lakegate/audit"));
    assert_eq!(c.users[0].name, "alice");
}

#[test]
fn relative_root_resolves_against_the_file_folder() {
    let c = parse("[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n").unwrap();
    assert_eq!(c.lake.root.as_str(), "file:///etc/lakegate/lake/");
    assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
    assert!(c.lake.s3.is_none());
    assert!(c.products.is_none());
    let c =
        parse("[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n[products]\ndir = \"products\"\n")
            .unwrap();
    assert_eq!(
        c.products.unwrap().dir,
        std::path::Path::new("/etc/lakegate/products")
    );
}

#[test]
fn env_overrides_secrets() {
    let text = "[lake]\nroot = \"s3://b\"\n[lake.s3]\naccess_key_id = \"file-key\"\nsecret_access_key = \"file-secret\"\n[policy]\ndir = \"p\"\nmask_key = \"file-mask-key-0123456789\"\n";
    let c = parse_with(
        text,
        &[
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("LAKEGATE_MASK_KEY", "env-mask-key-0123456789"),
        ],
    )
    .unwrap();
    let s3 = c.lake.s3.as_ref().unwrap();
    assert_eq!(s3.access_key_id.as_deref(), Some("file-key"));
    assert_eq!(s3.secret_access_key.as_deref(), Some("env-secret"));
    assert_eq!(
        c.policy.mask_key.as_deref(),
        Some("env-mask-key-0123456789")
    );
    // Secrets never show in debug output.
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("env-secret") && !dbg.contains("env-mask-key"),
        "{dbg}"
    );
    let opts = s3.storage_options();
    assert_eq!(opts["aws_secret_access_key"], "env-secret");
    assert_eq!(opts["aws_virtual_hosted_style_request"], "false");
}

#[test]
fn unknown_key_names_file_line_and_expected_keys() {
    let err = parse("[server]\nlisten_addr = \"x\"\n[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/lakegate/lakegate.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(
        err.contains("listen_addr") && err.contains("`listen`"),
        "{err}"
    );
}

#[test]
fn missing_section_is_named() {
    let err = parse("[lake]\nroot = \"l\"\n").unwrap_err().to_string();
    assert!(err.contains("policy"), "{err}");
}

#[test]
fn bad_values_name_key_and_fix() {
    let cases = [
        (
            "[server]\nlisten = \"nowhere\"\n[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\n",
            "server.listen",
        ),
        ("[lake]\nroot = \"ftp://x/y\"\n[policy]\ndir = \"p\"\n", "lake.root"),
        ("[lake]\nroot = \"s3://\"\n[policy]\ndir = \"p\"\n", "lake.root"),
        (
            "[lake]\nroot = \"l\"\n[lake.s3]\nregion = \"r\"\n[policy]\ndir = \"p\"\n",
            "lake.s3",
        ),
        (
            "[lake]\nroot = \"s3://b\"\n[lake.s3]\nendpoint = \"http://127.0.0.1:3900\"\n[policy]\ndir = \"p\"\n",
            "lake.s3.allow_http",
        ),
        (
            "[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\n[[users]]\nname = \"a\"\npassword_hash = \"plain\"\n",
            "users[0].password_hash",
        ),
        (
            "[lake]\nroot = \"l\"\n[lake.tables.visits]\nsubject_key = \"id\"\n[policy]\ndir = \"p\"\n",
            "lake.tables.\"visits\"",
        ),
        (
            "[server]\ntoken_ttl_secs = 0\n[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\n",
            "server.token_ttl_secs",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
        assert!(err.contains("/etc/lakegate/lakegate.toml"), "{err}");
    }
}

#[test]
fn duplicate_users_are_refused() {
    let text = format!(
        "[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\n[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn execution_limits_parse_and_a_tiny_pool_is_refused() {
    let c = parse(
        "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n\
         [execution]\nmemory_limit_bytes = 4294967296\nspill_dir = \"spill\"\nsort_merge_joins = true\n\
         parquet_pushdown = true\nmax_spill_bytes = 1073741824\n",
    )
    .unwrap();
    assert_eq!(c.execution.memory_limit_bytes, Some(4 << 30));
    assert_eq!(c.execution.max_spill_bytes, 1 << 30);
    assert_eq!(
        ExecutionConfig::default().max_spill_bytes,
        DEFAULT_MAX_SPILL_BYTES
    );
    assert!(c.execution.sort_merge_joins);
    assert!(c.execution.parquet_pushdown);
    assert_eq!(
        c.execution.spill_dir.as_deref(),
        Some(Path::new("/etc/lakegate/spill"))
    );
    let default = parse("[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n").unwrap();
    assert_eq!(default.execution.memory_limit_bytes, None);
    assert!(!default.execution.sort_merge_joins);
    assert!(!default.execution.parquet_pushdown);

    let err = parse(
        "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n[execution]\nmemory_limit_bytes = 1000\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("execution.memory_limit_bytes"), "{err}");
    assert!(err.contains("64 MiB"), "{err}");
}

#[test]
fn query_limits_and_grace_parse_with_defaults_and_zero_slots_are_refused() {
    let base = "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n";
    let c = parse(&format!(
        "[server]\nshutdown_grace_secs = 5\n{base}[execution]\nquery_timeout_secs = 0\n\
         max_concurrent_queries = 10\nmax_concurrent_queries_per_user = 3\n"
    ))
    .unwrap();
    assert_eq!(c.server.shutdown_grace_secs, 5);
    assert_eq!(c.execution.query_timeout_secs, 0);
    assert_eq!(c.execution.max_concurrent_queries, 10);
    assert_eq!(c.execution.max_concurrent_queries_per_user, 3);
    let d = parse(base).unwrap();
    assert_eq!(d.server.shutdown_grace_secs, 30);
    assert_eq!(d.execution.query_timeout_secs, DEFAULT_QUERY_TIMEOUT_SECS);
    assert_eq!(d.execution.max_concurrent_queries, 64);
    assert_eq!(d.execution.max_concurrent_queries_per_user, 8);
    let err = parse(&format!(
        "{base}[execution]\nmax_concurrent_queries_per_user = 0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("execution.max_concurrent_queries"), "{err}");
}

#[test]
fn auth_jwt_parses_with_defaults_and_unknown_algorithms_are_refused() {
    let base = "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n";
    let c = parse(&format!(
        "{base}[auth.jwt]\nissuer = \"https://idp\"\naudience = \"lakegate\"\npublic_key = \"idp.pem\"\n\
         [[users]]\nname = \"a\"\npassword_hash = \"$argon2id$x\"\ndefault_scenario = \"s\"\n"
    ))
    .unwrap();
    let jwt = c.jwt.unwrap();
    assert_eq!(jwt.algorithm, "RS256");
    assert_eq!(jwt.key, JwtKey::Pem("/etc/lakegate/idp.pem".into()));
    assert_eq!(jwt.scenario_claim, None);
    assert_eq!(c.users[0].default_scenario.as_deref(), Some("s"));
    assert!(parse(base).unwrap().jwt.is_none());
    for bad in ["HS256", "none", "rs256"] {
        let err = parse(&format!(
            "{base}[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\npublic_key = \"k\"\nalgorithm = \"{bad}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("auth.jwt.algorithm"), "{bad}: {err}");
    }
    let c = parse(&format!(
        "{base}[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks = \"keys.json\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.jwt.unwrap().key,
        JwtKey::Jwks("/etc/lakegate/keys.json".into())
    );
    for keys in ["", "public_key = \"k\"\njwks = \"j\"\n"] {
        let err = parse(&format!(
            "{base}[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n{keys}"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("exactly one of public_key and jwks"), "{err}");
    }
}

#[test]
fn connection_bounds_parse_with_defaults_and_zero_is_refused() {
    let base = "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n";
    let d = parse(base).unwrap();
    assert_eq!(
        (
            d.server.max_connections,
            d.server.max_connections_per_client
        ),
        (4096, 256)
    );
    assert_eq!(d.server.login_timeout_secs, 30);
    let err = parse(&format!("[server]\nlogin_timeout_secs = 0\n{base}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.login_timeout_secs"), "{err}");
    let c = parse(&format!(
        "[server]\nmax_connections = 100\nmax_connections_per_client = 7\n{base}"
    ))
    .unwrap();
    assert_eq!(
        (
            c.server.max_connections,
            c.server.max_connections_per_client
        ),
        (100, 7)
    );
    let err = parse(&format!("[server]\nmax_connections_per_client = 0\n{base}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.max_connections"), "{err}");
}

#[test]
fn empty_and_short_mask_keys_are_refused_without_showing_them() {
    let text =
        "[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\nmask_key = \"file-mask-key-0123456789\"\n";
    // Set but empty: a mistake, not a key, and not a reason to fall back silently.
    let err = parse_with(text, &[("LAKEGATE_MASK_KEY", "")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("LAKEGATE_MASK_KEY") && err.contains("set but empty"),
        "{err}"
    );
    for short in ["", "a", "fifteen-bytes!!"] {
        let text = format!("[lake]\nroot = \"l\"\n[policy]\ndir = \"p\"\nmask_key = \"{short}\"\n");
        let err = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("policy.mask_key") && err.contains("at least 16 bytes"),
            "{err}"
        );
        let err = parse_with(text.as_str(), &[("LAKEGATE_MASK_KEY", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 bytes long") && !err.contains("\"x\""),
            "{err}"
        );
    }
    assert!(parse_with(text, &[("LAKEGATE_MASK_KEY", "sixteen-bytes!!!")]).is_ok());
}

#[test]
fn acceleration_parses_and_names_what_is_wrong() {
    let base = "[lake]\nroot = \"lake\"\n[policy]\ndir = \"p\"\n";
    assert!(parse(base).unwrap().acceleration.is_none());
    let c = parse(&format!(
        "{base}[acceleration]\nmax_bytes = 1073741824\ntables = [\"health.visits\"]\n"
    ))
    .unwrap();
    let a = c.acceleration.unwrap();
    assert_eq!(
        (a.max_bytes, a.tables, a.hot),
        (1 << 30, vec!["health.visits".to_string()], false)
    );
    for (bad, key) in [
        (
            "max_bytes = 1073741824\ntables = [\"visits\"]\n",
            "acceleration.tables",
        ),
        ("max_bytes = 1073741824\n", "acceleration"),
        ("max_bytes = 1000\nhot = true\n", "acceleration.max_bytes"),
    ] {
        let err = parse(&format!("{base}[acceleration]\n{bad}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
    // max_bytes is required: no silent default budget.
    assert!(parse(&format!("{base}[acceleration]\nhot = true\n")).is_err());
}
