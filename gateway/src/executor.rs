//! The runtime queries execute on, apart from the one that answers clients (as InfluxDB IOx's
//! `DedicatedExecutor`): a query that computes without pause holds this runtime's threads, never
//! the ones that accept connections, verify logins, stream other queries' batches or stop the
//! server. A query's stream is a channel from a task here; dropping the stream (the client went,
//! the timeout passed) aborts that task at its next yield, which [`crate::guard`] makes frequent.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{execute_stream, ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;

/// Stack of every execution thread: expression evaluation recurses as deep as the statement
/// (bounded by `[execution] max_expression_depth`), as on the server's own threads.
const THREAD_STACK: usize = 64 << 20;

tokio::task_local! {
    /// What the calling task holds while work it spawns runs ([`holding`]).
    static HOLD: Hold;
}

/// Something held (a user's planning turn) until every piece of planning work spawned under it
/// has really ended. A task aborted because its client went stops only at its next yield, and
/// planning seldom yields: released with the client's call, the turn would let the same user
/// start more while the departed work still holds the runtime (attacker round 12 M1).
#[derive(Clone)]
pub struct Hold(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>);

impl Hold {
    /// Holds `value` until this and every clone, and all work spawned under it, are gone.
    pub fn new(value: impl std::any::Any + Send + Sync) -> Self {
        Self(Arc::new(value))
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Runs `work` with `hold` carried into every task [`Executor::spawn`] starts for it.
pub async fn holding<F: std::future::Future>(hold: Hold, work: F) -> F::Output {
    HOLD.scope(hold, work).await
}

/// A Tokio runtime of its own for query execution.
pub struct Executor {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    max_batch_bytes: usize,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// A runtime of `threads` workers (default: the machine's cores).
    pub fn new(threads: Option<usize>, max_batch_bytes: u64) -> std::io::Result<Self> {
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("lakegate-exec")
            .thread_stack_size(THREAD_STACK)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            max_batch_bytes: usize::try_from(max_batch_bytes).unwrap_or(usize::MAX),
        })
    }

    /// `[execution] max_batch_bytes`.
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// `plan` with a guard above every operator, as [`Executor::run`] runs it (its metrics are
    /// those of the run).
    pub fn prepare(
        &self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        crate::guard::guard(plan, self.max_batch_bytes)
    }

    /// Runs `work` (planning) on this runtime; dropping the returned future aborts it at its
    /// next yield. What the caller is [`holding`] stays held until the work has ended.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, tokio::task::JoinError>> {
        let held = HOLD.try_with(Hold::clone).ok();
        let mut task = AbortOnDrop(self.handle.spawn(async move {
            let out = work.await;
            drop(held);
            out
        }));
        // The block owns `task`, so dropping the future aborts the work.
        #[allow(clippy::redundant_async_block)]
        async move {
            (&mut task.0).await
        }
    }

    /// Runs a [`Executor::prepare`]d plan on this runtime; its batches arrive through the
    /// returned stream. Dropping the stream cancels the run.
    pub fn run(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> SendableRecordBatchStream {
        let schema = plan.schema();
        // Two batches in flight: the run stays a little ahead of the client, no more.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let task = self.handle.spawn(async move {
            // Operators spawn their helpers when executed: here, on this runtime.
            let mut stream = match execute_stream(plan, ctx) {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
        });
        let abort = AbortOnDrop(task);
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |b| {
            let _running = &abort;
            b
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // A runtime may not be dropped inside another's async context; let its threads go.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use std::time::{Duration, Instant};

    /// 8e12 rows to count (the filter keeps DataFusion from answering from statistics).
    const ENDLESS: &str = "SELECT count(*) FROM (SELECT v FROM t WHERE v % 7 <> 100) a, t b, t c";

    /// `sql` planned in `ctx` and prepared to run on `executor`.
    async fn plan(executor: &Executor, ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        executor.prepare(plan).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_query_that_never_pauses_leaves_the_callers_runtime_free_and_stops_when_dropped() {
        let executor = Executor::new(Some(1), 128 << 20).unwrap();
        let ctx = SessionContext::new();
        let table = "CREATE TABLE t AS SELECT value AS v FROM generate_series(1, 20000)";
        ctx.sql(table).await.unwrap().collect().await.unwrap();
        let endless = plan(&executor, &ctx, ENDLESS).await;
        let mut stream = executor.run(endless, ctx.task_ctx());
        // The caller's single thread keeps running timers while the query computes.
        let started = Instant::now();
        let waited = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(waited.is_err(), "the endless query answered");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(stream);
        // The one execution thread is free again: a small query runs at once.
        let small = plan(
            &executor,
            &ctx,
            "SELECT count(*) FROM generate_series(1, 10)",
        )
        .await;
        let batches = tokio::time::timeout(
            Duration::from_secs(10),
            executor.run(small, ctx.task_ctx()).collect::<Vec<_>>(),
        )
        .await
        .expect("the execution thread is still taken by the dropped query");
        assert_eq!(batches.len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hold_lasts_until_the_work_spawned_under_it_has_ended() {
        let executor = Arc::new(Executor::new(Some(1), 128 << 20).unwrap());
        let turn = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = turn.clone().try_acquire_owned().unwrap();
        let (started, began) = tokio::sync::oneshot::channel();
        let planner = Arc::clone(&executor);
        let client = tokio::spawn(holding(Hold::new(permit), async move {
            let work = planner.spawn(async move {
                started.send(()).unwrap();
                // Planning that does not yield.
                std::thread::sleep(Duration::from_millis(600));
            });
            work.await
        }));
        began.await.unwrap();
        // The client goes: its call is dropped, the work runs on.
        client.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            turn.available_permits(),
            0,
            "released while the work still ran"
        );
        let freed = tokio::time::timeout(Duration::from_secs(10), turn.acquire()).await;
        assert!(freed.is_ok(), "never released after the work ended");
    }

    #[tokio::test]
    async fn a_batch_past_the_limit_fails_and_names_it() {
        let executor = Executor::new(Some(1), 1 << 20).unwrap();
        let ctx = SessionContext::new();
        let sql = "SELECT concat(CAST(value AS VARCHAR), repeat('x', 1000)) \
                   FROM generate_series(1, 8000)";
        let wide = plan(&executor, &ctx, sql).await;
        let out: Vec<_> = executor.run(wide, ctx.task_ctx()).collect().await;
        let err = out
            .into_iter()
            .find_map(|b| b.err())
            .expect("an 8 MB batch passed a 1 MiB limit")
            .to_string();
        assert!(err.contains("max_batch_bytes (1 MiB)"), "{err}");
    }
}
