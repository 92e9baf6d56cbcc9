//! The one place where errors become gRPC statuses.

use datafusion::error::DataFusionError;
use gateway::GatewayError;
use tonic::Status;

/// Chooses the status code by the error's kind; the text is [`GatewayError::client_text`].
pub fn to_status(e: GatewayError) -> Status {
    let text = e.client_text();
    if e.is_storage_failure() {
        // The client is told only that storage failed; the operator needs the rest.
        tracing::warn!(error = %e.record_text(), "a query failed reading the lake");
    }
    match e {
        // Not FAILED_PRECONDITION: ADBC drivers report that as UNKNOWN.
        GatewayError::NoScenario => Status::invalid_argument(text),
        GatewayError::UnknownScenario(_) => Status::invalid_argument(text),
        GatewayError::ReadOnly(_) | GatewayError::AggregateOnly(_) => {
            Status::permission_denied(text)
        }
        GatewayError::Sql(_) | GatewayError::Parameters(_) | GatewayError::TooLarge(_) => {
            Status::invalid_argument(text)
        }
        GatewayError::PolicyChanged(_) | GatewayError::GrantsChanged(_) => {
            Status::failed_precondition(text)
        }
        GatewayError::Timeout(_) => Status::deadline_exceeded(text),
        // The lake's storage, not the caller's statement.
        _ if e.is_storage_failure() => Status::unavailable(text),
        GatewayError::Execution(d) => match d.find_root() {
            DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => {
                Status::unavailable(text)
            }
            DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(text),
            _ => Status::invalid_argument(text),
        },
        GatewayError::Catalog(_) | GatewayError::Audit(_) | GatewayError::Config(_) => {
            Status::unavailable(text)
        }
        GatewayError::Review(_) | GatewayError::PrivacyBudget(_) | GatewayError::RateLimited(_) => {
            Status::resource_exhausted(text)
        }
        GatewayError::Policy(_) => Status::internal(text),
    }
}

/// The refusal for every write path of the protocol.
pub fn read_only(what: &str) -> Status {
    Status::permission_denied(format!(
        "lakegate is read-only: {what} is not accepted; send a SELECT, WITH or EXPLAIN statement"
    ))
}
