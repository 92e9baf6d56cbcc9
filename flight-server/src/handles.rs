//! Statement tickets and prepared statements: what a client holds between calls. Each is bound
//! to the user and scenario that made it (another's fails exactly as an unknown one), expires,
//! goes with the session that made it (CloseSession), and is bounded per user and in all by
//! count and by the SQL it holds.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use gateway::Principal;
use tonic::Status;

/// How long an unredeemed statement ticket is kept: every client redeems it at once.
const STATEMENT_TICKET_TTL: Duration = Duration::from_secs(120);

/// What a planned statement holds per byte of its text, as the handle bounds count it
/// ([`crate::limits::Limits::max_handle_bytes`]: a 1 MiB IN list held 63 MB planned).
pub(crate) const PLAN_BYTES_PER_TEXT_BYTE: usize = 60;

/// Statement tickets and prepared statements one user may hold at once.
const MAX_HANDLES_PER_USER: usize = 256;

/// What every call naming a handle that is not the caller's (unknown, expired, another user's or
/// scenario's, or of the other kind) gets.
const UNKNOWN: &str = "unknown or expired statement handle: prepare or execute the statement again";

fn unknown() -> Status {
    Status::not_found(UNKNOWN)
}

/// What a handle holds: a planned statement waiting for its one DoGet, or a prepared statement
/// with, once parameters were put, its bound form.
pub(crate) enum HandleKind<Q> {
    Statement(Q),
    Prepared { query: Q, bound: Option<Box<Q>> },
}

struct Handle<Q> {
    /// The session that made it (a keyed digest of its token), so closing the session frees it.
    session: u64,
    user: String,
    scenario: Option<String>,
    created: Instant,
    /// The SQL text it holds planned (twice for a prepared statement: it may also hold its
    /// bound form), for the byte bounds.
    text_weight: usize,
    /// `text_weight` and what its bound values hold, copied into the plan.
    weight: usize,
    kind: HandleKind<Q>,
}

/// The handles of one server. `Q` is the planned query (generic so the store is tested alone).
pub(crate) struct Handles<Q> {
    map: Mutex<HashMap<String, Handle<Q>>>,
    /// How long a prepared statement lives: as long as a session's token.
    prepared_ttl: Duration,
    /// Bytes of SQL one user, and all users, may hold ([`crate::limits::Limits::max_handle_bytes`]).
    most: (usize, usize),
    /// Keys the digests of session tokens.
    sessions: RandomState,
}

