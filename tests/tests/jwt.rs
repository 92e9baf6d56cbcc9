//! `[auth.jwt]`: a bearer JWT on every call (its `sub` the user, a claim the scenario), a JWT as
//! the password of a basic login, and refusals of expired, wrongly signed and wrong-audience
//! tokens; a user's `default_scenario`.

use arrow_flight::sql::client::FlightSqlServiceClient;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use lake_config::{Config, JwtConfig, JwtKey};
use lakegate_tests::{first_i64, query, shared_demo, TestServer};

const SQL: &str = "SELECT count(*) FROM market.enterprises";

struct Provider {
    key: EncodingKey,
}

impl Provider {
    fn token(&self, sub: &str, aud: &str, exp_from_now: i64) -> String {
        self.token_for(Header::new(Algorithm::ES256), sub, aud, exp_from_now)
    }

    fn token_with(&self, header: Header, sub: &str) -> String {
        self.token_for(header, sub, "lakegate", 300)
    }

    fn token_for(&self, header: Header, sub: &str, aud: &str, exp_from_now: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "iss": "https://idp.example", "aud": aud, "sub": sub,
            "exp": now + exp_from_now, "scenario": "bank-credit",
        });
        encode(&header, &claims, &self.key).unwrap()
    }
}

fn provider() -> (Provider, String) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (Provider { key }, pair.public_key_pem())
}

async fn jwt_server() -> (TestServer, Provider, Provider, String) {
    let (idp, public) = provider();
    let (other, _) = provider();
    let dir = lakegate_tests::scratch_dir("lakegate-");
    std::fs::write(dir.join("idp.pem"), &public).unwrap();
    let mut config = Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    config.jwt = Some(JwtConfig {
        issuer: "https://idp.example".into(),
        audience: "lakegate".into(),
        key: JwtKey::Pem(dir.join("idp.pem")),
        algorithm: "ES256".into(),
        scenario_claim: Some("scenario".into()),
    });
    for u in &mut config.users {
        if u.name == "banker" {
            u.default_scenario = Some("bank-credit".into());
        }
    }
    (TestServer::start_with(&config).await, idp, other, public)
}

async fn bearer(
    server: &TestServer,
    token: String,
) -> FlightSqlServiceClient<tonic::transport::Channel> {
    let mut c = server.client().await;
    c.set_token(token);
    c
}

#[tokio::test]
async fn bearer_jwts_name_the_user_and_the_scenario_and_bad_ones_are_refused() {
    let (server, idp, other, _) = jwt_server().await;
    let mut c = bearer(&server, idp.token("banker", "lakegate", 300)).await;
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);

    for (token, why) in [
        (idp.token("banker", "lakegate", -3600), "ExpiredSignature"),
        (idp.token("banker", "someone-else", 300), "InvalidAudience"),
        (other.token("banker", "lakegate", 300), "InvalidSignature"),
    ] {
        let mut c = bearer(&server, token).await;
        let err = query(&mut c, SQL).await.unwrap_err();
        assert!(
            err.contains("the token is not accepted") && err.contains(why),
            "{err}"
        );
    }
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_refused_and_the_server_keeps_serving() {
    let (server, idp, _, public) = jwt_server().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: Option<u64>| {
        let mut c = serde_json::json!({
            "iss": "https://idp.example", "aud": "lakegate", "sub": "banker",
        });
        if let Some(exp) = exp {
            c["exp"] = exp.into();
        }
        c
    };
    // Algorithm confusion: HS256 keyed with the provider's public key.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims(Some(now + 300)),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    // No expiry at all.
    let no_exp = encode(&Header::new(Algorithm::ES256), &claims(None), &idp.key).unwrap();
    // alg "none": the header says unsigned, the signature is empty.
    let none = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b.encode(claims(Some(now + 300)).to_string())
        )
    };
    let huge_sub = idp.token(&"x".repeat(4000), "lakegate", 300);
    for token in [
        hs,
        no_exp,
        none,
        "eyJ.eyJ.x".to_string(),
        format!("eyJ{}.a.b", "A".repeat(6000)),
    ] {
        let mut c = bearer(&server, token.clone()).await;
        let err = query(&mut c, SQL).await.unwrap_err();
        assert!(
            err.contains("not accepted") || err.contains("not valid"),
            "{token}: {err}"
        );
    }
    // A valid token of a user the lake does not know runs nothing.
    let mut c = bearer(&server, huge_sub).await;
    assert!(query(&mut c, SQL).await.is_err());
    let mut c = bearer(&server, idp.token("banker", "lakegate", 300)).await;
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
}

