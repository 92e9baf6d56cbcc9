//! One executed query's lifecycle on the audit trail, and the output review of its result.
//!
//! A [`QueryToken`] is made when an execution starts and writes the query's completion record
//! when its last handle is dropped: `completed` when every batch went out, `failed` or
//! `refused` with the first reason given, and `cancelled` when the client went away (nothing
//! said otherwise). InfluxDB IOx's `QueryCompletedToken` is the model.
//!
//! The review ([`QueryToken::review`]) stands between the plan's batches and the encoder: the
//! scenario's `max_rows`, the grants decided again when the policies change (or every
//! [`RECHECK`]), and the deployment's query timeout. The server encodes the batches and hands
//! every encoded message to [`QueryToken::sent`], which counts and digests the bytes as they
//! leave and applies `max_result_bytes`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{Completion, Outcome};
use crate::executor::Hold;
use crate::query::{scan_metrics, Query};
use crate::{Gateway, GatewayError};

/// How often a running stream's grants are decided again when nothing else changed: decisions
/// read the time too (a scenario's expiry).
pub const RECHECK: Duration = Duration::from_secs(1);

/// Told how each completion went and how long its record took to write (the server's metrics).
pub type CompletionObserver = Box<dyn FnOnce(&Completion, Duration) + Send>;

/// One execution of a query, from its start to its completion record. Clones share it; the
/// record is written when the last clone is dropped.
#[derive(Clone)]
pub struct QueryToken(Arc<Tracked>);

struct Tracked {
    gateway: Arc<Gateway>,
    started: Instant,
    state: Mutex<State>,
}

/// What the completion record will say.
struct State {
    /// The query executing: the revalidated one once execution began.
    query: Query,
    plan: Option<Arc<dyn ExecutionPlan>>,
    /// How it ended, first word wins; none yet means cancelled.
    ended: Option<(Outcome, Option<String>)>,
    rows: u64,
    bytes: u64,
    digest: Sha256,
    /// Held until the record is written (a running query's slot).
    held: Option<Hold>,
    observer: Option<CompletionObserver>,
}

