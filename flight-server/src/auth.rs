//! Users, passwords and sessions: the handshake's basic credentials are checked against the
//! configured argon2id hashes and answered with an unguessable, expiring bearer token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use lake_config::UserConfig;

/// Why a caller was not let in. The text never says which of user or password was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong user name or password.
    #[error("invalid user name or password")]
    BadCredentials,
    /// No `authorization: Bearer` header.
    #[error("no bearer token: authenticate with the Flight handshake (basic credentials) first")]
    NoToken,
    /// The token is unknown, forged or closed.
    #[error("invalid bearer token: authenticate again")]
    BadToken,
    /// The token's time is up.
    #[error("the bearer token has expired: authenticate again")]
    Expired,
}

/// One authenticated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user the token was issued to.
    pub user: String,
    /// The scenario set with SetSessionOptions, if any.
    pub scenario: Option<String>,
    expires: Instant,
}

/// The users who may log in and the live sessions.
pub struct Sessions {
    users: HashMap<String, String>,
    /// The hash of a random password, checked when the user does not exist, so that an unknown
    /// user takes as long as a wrong password.
    dummy_hash: String,
    ttl: Duration,
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Sessions for `users`, each token valid for `ttl`.
    pub fn new(users: &[UserConfig], ttl: Duration) -> Self {
        Self {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            dummy_hash: hash_password(&URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())),
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the password and opens a session. Slow on purpose (argon2id): call it off the
    /// async executor.
    pub fn login(&self, user: &str, password: &str) -> Result<String, AuthError> {
        let hash = self.users.get(user).map(String::as_str);
        let ok = verify(hash.unwrap_or(&self.dummy_hash), password) && hash.is_some();
        if !ok {
            return Err(AuthError::BadCredentials);
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut live = self.live.lock().expect("session map poisoned");
        live.retain(|_, s| s.expires > now);
        live.insert(
            token.clone(),
            Session {
                user: user.to_string(),
                scenario: None,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// The session a token names.
    pub fn resolve(&self, token: &str) -> Result<Session, AuthError> {
        let mut live = self.live.lock().expect("session map poisoned");
        match live.get(token) {
            None => Err(AuthError::BadToken),
            Some(s) if s.expires <= Instant::now() => {
                live.remove(token);
                Err(AuthError::Expired)
            }
            Some(s) => Ok(s.clone()),
        }
    }

    /// Sets or clears the scenario of a live session.
    pub fn set_scenario(&self, token: &str, scenario: Option<String>) -> Result<(), AuthError> {
        let mut live = self.live.lock().expect("session map poisoned");
        let s = live.get_mut(token).ok_or(AuthError::BadToken)?;
        s.scenario = scenario;
        Ok(())
    }

    /// Ends a session: its token stops working.
    pub fn close(&self, token: &str) {
        self.live
            .lock()
            .expect("session map poisoned")
            .remove(token);
    }
}

fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// An argon2id PHC string for `password`, with a random salt (for `lakegate hash-password` and
/// the demo).
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl: Duration) -> Sessions {
        Sessions::new(
            &[UserConfig {
                name: "alice".into(),
                password_hash: hash_password("secret"),
            }],
            ttl,
        )
    }

    #[test]
    fn login_issues_unguessable_tokens_bound_to_the_user() {
        let s = sessions(Duration::from_secs(60));
        let t1 = s.login("alice", "secret").unwrap();
        let t2 = s.login("alice", "secret").unwrap();
        assert_ne!(t1, t2);
        assert!(t1.len() >= 43);
        assert_eq!(s.resolve(&t1).unwrap().user, "alice");
        assert_eq!(s.login("alice", "wrong"), Err(AuthError::BadCredentials));
        assert_eq!(s.login("bob", "secret"), Err(AuthError::BadCredentials));
        assert_eq!(s.resolve("forged"), Err(AuthError::BadToken));
        s.close(&t1);
        assert_eq!(s.resolve(&t1), Err(AuthError::BadToken));
        assert!(s.resolve(&t2).is_ok());
    }

    #[test]
    fn tokens_expire() {
        let s = sessions(Duration::from_millis(1));
        let t = s.login("alice", "secret").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.resolve(&t), Err(AuthError::Expired));
        assert_eq!(s.resolve(&t), Err(AuthError::BadToken));
    }

    #[test]
    fn scenario_is_per_session() {
        let s = sessions(Duration::from_secs(60));
        let t = s.login("alice", "secret").unwrap();
        s.set_scenario(&t, Some("credit".into())).unwrap();
        assert_eq!(s.resolve(&t).unwrap().scenario.as_deref(), Some("credit"));
        assert_eq!(s.set_scenario("nope", None), Err(AuthError::BadToken));
    }
}
