//! How many queries run at once, per user and in total, and for how long (`[execution]`
//! `max_concurrent_queries`, `max_concurrent_queries_per_user`, `query_timeout_secs`).
//!
//! A query takes a [`Slot`] when its results start; the slot goes back when its stream ends or
//! is dropped. Past a limit the query is refused at once (RESOURCE_EXHAUSTED), not queued: a
//! queue would only hide the overload from the client that causes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lake_config::ExecutionConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// How many of one user's statements may wait for the user's planning turn.
pub const PLANNING_QUEUE: usize = 16;

/// How long a statement may wait for its user's planning turn.
pub const PLANNING_WAIT: Duration = Duration::from_secs(60);

/// The limits of one server.
pub struct Limits {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_user: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
    timeout: Option<Duration>,
    max_parameter_bytes: usize,
    max_sql_bytes: usize,
    /// One statement planned at a time per user; the user's others wait their turn.
    planning: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A running query's place; released on drop.
pub struct Slot {
    running: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
    _permit: OwnedSemaphorePermit,
}

impl Limits {
    /// The limits `execution` configures.
    pub fn new(execution: &ExecutionConfig) -> Self {
        Self {
            total: Arc::new(Semaphore::new(execution.max_concurrent_queries)),
            max_total: execution.max_concurrent_queries,
            max_per_user: execution.max_concurrent_queries_per_user,
            running: Arc::default(),
            timeout: (execution.query_timeout_secs > 0)
                .then(|| Duration::from_secs(execution.query_timeout_secs)),
            // Twice: what arrives is counted with its buffers' spare capacity.
            max_parameter_bytes: execution.max_sql_bytes.saturating_mul(2),
            max_sql_bytes: execution.max_sql_bytes,
            planning: Mutex::default(),
        }
    }

    /// The most SQL text the statement tickets and prepared statements of one user may hold
    /// (a planned statement takes some 60 times its text: a 1 MiB IN list held 63 MB, and 146
    /// of them 11 GB), and of all users together: four and 32 statements of the largest size.
    pub fn max_handle_bytes(&self) -> (usize, usize) {
        (
            self.max_sql_bytes.saturating_mul(4),
            self.max_sql_bytes.saturating_mul(32),
        )
    }

    /// The most bytes of parameter batches one DoPut may send: a row of parameters is part of
    /// the statement, so twice `[execution] max_sql_bytes`.
    pub fn max_parameter_bytes(&self) -> usize {
        self.max_parameter_bytes
    }