#[tokio::test]
async fn a_scenario_the_token_names_cannot_be_swapped_for_another() {
    let (server, idp, _, _) = jwt_server().await;
    let mut c = bearer(&server, idp.token("banker", "lakegate", 300)).await;
    c.set_header("x-lakegate-scenario", "insurance-claims");
    let err = query(&mut c, SQL).await.unwrap_err();
    assert!(
        err.contains("binds scenario") && err.contains("bank-credit"),
        "{err}"
    );
    // Naming the same scenario is fine.
    c.set_header("x-lakegate-scenario", "bank-credit");
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
}

#[tokio::test]
async fn a_jwt_works_as_the_password_of_its_own_user_and_users_have_default_scenarios() {
    let (server, idp, _, _) = jwt_server().await;
    let mut c = server.client().await;
    c.handshake("banker", &idp.token("banker", "lakegate", 300))
        .await
        .unwrap();
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
    // Another user's token is not this user's password.
    let mut c = server.client().await;
    let err = c
        .handshake("officer", &idp.token("banker", "lakegate", 300))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the user logging in"), "{err}");
    // A session opened with a token ends when the token does.
    let mut c = server.client().await;
    c.handshake("banker", &idp.token("banker", "lakegate", 2))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(query(&mut c, SQL).await.is_err());
    // A password login with no scenario set runs under the user's default scenario.
    let mut c = server.login("banker", "banker-demo").await;
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
}

#[tokio::test]
async fn a_jwk_set_picks_the_key_by_kid() {
    use base64::Engine;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pair = rcgen::KeyPair::generate().unwrap();
    // rcgen's raw P-256 public key is the uncompressed point 04 || x || y.
    let raw = pair.public_key_raw();
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
        "x": b.encode(&raw[1..33]), "y": b.encode(&raw[33..65]),
    }]});
    let dir = lakegate_tests::scratch_dir("lakegate-");
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let mut config = Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    config.jwt = Some(JwtConfig {
        issuer: "https://idp.example".into(),
        audience: "lakegate".into(),
        key: JwtKey::Jwks(dir.join("jwks.json")),
        algorithm: "ES256".into(),
        scenario_claim: Some("scenario".into()),
    });
    let server = TestServer::start_with(&config).await;
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let with_kid = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        let provider = Provider { key: key.clone() };
        provider.token_with(header, "banker")
    };
    let mut c = bearer(&server, with_kid(Some("k1"))).await;
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
    for (token, why) in [
        (with_kid(Some("k2")), "not in the key set"),
        (with_kid(None), "names no key"),
    ] {
        let mut c = bearer(&server, token).await;
        let err = query(&mut c, SQL).await.unwrap_err();
        assert!(err.contains(why), "{err}");
    }
}

#[tokio::test]
async fn tokens_not_yet_valid_or_with_a_scenario_of_another_shape_are_refused() {
    // Attacker round 10: `nbf` was not checked, and a list or object in the scenario claim
    // left the scenario to the caller's header.
    let (server, idp, _, _) = jwt_server().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = |extra: serde_json::Value| {
        let mut claims = serde_json::json!({
            "iss": "https://idp.example", "aud": "lakegate", "sub": "banker",
            "exp": now + 300, "scenario": "bank-credit",
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        encode(&Header::new(Algorithm::ES256), &claims, &idp.key).unwrap()
    };
    for (token, why) in [
        (
            signed(serde_json::json!({"nbf": now + 86_400})),
            "ImmatureSignature",
        ),
        (signed(serde_json::json!({"iat": now + 86_400})), "iat"),
        (
            signed(serde_json::json!({"scenario": ["bank-credit"]})),
            "not a scenario name",
        ),
        (
            signed(serde_json::json!({"scenario": {"id": "bank-credit"}})),
            "not a scenario name",
        ),
        (
            signed(serde_json::json!({"scenario": ""})),
            "not a scenario name",
        ),
    ] {
        // As a bearer token, with a header naming another scenario.
        let mut c = bearer(&server, token.clone()).await;
        c.set_header("x-lakegate-scenario", "bank-credit");
        let err = query(&mut c, SQL).await.unwrap_err();
        assert!(err.contains(why), "{token}: {err}");
        // And as a login's password.
        let mut c = server.client().await;
        let err = c.handshake("banker", &token).await.unwrap_err().to_string();
        assert!(!err.is_empty(), "{token}");
    }
    // Valid shapes still pass: nbf and iat in the past.
    let ok = signed(serde_json::json!({"nbf": now - 10, "iat": now - 10}));
    let mut c = bearer(&server, ok).await;
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
}
