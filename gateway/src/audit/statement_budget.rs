//! The statement text each user may have accepted per minute (`[audit]
//! max_sql_bytes_per_user_minute`): an allowed statement's decision record keeps its whole
//! text, fsynced, for good, so one user sending 1 MB statements grew the trail 30-46 MB/s
//! (attacker round 21). A token bucket per user, refilled continuously: a burst of a minute's
//! budget passes, a steady stream past it is refused until the bucket refills.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets by user.
#[derive(Debug)]
pub struct StatementBudget {
    /// Bytes per minute (0: no limit).
    per_minute: u64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Users whose buckets are kept before full ones are forgotten (a full bucket is the same as
/// none).
const MAX_USERS: usize = 100_000;

impl StatementBudget {
    /// A budget of `per_minute` bytes of statement text per user (0: none).
    pub fn new(per_minute: u64) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `bytes` from `user`'s bucket at `now`, or refuses with what to do.
    pub fn take(&self, user: &str, bytes: u64, now: Instant) -> Result<(), String> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = self.per_minute as f64;
        let rate = capacity / 60.0;
        let mut buckets = self.buckets.lock().expect("statement budget lock");
        if buckets.len() >= MAX_USERS {
            buckets.retain(|_, (level, at)| {
                (*level + now.saturating_duration_since(*at).as_secs_f64() * rate) < capacity
            });
        }
        let (level, at) = buckets.entry(user.to_string()).or_insert((capacity, now));
        *level = (*level + now.saturating_duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if bytes as f64 > *level {
            return Err(format!(
                "user {user} has sent more statement text in the last minute than [audit] \
                 max_sql_bytes_per_user_minute = {} allows (this statement: {bytes} bytes); \
                 wait, or send shorter statements (prepared statements with parameters)",
                self.per_minute
            ));
        }
        *level -= bytes as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_minute_of_text_passes_then_the_bucket_refills_at_its_rate() {
        let budget = StatementBudget::new(6_000);
        let t = Instant::now();
        budget.take("a", 4_000, t).unwrap();
        budget.take("a", 2_000, t).unwrap();
        let err = budget.take("a", 100, t).unwrap_err();
        assert!(
            err.contains("max_sql_bytes_per_user_minute = 6000"),
            "{err}"
        );
        // Another user has a bucket of their own.
        budget.take("b", 6_000, t).unwrap();
        // 100 bytes per second come back.
        budget.take("a", 100, t + Duration::from_secs(1)).unwrap();
        assert!(budget.take("a", 200, t + Duration::from_secs(2)).is_err());
        budget
            .take("a", 6_000, t + Duration::from_secs(120))
            .unwrap();
        // Off.
        let off = StatementBudget::new(0);
        off.take("a", u64::MAX, t).unwrap();
    }
}
