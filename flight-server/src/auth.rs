//! Users, passwords and sessions: the handshake's basic credentials are checked against the
//! configured argon2id hashes and answered with an unguessable, expiring bearer token.
//!
//! Logins are verified on a bounded pool (argon2 takes tens of MiB and milliseconds of CPU per
//! check: unbounded, a flood of handshakes takes the machine), an unknown user is checked against
//! a dummy hash with the parameters of a user the name picks (same time), and repeated failures for
//! one user name or one client address are refused for a growing while without any check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
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
    /// Too many failed logins for this user name or from this address lately.
    #[error("too many failed logins: wait {0} s before trying again")]
    Throttled(u64),
    /// A JWT that is expired, wrongly signed, for another audience or issuer, or names another
    /// user than the login.
    #[error("the token is not accepted: {0}")]
    Jwt(String),
    /// The identity provider's token names the scenario; the call asked for another.
    #[error("this login's token binds scenario {0:?}: it cannot be changed")]
    Pinned(String),
    /// Every login check is busy and none freed up in time.
    #[error("the server is busy checking other logins: try again shortly")]
    Busy,
}

/// Failed logins for one user name from one address before that pair is refused for a while.
const FREE_FAILURES: u32 = 5;
/// Failed logins for one user name from all addresses together before the name is refused
/// everywhere: high, so that someone who knows a user's name cannot lock the user out from one
/// address, yet a guesser spread over many addresses is still slowed.
const FREE_FAILURES_PER_USER: u32 = 100;
/// Failed logins from one client address before it is refused for a while: higher, since many
/// users can share an address.
const FREE_FAILURES_PER_CLIENT: u32 = 50;
/// The longest a key is refused after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// How long a login waits for a free check.
const VERIFY_WAIT: Duration = Duration::from_secs(10);
/// Password checks one client address may have waiting for a check or running at once. The
/// failure counters are read once an attempt has its place, so a burst of concurrent attempts
/// from one address is checked a few at a time and refused once its failures pass the free
/// allowance; read before, 875 of 900 concurrent attempts were checked and another address's
/// login waited 9.8 s behind them (attacker round 19 M3).
const PER_CLIENT_CHECKS: usize = 2;

/// Live sessions one user may hold; a login past it ends the user's session closest to its
/// end. (A JWT as the password opens a session without argon2: 50,000 logins in 30 s.)
pub const MAX_SESSIONS_PER_USER: usize = 256;

/// How often expired sessions are swept out: not on every login, which would scan them all.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Failed logins of one user name or one client address.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    /// How long this key is still refused, if it is: 1 s after `free` failures, doubling with
    /// each further one up to [`MAX_BACKOFF`].
    fn refused_for(&self, free: u32, now: Instant) -> Option<Duration> {
        if self.count < free {
            return None;
        }
        let backoff = Duration::from_secs(1 << (self.count - free).min(6)).min(MAX_BACKOFF);
        let until = self.last + backoff;
        (until > now).then(|| until - now)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    /// A user name tried from one address (or from an unknown one).
    UserAt(String, Option<IpAddr>),
    User(String),
    Client(IpAddr),
}

impl ThrottleKey {
    fn free_failures(&self) -> u32 {
        match self {
            ThrottleKey::UserAt(..) => FREE_FAILURES,
            ThrottleKey::User(_) => FREE_FAILURES_PER_USER,
            ThrottleKey::Client(_) => FREE_FAILURES_PER_CLIENT,
        }
    }
}

/// The token of an `authorization: Bearer <token>` header value (scheme in any case), if any.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Seconds since the Unix epoch, as JWT times are written.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One authenticated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user the token was issued to.
    pub user: String,
    /// The scenario set with SetSessionOptions, if any.
    pub scenario: Option<String>,
    /// The scenario came from the identity provider's token: the call may not name another.
    pub pinned: bool,
    expires: Instant,
}

