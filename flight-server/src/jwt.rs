//! `[auth.jwt]`: bearer JWTs an identity provider signs, checked with its public key or key set
//! (jsonwebtoken): signature with the one configured algorithm, `iss`, `aud`, `exp`, and `nbf`
//! and `iat` when present (a token not yet valid, or issued in the future, is refused); `sub`
//! names the user and a configured claim may carry the scenario (a string, or the token is
//! refused: a claim of another shape must not leave the scenario open).

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lake_config::{JwtConfig, JwtKey};

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`.
    pub user: String,
    /// The configured scenario claim, when the token carries it.
    pub scenario: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires: u64,
}

/// Clock skew tolerated between the provider and this server, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Checks tokens against one provider's key.
pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    scenario_claim: Option<String>,
}

impl JwtVerifier {
    /// Reads the configured public key or key set; errors name the setting.
    pub fn new(config: &JwtConfig) -> anyhow::Result<Self> {
        let algorithm: Algorithm = config
            .algorithm
            .parse()
            .map_err(|e| anyhow::anyhow!("[auth.jwt] algorithm {}: {e}", config.algorithm))?;
        let keys = Keys::load(&config.key, algorithm)?;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        // jsonwebtoken checks `nbf` only when asked.
        validation.validate_nbf = true;
        Ok(Self {
            keys,
            validation,
            scenario_claim: config.scenario_claim.clone(),
        })
    }

    /// Whether `token` has a JWT's shape (three base64url parts, a JSON header).
    pub fn looks_like(token: &str) -> bool {
        token.starts_with("eyJ") && token.split('.').count() == 3
    }

    /// The identity `token` proves, or why it proves none.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let key = self.keys.for_token(token)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &self.validation,
        )
        .map_err(|e| e.to_string())?;
        let claims = data.claims;
        let user = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or("the token's sub is not a user name")?
            .to_string();
        let scenario = match &self.scenario_claim {
            Some(name) => match claims.get(name) {
                None => None,
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(_) => {
                    return Err(format!(
                        "the token's {name} claim is not a scenario name (a non-empty string)"
                    ))
                }
            },
            None => None,
        };
        if let Some(iat) = claims.get("iat") {
            let now = jsonwebtoken::get_current_timestamp();
            match iat.as_u64() {
                Some(iat) if iat <= now + LEEWAY_SECS => {}
                _ => return Err("the token's iat is not a time in the past".into()),
            }
        }
        let expires = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(Identity {
            user,
            scenario,
            expires,
        })
    }
}

/// The provider's verification keys.
enum Keys {
    /// `public_key`.
    One(DecodingKey),
    /// `jwks`, by `kid`.
    Set(HashMap<String, DecodingKey>),
}

impl Keys {
    fn load(key: &JwtKey, algorithm: Algorithm) -> anyhow::Result<Self> {
        let read = |setting: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read [auth.jwt] {setting} {}: {e}", path.display())
            })
        };
        match key {
            JwtKey::Pem(path) => {
                let pem = read("public_key", path)?;
                let key = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| {
                    anyhow::anyhow!("[auth.jwt] public_key is not a {algorithm:?} key: {e}")
                })?;
                Ok(Self::One(key))
            }
            JwtKey::Jwks(path) => {
                let set: JwkSet = serde_json::from_slice(&read("jwks", path)?).map_err(|e| {
                    anyhow::anyhow!("[auth.jwt] jwks {} is not a JWK set: {e}", path.display())
                })?;
                let mut keys = HashMap::new();
                for jwk in &set.keys {
                    let kid = jwk.common.key_id.clone().ok_or_else(|| {
                        anyhow::anyhow!("[auth.jwt] jwks {}: a key has no kid", path.display())
                    })?;
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                        anyhow::anyhow!("[auth.jwt] jwks {}: key {kid:?}: {e}", path.display())
                    })?;
                    keys.insert(kid, key);
                }
                if keys.is_empty() {
                    anyhow::bail!("[auth.jwt] jwks {} holds no keys", path.display());
                }
                Ok(Self::Set(keys))
            }
        }
    }

    /// The key a token's header names (its `kid`, for a key set).
    fn for_token(&self, token: &str) -> Result<&DecodingKey, String> {
        match self {
            Self::One(key) => Ok(key),
            Self::Set(keys) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
                let kid = header.kid.ok_or("the token names no key (kid)")?;
                keys.get(&kid)
                    .ok_or_else(|| format!("the token's key {kid:?} is not in the key set"))
            }
        }
    }
}
