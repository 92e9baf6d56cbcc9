//! `[auth.jwt]`: bearer JWTs an identity provider signs, checked with its public key
//! (jsonwebtoken): signature, `iss`, `aud`, `exp` (and `nbf` when present); `sub` names the user
//! and a configured claim may carry the scenario.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lake_config::JwtConfig;

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

/// Checks tokens against one provider's key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    scenario_claim: Option<String>,
}

impl JwtVerifier {
    /// Reads the configured public key; errors name the setting.
    pub fn new(config: &JwtConfig) -> anyhow::Result<Self> {
        let pem = std::fs::read(&config.public_key).map_err(|e| {
            anyhow::anyhow!(
                "cannot read [auth.jwt] public_key {}: {e}",
                config.public_key.display()
            )
        })?;
        let algorithm: Algorithm = config
            .algorithm
            .parse()
            .map_err(|e| anyhow::anyhow!("[auth.jwt] algorithm {}: {e}", config.algorithm))?;
        let key = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|e| anyhow::anyhow!("[auth.jwt] public_key is not a {algorithm:?} key: {e}"))?;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = 30;
        Ok(Self {
            key,
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
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
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
            Some(name) => claims
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string),
            None => None,
        };
        let expires = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(Identity {
            user,
            scenario,
            expires,
        })
    }
}