impl<Q: Clone> Handles<Q> {
    /// A store whose prepared statements live `prepared_ttl`, holding at most `most` bytes of
    /// SQL (per user, in all).
    pub(crate) fn new(prepared_ttl: Duration, most: (usize, usize)) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            prepared_ttl,
            most,
            sessions: RandomState::new(),
        }
    }

    fn ttl_of(&self, h: &Handle<Q>) -> Duration {
        match h.kind {
            HandleKind::Statement(_) => self.prepared_ttl.min(STATEMENT_TICKET_TTL),
            HandleKind::Prepared { .. } => self.prepared_ttl,
        }
    }

    /// Keeps `kind` (planned from `sql`) for `who` and returns its new handle. Past a user's
    /// bounds the user's oldest handles go; past the bound of all users the call is refused.
    /// `footprint`: what the planned statement holds in memory (`Query::footprint`), counted
    /// as text at [`PLAN_BYTES_PER_TEXT_BYTE`] when it is more than its text: a 3 KB 120-way
    /// join held 14 MB planned, and 256 of them 4 GB (attacker round 26 H1).
    pub(crate) fn store(
        &self,
        session: &str,
        who: &Principal,
        sql: &str,
        footprint: usize,
        kind: HandleKind<Q>,
    ) -> Result<String, Status> {
        let handle = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let one = sql.len().max(footprint / PLAN_BYTES_PER_TEXT_BYTE);
        let weight = match kind {
            HandleKind::Statement(_) => one,
            HandleKind::Prepared { .. } => one.saturating_mul(2),
        };
        let (most_per_user, most) = self.most;
        let now = Instant::now();
        let mut handles = self.map.lock().expect("handle map poisoned");
        handles.retain(|_, h| now.duration_since(h.created) < self.ttl_of(h));
        let mut own: Vec<(Instant, usize, String)> = handles
            .iter()
            .filter(|(_, h)| h.user == who.user)
            .map(|(k, h)| (h.created, h.weight, k.clone()))
            .collect();
        own.sort();
        let mut held: usize = own.iter().map(|(_, w, _)| w).sum();
        let mut count = own.len();
        let mut total: usize = handles.values().map(|h| h.weight).sum();
        for (_, w, k) in &own {
            let over = count >= MAX_HANDLES_PER_USER
                || held + weight > most_per_user
                || total + weight > most;
            if !over {
                break;
            }
            handles.remove(k);
            count -= 1;
            held -= w;
            total -= w;
        }
        // Others' statements are not this caller's to evict.
        if total + weight > most {
            return Err(Status::resource_exhausted(format!(
                "the server holds as many prepared statements and statement tickets as it may \
                 ({} MiB of SQL text); try again later",
                most >> 20
            )));
        }
        handles.insert(
            handle.clone(),
            Handle {
                session: self.sessions.hash_one(session),
                user: who.user.clone(),
                scenario: who.scenario.clone(),
                created: now,
                text_weight: weight,
                weight,
                kind,
            },
        );
        Ok(handle)
    }

    /// Runs `f` on `who`'s live handle `handle`; any other fails as an unknown one.
    fn with<T>(
        &self,
        who: &Principal,
        handle: &[u8],
        f: impl FnOnce(&mut HashMap<String, Handle<Q>>, String) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let key = std::str::from_utf8(handle).unwrap_or_default().to_string();
        let mut handles = self.map.lock().expect("handle map poisoned");
        let owned = handles.get(&key).is_some_and(|h| {
            h.user == who.user && h.scenario == who.scenario && h.created.elapsed() < self.ttl_of(h)
        });
        if !owned {
            return Err(unknown());
        }
        f(&mut handles, key)
    }

    /// The statement a ticket names, taken: a ticket is redeemed once.
    pub(crate) fn take_statement(&self, who: &Principal, handle: &[u8]) -> Result<Q, Status> {
        self.with(who, handle, |handles, key| {
            // A prepared statement's handle stays where it is, as it was.
            if !matches!(handles[&key].kind, HandleKind::Statement(_)) {
                return Err(unknown());
            }
            match handles.remove(&key).map(|h| h.kind) {
                Some(HandleKind::Statement(q)) => Ok(q),
                _ => Err(unknown()),
            }
        })
    }

    /// A prepared statement as it runs: bound, if parameters were put.
    pub(crate) fn prepared(&self, who: &Principal, handle: &[u8]) -> Result<Q, Status> {
        self.with(who, handle, |handles, key| match &handles[&key].kind {
            HandleKind::Prepared { query, bound } => Ok(bound.as_deref().unwrap_or(query).clone()),
            HandleKind::Statement(_) => Err(unknown()),
        })
    }

    /// A prepared statement as it was prepared, without parameters.
    pub(crate) fn unbound(&self, who: &Principal, handle: &[u8]) -> Result<Q, Status> {
        self.with(who, handle, |handles, key| match &handles[&key].kind {
            HandleKind::Prepared { query, .. } => Ok(query.clone()),
            HandleKind::Statement(_) => Err(unknown()),
        })
    }

    /// Sets (or clears) the bound form of a prepared statement, which holds `bound_bytes` of
    /// values beyond its text: they count toward the user's bytes (the user's oldest other
    /// handles go) and everybody's (then the binding is refused).
    pub(crate) fn bind(
        &self,
        who: &Principal,
        handle: &[u8],
        bound: Option<Box<Q>>,
        bound_bytes: usize,
    ) -> Result<(), Status> {
        let (most_per_user, most) = self.most;
        self.with(who, handle, |handles, key| {
            let h = handles.get(&key).ok_or_else(unknown)?;
            if !matches!(h.kind, HandleKind::Prepared { .. }) {
                return Err(unknown());
            }
            let weight = h.text_weight.saturating_add(bound_bytes);
            let others: usize = handles
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(_, h)| h.weight)
                .sum();
            if others.saturating_add(weight) > most {
                return Err(Status::resource_exhausted(format!(
                    "the server holds as many prepared statements and bound values as it may \
                     ({} MiB); try again later",
                    most >> 20
                )));
            }
            let mut own: Vec<(Instant, usize, String)> = handles
                .iter()
                .filter(|(k, h)| h.user == who.user && **k != key)
                .map(|(k, h)| (h.created, h.weight, k.clone()))
                .collect();
            own.sort();
            let mut held: usize = own.iter().map(|(_, w, _)| w).sum();
            for (_, w, k) in &own {
                if held.saturating_add(weight) <= most_per_user {
                    break;
                }
                handles.remove(k);
                held -= w;
            }
            let h = handles.get_mut(&key).expect("checked");
            h.weight = weight;
            if let HandleKind::Prepared { bound: slot, .. } = &mut h.kind {
                *slot = bound;
            }
            Ok(())
        })
    }

    /// Forgets every handle the session with token `session` made: a closed session's
    /// statements are not kept for its token's lifetime.
    pub(crate) fn close_session(&self, session: &str) {
        let digest = self.sessions.hash_one(session);
        self.map
            .lock()
            .expect("handle map poisoned")
            .retain(|_, h| h.session != digest);
    }

    /// Forgets a prepared statement.
    pub(crate) fn close(&self, who: &Principal, handle: &[u8]) -> Result<(), Status> {
        self.with(who, handle, |handles, key| {
            handles.remove(&key);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, scenario: &str) -> Principal {
        Principal {
            user: user.into(),
            scenario: Some(scenario.into()),
        }
    }

    fn store() -> Handles<String> {
        Handles::new(Duration::from_secs(60), (100, 1_000))
    }

    #[test]
    fn a_handle_is_its_makers_only_and_a_ticket_is_redeemed_once() {
        let s = store();
        let alice = who("alice", "credit");
        let t = s
            .store(
                "s1",
                &alice,
                "q",
                0,
                HandleKind::Statement("planned".into()),
            )
            .unwrap();
        for other in [who("bob", "credit"), who("alice", "claims")] {
            let err = s.take_statement(&other, t.as_bytes()).unwrap_err();
            assert_eq!(err.message(), UNKNOWN);
        }
        // A ticket is not a prepared statement, nor the other way round.
        assert!(s.prepared(&alice, t.as_bytes()).is_err());
        assert_eq!(s.take_statement(&alice, t.as_bytes()).unwrap(), "planned");
        assert!(s.take_statement(&alice, t.as_bytes()).is_err());
        let p = s
            .store(
                "s1",
                &alice,
                "q",
                0,
                HandleKind::Prepared {
                    query: "unbound".into(),
                    bound: None,
                },
            )
            .unwrap();
        assert!(s.take_statement(&alice, p.as_bytes()).is_err());
        assert_eq!(s.prepared(&alice, p.as_bytes()).unwrap(), "unbound");
        s.bind(&alice, p.as_bytes(), Some(Box::new("bound".into())), 0)
            .unwrap();
        assert_eq!(s.prepared(&alice, p.as_bytes()).unwrap(), "bound");
        assert_eq!(s.unbound(&alice, p.as_bytes()).unwrap(), "unbound");
        assert!(s.close(&who("bob", "credit"), p.as_bytes()).is_err());
        s.close(&alice, p.as_bytes()).unwrap();
        assert!(s.prepared(&alice, p.as_bytes()).is_err());
        assert!(s.take_statement(&alice, b"\xff\xfe").is_err());
    }

    #[test]
    fn closing_a_session_frees_its_handles_only() {
        let s = store();
        let alice = who("alice", "credit");
        let mine = s
            .store("s1", &alice, "q", 0, HandleKind::Statement("1".into()))
            .unwrap();
        let other = s
            .store("s2", &alice, "q", 0, HandleKind::Statement("2".into()))
            .unwrap();
        s.close_session("s1");
        assert!(s.take_statement(&alice, mine.as_bytes()).is_err());
        assert_eq!(s.take_statement(&alice, other.as_bytes()).unwrap(), "2");
    }

    #[test]
    fn a_users_oldest_go_past_their_bytes_and_the_total_refuses() {
        let s = store();
        let alice = who("alice", "credit");
        let sql = "x".repeat(40);
        let first = s
            .store("s1", &alice, &sql, 0, HandleKind::Statement("1".into()))
            .unwrap();
        let second = s
            .store("s1", &alice, &sql, 0, HandleKind::Statement("2".into()))
            .unwrap();
        // 120 bytes would pass alice's 100: her oldest goes.
        let third = s
            .store("s1", &alice, &sql, 0, HandleKind::Statement("3".into()))
            .unwrap();
        assert!(s.take_statement(&alice, first.as_bytes()).is_err());
        assert!(s.take_statement(&alice, second.as_bytes()).is_ok());
        assert!(s.take_statement(&alice, third.as_bytes()).is_ok());
        // Other users fill the total: then a new handle is refused, and nobody else's evicted.
        for i in 0..10 {
            s.store(
                "s1",
                &who(&format!("u{i}"), "s"),
                &"y".repeat(100),
                0,
                HandleKind::Statement(String::new()),
            )
            .unwrap();
        }
        let err = s
            .store("s1", &alice, &sql, 0, HandleKind::Statement("4".into()))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn what_a_plan_holds_counts_when_it_is_more_than_its_text() {
        let s = store();
        let alice = who("alice", "credit");
        // Three bytes of text planned into 3,600 bytes count as 60: alice's 100 holds one.
        let first = s
            .store("s1", &alice, "q", 3_600, HandleKind::Statement("1".into()))
            .unwrap();
        let second = s
            .store("s1", &alice, "q", 3_600, HandleKind::Statement("2".into()))
            .unwrap();
        assert!(s.take_statement(&alice, first.as_bytes()).is_err());
        assert!(s.take_statement(&alice, second.as_bytes()).is_ok());
        // Past the total of all users (1,000), refused.
        let err = s
            .store("s1", &alice, "q", 61_000, HandleKind::Statement("3".into()))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn bound_values_count_toward_the_bytes_held() {
        let s = store();
        let alice = who("alice", "credit");
        let prepared = |s: &Handles<String>| {
            s.store(
                "s1",
                &alice,
                "q",
                0,
                HandleKind::Prepared {
                    query: "unbound".into(),
                    bound: None,
                },
            )
            .unwrap()
        };
        let old = prepared(&s);
        let new = prepared(&s);
        // 97 bytes of bound values pass alice's 100 with both (2 + 2 of text): her older goes.
        s.bind(&alice, new.as_bytes(), Some(Box::new("b".into())), 97)
            .unwrap();
        assert!(s.prepared(&alice, old.as_bytes()).is_err());
        assert_eq!(s.prepared(&alice, new.as_bytes()).unwrap(), "b");
        // More than everybody may hold is refused, and the handle stays as it was.
        let err = s
            .bind(&alice, new.as_bytes(), Some(Box::new("c".into())), 5_000)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.prepared(&alice, new.as_bytes()).unwrap(), "b");
    }
}
