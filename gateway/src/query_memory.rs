//! One query's share of the memory pool.
//!
//! Every query draws from the server's pool (`[execution] memory_limit_bytes`), and no query may
//! hold more than `[execution] query_memory_limit_bytes` of it: without this cap one query
//! (say `string_agg` of large values per group, 5 GB resident before its output batch was
//! refused) could hold the whole pool while others fail for want of memory. Operators that can
//! spill (sorts, aggregations) spill at the cap; others fail with a resources error naming it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// A pool that passes every reservation on to the shared pool and refuses growth past `limit`
/// bytes held by this query.
#[derive(Debug)]
pub struct QueryPool {
    shared: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl QueryPool {
    /// A query's view of `shared`, capped at `limit` bytes.
    pub fn new(shared: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            shared,
            limit,
            used: AtomicUsize::new(0),
        }
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool: {} of {} bytes, in {}",
            self.reserved(),
            self.limit,
            self.shared
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "lakegate_query_pool"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.shared.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let granted = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(additional).filter(|&n| n <= self.limit)
            });
        if granted.is_err() {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} wants {} more bytes, and this query would then hold more than \
                 [execution] query_memory_limit_bytes ({} MiB); reduce the data it keeps \
                 (groups, sizes of aggregated values, join build sides)",
                reservation.consumer().name(),
                additional,
                self.limit >> 20
            )));
        }
        self.shared
            .try_grow(reservation, additional)
            .inspect_err(|_| {
                self.used.fetch_sub(additional, Ordering::Relaxed);
            })
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        match self.shared.memory_limit() {
            MemoryLimit::Finite(shared) => MemoryLimit::Finite(shared.min(self.limit)),
            _ => MemoryLimit::Finite(self.limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn a_query_is_capped_below_the_shared_pool_and_gives_back_what_it_frees() {
        let shared: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let a: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(shared.clone(), 600));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(shared.clone(), 600));
        let ra = MemoryConsumer::new("agg").register(&a);
        ra.try_grow(500).unwrap();
        let err = ra.try_grow(200).unwrap_err().to_string();
        assert!(err.contains("query_memory_limit_bytes"), "{err}");
        assert_eq!((a.reserved(), shared.reserved()), (500, 500));
        // The other query gets the rest of the shared pool, not more.
        let rb = MemoryConsumer::new("sort").register(&b);
        rb.try_grow(500).unwrap();
        assert!(rb.try_grow(100).is_err());
        assert_eq!((b.reserved(), shared.reserved()), (500, 1000));
        ra.shrink(300);
        rb.try_grow(100).unwrap();
        drop(ra);
        drop(rb);
        assert_eq!((a.reserved(), b.reserved(), shared.reserved()), (0, 0, 0));
    }
}