impl QueryToken {
    /// Starts tracking an execution of `query` that began at `started`.
    pub fn new(gateway: Arc<Gateway>, query: Query, started: Instant) -> Self {
        Self(Arc::new(Tracked {
            gateway,
            started,
            state: Mutex::new(State {
                query,
                plan: None,
                ended: None,
                rows: 0,
                bytes: 0,
                digest: Sha256::new(),
                held: None,
                observer: None,
            }),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().expect("query token lock")
    }

    /// Tells `observer` how the completion went, once its record is written.
    pub fn observed(self, observer: CompletionObserver) -> Self {
        self.state().observer = Some(observer);
        self
    }

    /// Keeps `held` until the completion record is written.
    pub fn hold(&self, held: Hold) {
        self.state().held = Some(held);
    }

    /// The query was decided again at execution (maybe planned again, with a decision record
    /// of its own): the completion follows `query`.
    pub fn revalidated(&self, query: Query) {
        self.state().query = query;
    }

    /// Execution began as `plan`, whose metrics the record reads.
    pub fn executing(&self, plan: Arc<dyn ExecutionPlan>) {
        self.state().plan = Some(plan);
    }

    /// Ends the execution with `outcome` and `reason`, unless it has ended already.
    pub fn end(&self, outcome: Outcome, reason: impl Into<String>) {
        let mut state = self.state();
        if state.ended.is_none() {
            state.ended = Some((outcome, Some(reason.into())));
        }
    }

    /// Every batch went out: the record says completed (unless it ended otherwise before).
    pub fn completed(self) {
        self.state().ended.get_or_insert((Outcome::Completed, None));
    }

    /// Waits for the decision record the completion follows (an ended query may not have
    /// waited for it), then drops this handle.
    pub async fn finish(self) {
        let query = self.state().query.clone();
        if let Some(ctx) = query.audit_context() {
            let _ = ctx.recorded().await;
        }
    }

    /// Counts and digests one encoded message as it leaves; refuses it past the
    /// deployment's `max_result_bytes`.
    pub fn sent(&self, header: &[u8], body: &[u8]) -> Result<(), GatewayError> {
        let mut state = self.state();
        state.bytes += (header.len() + body.len()) as u64;
        let max = state.query.audit_context().and_then(|c| c.max_bytes);
        if let Some(max) = max.filter(|max| state.bytes > *max) {
            drop(state);
            let reason = format!(
                "the result exceeds the deployment's max_result_bytes ({max}); narrow the query or aggregate"
            );
            self.end(Outcome::Refused, reason.clone());
            return Err(GatewayError::Review(reason));
        }
        state.digest.update(header);
        state.digest.update(body);
        Ok(())
    }

    /// `stream` under review: ended at the scenario's `max_rows`, when the policies in force
    /// no longer grant what the query was decided under, or past `timeout` since the start.
    /// Errors end the execution with their client text.
    pub fn review(
        &self,
        stream: SendableRecordBatchStream,
        timeout: Option<Duration>,
    ) -> BoxStream<'static, Result<RecordBatch, GatewayError>> {
        let token = self.clone();
        let gateway = self.0.gateway.clone();
        let query = self.state().query.clone();
        let max_rows = query.audit_context().and_then(|c| c.max_rows);
        let mut decided_under = gateway.policies();
        let mut decided_at = Instant::now();
        let reviewed = stream.map(move |batch| {
            let batch = batch.map_err(GatewayError::Execution).inspect_err(|e| {
                token.end(Outcome::Failed, e.record_text());
            })?;
            let serving = gateway.policies();
            if !Arc::ptr_eq(&serving, &decided_under) || decided_at.elapsed() >= RECHECK {
                decided_under = serving;
                decided_at = Instant::now();
                if !gateway.grants_unchanged(&query).unwrap_or(false) {
                    let reason = "the policies changed while the query ran (or its scenario \
                                  expired) and no longer grant what it was decided under; run \
                                  it again";
                    token.end(Outcome::Failed, reason);
                    return Err(GatewayError::GrantsChanged(reason.into()));
                }
            }
            let mut state = token.state();
            let rows = state.rows + batch.num_rows() as u64;
            if let Some(max) = max_rows.filter(|max| rows > *max) {
                drop(state);
                let reason = format!(
                    "the result exceeds the scenario's max_rows ({max}); narrow the query or aggregate"
                );
                token.end(Outcome::Refused, reason.clone());
                return Err(GatewayError::Review(reason));
            }
            state.rows = rows;
            Ok(batch)
        });
        match timeout {
            Some(limit) => self.within(reviewed.boxed(), limit),
            None => reviewed.boxed(),
        }
    }

    /// `stream`, cut off once `limit` has passed since the start, whether or not the client
    /// reads (see [`super::timed`]).
    fn within(
        &self,
        stream: BoxStream<'static, Result<RecordBatch, GatewayError>>,
        limit: Duration,
    ) -> BoxStream<'static, Result<RecordBatch, GatewayError>> {
        let deadline = tokio::time::Instant::from_std(self.0.started + limit);
        let reason = format!(
            "the query ran longer than execution.query_timeout_secs ({} s) and was cancelled",
            limit.as_secs()
        );
        let (ended, released) = (self.clone(), self.clone());
        let why = reason.clone();
        super::timed::run_until(
            stream,
            deadline,
            reason,
            move || ended.end(Outcome::Failed, why),
            // Its slot among the running queries goes back now, not when the client reads.
            move || released.state().held = None,
        )
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let state = self.state.get_mut().expect("query token lock");
        let (rows_scanned, cpu_ms) = match &state.plan {
            Some(plan) => {
                let (rows, cpu) = scan_metrics(plan);
                (Some(rows), Some(cpu))
            }
            None => (None, None),
        };
        let (outcome, reason) = state.ended.take().unwrap_or((Outcome::Cancelled, None));
        let completion = Completion {
            outcome,
            reason,
            rows: state.rows,
            bytes: state.bytes,
            digest: hex::encode(state.digest.clone().finalize()),
            duration: self.started.elapsed(),
            rows_scanned,
            cpu_ms,
        };
        let writing = Instant::now();
        let written = self
            .gateway
            .record_completion(&state.query, completion.clone());
        if let Err(e) = &written {
            tracing::error!("cannot write the completion record: {e}");
        }
        if let Some(observer) = state.observer.take() {
            observer(&completion, writing.elapsed());
        }
        // The slot goes only now: the query counts as running until its record is written.
        state.held = None;
    }
}
