//! What the audit trail knows of one planned query (its decision record's write, the limits
//! its output review applies) and how an execution of it ended.

use std::sync::Arc;

use crate::GatewayError;

/// What the audit trail and output review know of a query.
#[derive(Clone)]
pub struct AuditContext {
    /// Links the completion record to the decision.
    pub query_id: String,
    /// The decision record being written (the completion record repeats its fields), or why
    /// it could not be.
    pub(crate) decision: DecisionWrite,
    /// The scenario's `max_rows`.
    pub max_rows: Option<u64>,
    /// The deployment's `max_result_bytes`.
    pub max_bytes: Option<u64>,
}

/// The write of a decision record, awaited by every execution of the query.
pub(crate) type DecisionWrite = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<Arc<crate::audit::AuditRecord>, String>>,
>;

impl std::fmt::Debug for AuditContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditContext")
            .field("query_id", &self.query_id)
            .field("max_rows", &self.max_rows)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl AuditContext {
    /// Waits until the decision record is on disk. A failed write refuses the query.
    pub async fn recorded(&self) -> Result<Arc<crate::audit::AuditRecord>, GatewayError> {
        self.decision.clone().await.map_err(refused)
    }

    /// The decision record as written; an error when its write failed or has not ended (an
    /// execution waits for it, so after one it has).
    pub fn decision_record(&self) -> Result<Arc<crate::audit::AuditRecord>, GatewayError> {
        match self.decision.peek() {
            Some(written) => written.clone().map_err(refused),
            None => Err(GatewayError::Audit(
                "the decision record is still being written".into(),
            )),
        }
    }
}

fn refused(e: String) -> GatewayError {
    GatewayError::Audit(format!("decision record: {e}"))
}

/// How an executed query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every batch was sent.
    Completed,
    /// An error ended it (or it could not start).
    Failed,
    /// Output review or a limit ended it.
    Refused,
    /// Its client went away, or it was stopped.
    Cancelled,
}

impl Outcome {
    /// The word on the audit trail and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an executed query ended, and what it sent.
#[derive(Debug, Clone)]
pub struct Completion {
    /// How it ended.
    pub outcome: Outcome,
    /// The error or the limit, if any.
    pub reason: Option<String>,
    /// Rows sent.
    pub rows: u64,
    /// Bytes of Arrow IPC sent.
    pub bytes: u64,
    /// SHA-256 of the IPC stream as sent, hex.
    pub digest: String,
    /// From execution to the end of the stream.
    pub duration: std::time::Duration,
    /// Raw rows the secure scans read.
    pub rows_scanned: Option<u64>,
    /// Compute time of the plan's operators, milliseconds.
    pub cpu_ms: Option<u64>,
}