/// The users who may log in and the live sessions.
pub struct Sessions {
    users: HashMap<String, String>,
    /// Hashes of random passwords, one per user with that user's parameters: an unknown name
    /// is checked against the one its keyed hash picks, so it takes as long as a wrong password
    /// of some user, and names cost what users' names cost (attacker round 26 L5: one dummy of
    /// the costliest parameters told users with cheaper hashes apart from unknown names).
    dummy_hashes: Dummies,
    ttl: Duration,
    live: Mutex<HashMap<String, Session>>,
    /// When expired sessions were last swept out.
    swept: Mutex<Instant>,
    /// Password checks that may run at once.
    checks: Arc<tokio::sync::Semaphore>,
    /// Checks one client address may have waiting or running at once ([`PER_CLIENT_CHECKS`]).
    per_client: Mutex<HashMap<Option<IpAddr>, Arc<tokio::sync::Semaphore>>>,
    failures: Mutex<HashMap<ThrottleKey, Failures>>,
    /// `[auth.jwt]`.
    jwt: Option<crate::jwt::JwtVerifier>,
    /// `[[users]] default_scenario`.
    default_scenarios: HashMap<String, String>,
}

impl Sessions {
    /// Sessions for `users`, each token valid for `ttl`.
    pub fn new(users: &[UserConfig], ttl: Duration) -> Self {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            dummy_hashes: Dummies::new(users),
            ttl,
            live: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
            checks: Arc::new(tokio::sync::Semaphore::new(parallel.clamp(1, 4))),
            per_client: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            jwt: None,
            default_scenarios: users
                .iter()
                .filter_map(|u| Some((u.name.clone(), u.default_scenario.clone()?)))
                .collect(),
        }
    }

    /// Also accepts JWTs `verifier` proves, as bearer tokens and as login passwords.
    pub fn with_jwt(mut self, verifier: Option<crate::jwt::JwtVerifier>) -> Self {
        self.jwt = verifier;
        self
    }

    /// The scenario of `user`'s calls that name none.
    pub fn default_scenario(&self, user: &str) -> Option<String> {
        self.default_scenarios.get(user).cloned()
    }

    /// Checks a login from `client`: throttled keys are refused without a check, checks wait
    /// for one of a few slots (and give up after a while), failures are counted.
    pub async fn authenticate(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<String, AuthError> {
        let mut keys = vec![
            ThrottleKey::UserAt(user.to_string(), client),
            ThrottleKey::User(user.to_string()),
        ];
        keys.extend(client.map(ThrottleKey::Client));
        // A place among this address's checks first; the counters are read once it is ours.
        let place = self.client_slots(client);
        let _place = tokio::time::timeout(VERIFY_WAIT, place.acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().expect("failure map poisoned");
            failures.retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW);
            if let Some(wait) = keys
                .iter()
                .filter_map(|k| {
                    failures
                        .get(k)
                        .and_then(|f| f.refused_for(k.free_failures(), now))
                })
                .max()
            {
                return Err(AuthError::Throttled(wait.as_secs().max(1)));
            }
        }
        let permit = tokio::time::timeout(VERIFY_WAIT, self.checks.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let (me, u, p) = (self.clone(), user.to_string(), password.to_string());
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.login(&u, &p)
        })
        .await
        .map_err(|_| AuthError::Busy)?;
        let mut failures = self.failures.lock().expect("failure map poisoned");
        let now = Instant::now();
        match &result {
            Ok(_) => {
                for k in &keys {
                    failures.remove(k);
                }
            }
            Err(_) => {
                for k in keys {
                    let f = failures.entry(k).or_insert(Failures {
                        count: 0,
                        last: now,
                    });
                    f.count = f.count.saturating_add(1);
                    f.last = now;
                }
            }
        }
        result
    }

    /// The checks `client` may have waiting or running; forgotten when nobody holds them.
    fn client_slots(&self, client: Option<IpAddr>) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self.per_client.lock().expect("per-client map poisoned");
        // Addresses whose slots nobody holds or waits for go (only this map holds them).
        if slots.len() > 1024 {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots
            .entry(client)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PER_CLIENT_CHECKS)))
            .clone()
    }

    /// Checks the password and opens a session. Slow on purpose (argon2id): call it off the
    /// async executor.
    pub fn login(&self, user: &str, password: &str) -> Result<String, AuthError> {
        // A JWT as the password (what BI tools that know only passwords can send).
        if let Some(jwt) = self
            .jwt
            .as_ref()
            .filter(|_| crate::jwt::JwtVerifier::looks_like(password))
        {
            let identity = jwt.verify(password).map_err(AuthError::Jwt)?;
            if identity.user != user {
                return Err(AuthError::Jwt(format!(
                    "it names user {:?}, not the user logging in",
                    identity.user
                )));
            }
            // The session ends when the token does, not a full token_ttl later.
            let left = Duration::from_secs(identity.expires.saturating_sub(unix_now()));
            return Ok(self.open(user, identity.scenario, left.min(self.ttl)));
        }
        let hash = self.users.get(user).map(String::as_str);
        let ok = verify(hash.unwrap_or(self.dummy_hashes.of(user)), password) && hash.is_some();
        if !ok {
            return Err(AuthError::BadCredentials);
        }
        Ok(self.open(user, None, self.ttl))
    }

    /// A new session of `user` and its unguessable token.
    fn open(&self, user: &str, scenario: Option<String>, ttl: Duration) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let sweep = {
            let mut swept = self.swept.lock().expect("sweep time poisoned");
            let due = now.duration_since(*swept) >= SWEEP_EVERY;
            if due {
                *swept = now;
            }
            due
        };
        let mut live = self.live.lock().expect("session map poisoned");
        if sweep {
            live.retain(|_, s| s.expires > now);
        }
        // Only a map larger than one user's share can hold a user past it.
        if live.len() >= MAX_SESSIONS_PER_USER {
            let own: Vec<(&String, Instant)> = live
                .iter()
                .filter(|(_, s)| s.user == user)
                .map(|(t, s)| (t, s.expires))
                .collect();
            if own.len() >= MAX_SESSIONS_PER_USER {
                let ending = own
                    .iter()
                    .min_by_key(|(_, expires)| *expires)
                    .map(|(t, _)| (*t).clone());
                if let Some(t) = ending {
                    live.remove(&t);
                }
            }
        }
        live.insert(
            token.clone(),
            Session {
                user: user.to_string(),
                pinned: scenario.is_some(),
                scenario,
                expires: now + ttl,
            },
        );
        token
    }

    /// The session a token names.
    pub fn resolve(&self, token: &str) -> Result<Session, AuthError> {
        let mut live = self.live.lock().expect("session map poisoned");
        match live.get(token) {
            // A bearer JWT: checked on every call, no session kept.
            None if self.jwt.is_some() && crate::jwt::JwtVerifier::looks_like(token) => {
                drop(live);
                let jwt = self.jwt.as_ref().expect("checked");
                let identity = jwt.verify(token).map_err(AuthError::Jwt)?;
                Ok(Session {
                    user: identity.user,
                    pinned: identity.scenario.is_some(),
                    scenario: identity.scenario,
                    expires: Instant::now() + Duration::from_secs(1),
                })
            }
            None => Err(AuthError::BadToken),
            Some(s) if s.expires <= Instant::now() => {
                live.remove(token);
                Err(AuthError::Expired)
            }
            Some(s) => Ok(s.clone()),
        }
    }

    /// Sessions whose token has not expired.
    pub fn active(&self) -> usize {
        let now = Instant::now();
        let live = self.live.lock().expect("session map poisoned");
        live.values().filter(|s| s.expires > now).count()
    }

    /// Sets or clears the scenario of a live session.
    pub fn set_scenario(&self, token: &str, scenario: Option<String>) -> Result<(), AuthError> {
        let mut live = self.live.lock().expect("session map poisoned");
        let Some(s) = live.get_mut(token) else {
            if self.jwt.is_some() && crate::jwt::JwtVerifier::looks_like(token) {
                return Err(AuthError::Jwt(
                    "a bearer token keeps no session options: name the scenario in its claim or \
                     in the x-lakegate-scenario header"
                        .into(),
                ));
            }
            return Err(AuthError::BadToken);
        };
        if s.pinned && scenario != s.scenario {
            return Err(AuthError::Pinned(s.scenario.clone().unwrap_or_default()));
        }
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

/// Dummy hashes for unknown user names (see `Sessions::dummy_hashes`).
struct Dummies {
    /// One per user, in name order, with that user's parameters (default ones without users).
    hashes: Vec<String>,
    /// Keys the choice, so which cost a name gets cannot be computed: the digest of every
    /// configured hash (salted, so secret), the same across restarts of the same
    /// configuration — a choice keyed per process flipped unknown names between costs at each
    /// restart while real names never flip (attacker round 28 F7).
    pick: [u8; 32],
}

impl Dummies {
    fn new(users: &[UserConfig]) -> Self {
        let mut sorted: Vec<&UserConfig> = users.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut made: Vec<(Params, String)> = Vec::new();
        let mut hashes = Vec::with_capacity(sorted.len().max(1));
        for u in sorted {
            let params = PasswordHash::new(&u.password_hash)
                .ok()
                .and_then(|h| Params::try_from(&h).ok())
                .unwrap_or_default();
            let hash = match made.iter().find(|(p, _)| *p == params) {
                Some((_, h)) => h.clone(),
                None => {
                    let h = dummy_with(params.clone());
                    made.push((params, h.clone()));
                    h
                }
            };
            hashes.push(hash);
        }
        if hashes.is_empty() {
            hashes.push(dummy_with(Params::default()));
        }
        use sha2::Digest;
        let mut key = sha2::Sha256::new();
        for u in users {
            key.update(u.password_hash.as_bytes());
            key.update([0u8]);
        }
        Self {
            hashes,
            pick: key.finalize().into(),
        }
    }

    /// The dummy an unknown `name` is checked against (always the same for a name).
    fn of(&self, name: &str) -> &str {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(self.pick)
            .chain_update(name.as_bytes())
            .finalize();
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        &self.hashes[(n % self.hashes.len() as u64) as usize]
    }
}

/// A hash of a random password with `params`.
fn dummy_with(params: Params) -> String {
    hash_with(
        &URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
    )
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
    hash_with(password, Argon2::default())
}

fn hash_with(password: &str, argon: Argon2<'_>) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    argon
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with valid parameters cannot fail")
        .to_string()
}

/// `user:password` from the value of an `authorization: Basic …` header: standard base64,
/// padded or not (the ADBC driver sends it unpadded), a trailing newline tolerated.
pub fn basic_credentials(encoded: &str) -> Option<(String, String)> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl: Duration) -> Sessions {
        Sessions::new(
            &[UserConfig {
                name: "alice".into(),
                default_scenario: None,
                password_hash: hash_password("secret"),
            }],
            ttl,
        )
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_sessions_and_the_closest_to_its_end_goes() {
        let s = sessions(Duration::from_secs(60));
        let first = s.open("alice", None, Duration::from_secs(10));
        let mut tokens = Vec::new();
        for _ in 0..MAX_SESSIONS_PER_USER + 10 {
            tokens.push(s.open("alice", None, Duration::from_secs(60)));
        }
        let bob = s.open("bob", None, Duration::from_secs(60));
        assert_eq!(s.resolve(&first), Err(AuthError::BadToken));
        assert_eq!(s.active(), MAX_SESSIONS_PER_USER + 1);
        assert!(s.resolve(tokens.last().unwrap()).is_ok());
        assert_eq!(s.resolve(&bob).unwrap().user, "bob");
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
    fn basic_credentials_padded_unpadded_and_with_a_newline() {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        for text in [
            "a:b",
            "ab:cd",
            "abc:def",
            "insurer:insurer-demo",
            "u:p:with:colons",
        ] {
            let (u, p) = text.split_once(':').unwrap();
            let want = Some((u.to_string(), p.to_string()));
            assert_eq!(basic_credentials(&STANDARD.encode(text)), want, "{text}");
            assert_eq!(
                basic_credentials(&STANDARD_NO_PAD.encode(text)),
                want,
                "{text}"
            );
            let nl = format!("{text}\n");
            assert_eq!(basic_credentials(&STANDARD.encode(&nl)), want, "{text}");
            assert_eq!(
                basic_credentials(&format!("{}\n", STANDARD.encode(text))),
                want
            );
        }
        assert_eq!(basic_credentials("not base64!"), None);
        assert_eq!(basic_credentials(&STANDARD.encode("no-colon")), None);
    }

    #[test]
    fn the_dummy_hash_has_the_users_parameters() {
        let strong = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(32 * 1024, 3, 1, None).unwrap(),
        );
        let users = [UserConfig {
            name: "alice".into(),
            default_scenario: None,
            password_hash: hash_with("secret", strong),
        }];
        let s = Sessions::new(&users, Duration::from_secs(60));
        let dummy = PasswordHash::new(s.dummy_hashes.of("nobody")).unwrap();
        let p = Params::try_from(&dummy).unwrap();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (32 * 1024, 3, 1));
    }

    #[test]
    fn unknown_names_cost_what_the_users_of_mixed_parameters_cost() {
        let cheap = Params::new(8 * 1024, 1, 1, None).unwrap();
        let dear = Params::new(16 * 1024, 2, 1, None).unwrap();
        let user = |name: &str, p: &Params| UserConfig {
            name: name.into(),
            default_scenario: None,
            password_hash: hash_with(
                "secret",
                Argon2::new(Algorithm::Argon2id, Version::V0x13, p.clone()),
            ),
        };
        let users = [user("a", &cheap), user("b", &dear), user("c", &cheap)];
        let s = Sessions::new(&users, Duration::from_secs(60));
        let cost = |name: &str| {
            let h = PasswordHash::new(s.dummy_hashes.of(name)).unwrap();
            Params::try_from(&h).unwrap().m_cost()
        };
        // Each name always gets the same dummy; across names, both costs occur.
        let costs: Vec<u32> = (0..200).map(|i| cost(&format!("name{i}"))).collect();
        assert!(costs.contains(&(8 * 1024)) && costs.contains(&(16 * 1024)));
        assert_eq!(cost("name7"), cost("name7"));
        // The same after a restart with the same users (round 28 F7): a name never flips.
        let again = Sessions::new(&users, Duration::from_secs(60));
        for i in 0..50 {
            let name = format!("name{i}");
            let h = PasswordHash::new(again.dummy_hashes.of(&name)).unwrap();
            assert_eq!(
                Params::try_from(&h).unwrap().m_cost(),
                cost(&name),
                "{name}"
            );
        }
        // One dummy per distinct parameter set.
        assert_eq!(s.dummy_hashes.hashes.len(), 3);
        assert_eq!(s.dummy_hashes.hashes[0], s.dummy_hashes.hashes[2]);
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_per_user_and_address() {
        let s = Arc::new(sessions(Duration::from_secs(60)));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                s.authenticate("alice", "wrong", Some(ip)).await,
                Err(AuthError::BadCredentials)
            );
        }
        // Now that user name is refused from that address without a check, even with the
        // right password; from elsewhere the user still logs in (someone who knows the name
        // cannot lock its user out), and another user from the same address is not slowed.
        assert!(matches!(
            s.authenticate("alice", "secret", Some(ip)).await,
            Err(AuthError::Throttled(_))
        ));
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(s.authenticate("alice", "secret", Some(other)).await.is_ok());
        assert_eq!(
            s.authenticate("bob", "x", Some(ip)).await,
            Err(AuthError::BadCredentials)
        );
        // An address is refused after many failures, for any user.
        for i in 0..FREE_FAILURES_PER_CLIENT {
            let _ = s.authenticate(&format!("u{i}"), "x", Some(other)).await;
        }
        assert!(matches!(
            s.authenticate("carol", "x", Some(other)).await,
            Err(AuthError::Throttled(_))
        ));
        assert_eq!(
            s.authenticate("carol", "x", Some(ip)).await,
            Err(AuthError::BadCredentials)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_from_one_address_is_checked_a_few_at_a_time_and_others_log_in() {
        // Round 19 M3: all concurrent attempts passed the counters before any failed.
        let s = Arc::new(sessions(Duration::from_secs(60)));
        let burst: IpAddr = "127.0.0.11".parse().unwrap();
        let attempts: Vec<_> = (0..150)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(
                    async move { s.authenticate(&format!("u{i}"), "x", Some(burst)).await },
                )
            })
            .collect();
        // Another address logs in while the burst is checked.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let other: IpAddr = "127.0.0.12".parse().unwrap();
        assert!(s.authenticate("alice", "secret", Some(other)).await.is_ok());
        let mut checked = 0;
        for a in attempts {
            match a.await.unwrap() {
                Err(AuthError::BadCredentials) => checked += 1,
                Err(AuthError::Throttled(_)) | Err(AuthError::Busy) => {}
                other => panic!("{other:?}"),
            }
        }
        // The address's free failures, and the two checks (PER_CLIENT_CHECKS) already in
        // place when they ran out.
        let most = FREE_FAILURES_PER_CLIENT as usize + 2;
        assert!(checked <= most, "{checked} attempts were checked");
    }

    #[tokio::test]
    async fn a_name_guessed_from_many_addresses_is_refused_everywhere() {
        let s = Arc::new(sessions(Duration::from_secs(60)));
        for i in 0..FREE_FAILURES_PER_USER {
            let from: IpAddr = format!("127.1.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .unwrap();
            assert_eq!(
                s.authenticate("alice", "wrong", Some(from)).await,
                Err(AuthError::BadCredentials)
            );
        }
        let fresh: IpAddr = "127.2.0.1".parse().unwrap();
        assert!(matches!(
            s.authenticate("alice", "secret", Some(fresh)).await,
            Err(AuthError::Throttled(_))
        ));
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
