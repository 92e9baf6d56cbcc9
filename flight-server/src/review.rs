//! Output review and the completion record: every result stream is counted, limited by the
//! scenario's `max_rows` and the deployment's `max_result_bytes`, digested as sent, and put on
//! the audit trail when it ends — completed, failed, refused by review, or cancelled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tonic::Status;

use gateway::{scan_metrics, Completion, Gateway, GatewayError, Outcome, Query};

use crate::error::to_status;
use crate::limits::Slot;
use crate::service::DoGetStream;

/// A completion with nothing sent.
pub(crate) fn completion(outcome: Outcome, reason: Option<String>, started: Instant) -> Completion {
    Completion {
        outcome,
        reason,
        rows: 0,
        bytes: 0,
        digest: hex::encode(Sha256::digest(b"")),
        duration: started.elapsed(),
        rows_scanned: None,
        cpu_ms: None,
    }
}

struct Progress {
    rows: u64,
    bytes: u64,
    digest: Sha256,
    outcome: Option<Outcome>,
    reason: Option<String>,
}

/// Writes the completion record when the stream is dropped: after its end, after an error, or
/// when the client went away (cancelled).
struct Recorder {
    gateway: Arc<Gateway>,
    query: Query,
    plan: Arc<dyn ExecutionPlan>,
    started: Instant,
    progress: Arc<Mutex<Progress>>,
    /// Held until the record is written: the query counts as running until then.
    _slot: Slot,
}

/// A query as it starts: when, for how long at most, and its place among the running ones.
pub(crate) struct Running {
    pub(crate) started: Instant,
    pub(crate) timeout: Option<Duration>,
    pub(crate) slot: Slot,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let (rows_scanned, cpu_ms) = scan_metrics(&self.plan);
        let p = self.progress.lock().expect("progress lock");
        let c = Completion {
            rows_scanned: Some(rows_scanned),
            cpu_ms: Some(cpu_ms),
            outcome: p.outcome.unwrap_or(Outcome::Cancelled),
            reason: p.reason.clone(),
            rows: p.rows,
            bytes: p.bytes,
            digest: hex::encode(p.digest.clone().finalize()),
            duration: self.started.elapsed(),
        };
        drop(p);
        if let Err(e) = crate::metrics::record_completion(&self.gateway, &self.query, c) {
            tracing::error!("cannot write the completion record: {e}");
        }
    }
}

fn end(progress: &Mutex<Progress>, outcome: Outcome, reason: String) {
    let mut p = progress.lock().expect("progress lock");
    if p.outcome.is_none() {
        p.outcome = Some(outcome);
        p.reason = Some(reason);
    }
}

/// How often a running stream's grants are decided again when nothing else changed.
const RECHECK: Duration = Duration::from_secs(1);