    /// How long one query may run, if limited.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The user's turn to plan a statement: one at a time per user, so that one user's large
    /// statements (seconds each) cannot fill the query runtime while others wait behind them
    /// (twelve concurrent 1 MiB statements held another user's query for 18 s). At most
    /// [`PLANNING_QUEUE`] of a user's statements wait, each at most [`PLANNING_WAIT`]: a waiting
    /// call holds its message, so an unbounded queue is unbounded memory.
    pub async fn planning_turn(&self, user: &str) -> Result<OwnedSemaphorePermit, Status> {
        let turn = {
            let mut planning = self.planning.lock().expect("limits lock");
            // Users with no statement planning or waiting hold no entry (a permit or a waiter
            // holds a clone of its user's semaphore).
            planning.retain(|_, s| Arc::strong_count(s) > 1);
            let turn = planning
                .entry(user.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(1)));
            // The map's own reference, the one planning, and those waiting.
            if Arc::strong_count(turn) >= PLANNING_QUEUE + 2 {
                return Err(Status::resource_exhausted(format!(
                    "too many statements: {user} has {PLANNING_QUEUE} waiting to be planned \
                     after the one being planned; wait for them"
                )));
            }
            turn.clone()
        };
        match tokio::time::timeout(PLANNING_WAIT, turn.acquire_owned()).await {
            Ok(permit) => Ok(permit.expect("never closed")),
            Err(_) => Err(Status::resource_exhausted(format!(
                "{user}'s earlier statements were still being planned after {} s: try again \
                 when they are done",
                PLANNING_WAIT.as_secs()
            ))),
        }
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    /// A slot for one more query of `user`, or the refusal naming the limit.
    pub fn admit(&self, user: &str) -> Result<Slot, Status> {
        let mut running = self.running.lock().expect("limits lock");
        let own = running.get(user).copied().unwrap_or(0);
        if own >= self.max_per_user {
            return Err(Status::resource_exhausted(format!(
                "too many queries: {user} already runs {own} at once \
                 (execution.max_concurrent_queries_per_user = {}); wait for one to finish",
                self.max_per_user
            )));
        }
        let permit = self.total.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many queries: the server runs {} at once \
                 (execution.max_concurrent_queries); try again shortly",
                self.max_total
            ))
        })?;
        running.insert(user.to_string(), own + 1);
        crate::metrics::metrics().started();
        Ok(Slot {
            running: self.running.clone(),
            user: user.to_string(),
            _permit: permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::metrics().ended();
        let mut running = self.running.lock().expect("limits lock");
        if let Some(n) = running.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_user: usize) -> Limits {
        Limits::new(&ExecutionConfig {
            max_concurrent_queries: total,
            max_concurrent_queries_per_user: per_user,
            ..ExecutionConfig::default()
        })
    }

    #[test]
    fn a_user_is_held_to_their_share_and_others_still_run() {
        let l = limits(3, 2);
        let a1 = l.admit("alice").unwrap();
        let _a2 = l.admit("alice").unwrap();
        let err = l.admit("alice").err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err
            .message()
            .contains("max_concurrent_queries_per_user = 2"));
        let _b = l.admit("bob").unwrap();
        // The server is full now: bob's second is refused by the total.
        let err = l.admit("bob").err().unwrap();
        assert!(err.message().contains("the server runs 3 at once"), "{err}");
        assert_eq!(l.running(), 3);
        drop(a1);
        assert_eq!(l.running(), 2);
        l.admit("alice").unwrap();
    }

    #[test]
    fn refusals_leave_nothing_held() {
        let l = limits(1, 1);
        let s = l.admit("alice").unwrap();
        for _ in 0..10 {
            assert!(l.admit("alice").is_err());
            assert!(l.admit("bob").is_err());
        }
        drop(s);
        assert_eq!(l.running(), 0);
        assert!(l.running.lock().unwrap().is_empty());
        l.admit("bob").unwrap();
    }

    #[tokio::test]
    async fn a_users_planning_queue_is_bounded_and_others_plan_meanwhile() {
        let l = Arc::new(limits(64, 8));
        let first = l.planning_turn("alice").await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..PLANNING_QUEUE {
            let l = l.clone();
            waiting.push(tokio::spawn(async move { l.planning_turn("alice").await }));
        }
        // Let every waiter reach its queue.
        while Arc::strong_count(&l.planning.lock().unwrap()["alice"]) < PLANNING_QUEUE + 2 {
            tokio::task::yield_now().await;
        }
        let refused = l.planning_turn("alice").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("waiting to be planned"),
            "{refused}"
        );
        // Another user is not behind alice's queue.
        drop(l.planning_turn("bob").await.unwrap());
        drop(first);
        for w in waiting {
            drop(w.await.unwrap().unwrap());
        }
        assert!(l.planning_turn("alice").await.is_ok());
    }

    #[test]
    fn zero_means_no_timeout() {
        let l = Limits::new(&ExecutionConfig {
            query_timeout_secs: 0,
            ..ExecutionConfig::default()
        });
        assert_eq!(l.timeout(), None);
        assert_eq!(
            limits(1, 1).timeout(),
            Some(Duration::from_secs(lake_config::DEFAULT_QUERY_TIMEOUT_SECS))
        );
    }
}