/// The result stream as it leaves: reviewed, encoded, digested, recorded.
pub(crate) fn reviewed_stream(
    gateway: Arc<Gateway>,
    query: Query,
    stream: SendableRecordBatchStream,
    plan: Arc<dyn ExecutionPlan>,
    running: Running,
) -> DoGetStream {
    let Running {
        started,
        timeout,
        slot,
    } = running;
    let (max_rows, max_bytes) = query
        .audit_context()
        .map(|c| (c.max_rows, c.max_bytes))
        .unwrap_or((None, None));
    let progress = Arc::new(Mutex::new(Progress {
        rows: 0,
        bytes: 0,
        digest: Sha256::new(),
        outcome: None,
        reason: None,
    }));
    // What clients read: the served schema with Flight SQL's column metadata.
    let schema = Arc::new(crate::metadata::described(&query.schema(), None));
    let recorder = Recorder {
        gateway,
        query,
        plan,
        started,
        progress: progress.clone(),
        _slot: slot,
    };

    let rows_progress = progress.clone();
    let described = schema.clone();
    // Decisions hold while the results stream too: when the policy set changes, the grants
    // are decided again before the next batch leaves, and a changed grant ends the stream.
    let (gateway, query) = (recorder.gateway.clone(), recorder.query.clone());
    let mut decided_under = gateway.policies();
    // Decisions read the time too (a scenario's expiry): decided again every second as well.
    let mut decided_at = Instant::now();
    let batches = stream.map(move |batch| {
        let batch = batch.map_err(|e| {
            let status = to_status(GatewayError::Execution(e));
            end(
                &rows_progress,
                Outcome::Failed,
                status.message().to_string(),
            );
            FlightError::Tonic(Box::new(status))
        })?;
        let serving = gateway.policies();
        if !Arc::ptr_eq(&serving, &decided_under) || decided_at.elapsed() >= RECHECK {
            decided_under = serving;
            decided_at = Instant::now();
            if !gateway.grants_unchanged(&query).unwrap_or(false) {
                let reason = "the policies changed while the query ran (or its scenario \
                              expired) and no longer grant what it was decided under; run it \
                              again"
                    .to_string();
                end(&rows_progress, Outcome::Failed, reason.clone());
                return Err(FlightError::Tonic(Box::new(Status::failed_precondition(
                    reason,
                ))));
            }
        }
        let mut p = rows_progress.lock().expect("progress lock");
        let rows = p.rows + batch.num_rows() as u64;
        if let Some(max) = max_rows.filter(|max| rows > *max) {
            drop(p);
            let reason = format!(
                "the result exceeds the scenario's max_rows ({max}); narrow the query or aggregate"
            );
            end(&rows_progress, Outcome::Refused, reason.clone());
            return Err(FlightError::Tonic(Box::new(to_status(
                GatewayError::Review(reason),
            ))));
        }
        p.rows = rows;
        drop(p);
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(described.clone(), batch.columns().to_vec(), &options)
            .map_err(FlightError::Arrow)
    });

    let bytes_progress = progress.clone();
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from)
        .map(move |data| {
            let data = data.inspect_err(|status| {
                end(&bytes_progress, Outcome::Failed, status.message().to_string());
            })?;
            let mut p = bytes_progress.lock().expect("progress lock");
            p.bytes += (data.data_header.len() + data.data_body.len()) as u64;
            if let Some(max) = max_bytes.filter(|max| p.bytes > *max) {
                drop(p);
                let reason = format!(
                    "the result exceeds the deployment's max_result_bytes ({max}); narrow the query or aggregate"
                );
                end(&bytes_progress, Outcome::Refused, reason.clone());
                return Err(to_status(GatewayError::Review(reason)));
            }
            p.digest.update(&data.data_header);
            p.digest.update(&data.data_body);
            Ok(data)
        });

    let encoded: DoGetStream = match timeout {
        Some(limit) => with_deadline(Box::pin(encoded), started, limit, progress.clone()),
        None => Box::pin(encoded),
    };

    let finished = futures::stream::once(async move {
        // Reached only when every batch went out.
        let mut p = recorder.progress.lock().expect("progress lock");
        p.outcome.get_or_insert(Outcome::Completed);
        drop(p);
        drop(recorder);
        None
    })
    .filter_map(|x: Option<Result<arrow_flight::FlightData, Status>>| async move { x });
    Box::pin(encoded.chain(finished))
}

/// `stream`, cut off with DEADLINE_EXCEEDED once `limit` has passed since `started`; dropping
/// the rest cancels the query's execution.
fn with_deadline(
    stream: DoGetStream,
    started: Instant,
    limit: Duration,
    progress: Arc<Mutex<Progress>>,
) -> DoGetStream {
    let deadline = tokio::time::Instant::from_std(started + limit);
    let timer = Box::pin(tokio::time::sleep_until(deadline));
    Box::pin(futures::stream::unfold(
        Some((stream, timer)),
        move |state| {
            let progress = progress.clone();
            async move {
                let (mut stream, mut timer) = state?;
                tokio::select! {
                    biased;
                    _ = &mut timer => {
                        let reason = format!(
                            "the query ran longer than execution.query_timeout_secs ({} s) and was cancelled",
                            limit.as_secs()
                        );
                        end(&progress, Outcome::Failed, reason.clone());
                        Some((Err(Status::deadline_exceeded(format!("query timeout: {reason}"))), None))
                    }
                    item = stream.next() => item.map(|item| (item, Some((stream, timer)))),
                }
            }
        },
    ))
}
