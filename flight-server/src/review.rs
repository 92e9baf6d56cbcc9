//! A result stream as it leaves: the gateway's output review ([`QueryToken::review`]), relabelled
//! with Flight SQL's column metadata, encoded, and every encoded message handed to the query's
//! token, which counts, digests and limits the bytes and writes the completion record.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use gateway::{Outcome, QueryToken};

use crate::error::to_status;
use crate::service::DoGetStream;

/// `stream` reviewed, encoded and counted by `token`; `timeout` cuts it off.
pub(crate) fn reviewed_stream(
    token: QueryToken,
    stream: SendableRecordBatchStream,
    timeout: Option<Duration>,
) -> DoGetStream {
    // What clients read: the served schema with Flight SQL's column metadata.
    let schema = Arc::new(crate::metadata::described(&stream.schema(), None));
    let described = schema.clone();
    let batches = token.review(stream, timeout).map(move |batch| {
        let batch = batch.map_err(|e| FlightError::Tonic(Box::new(to_status(e))))?;
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(described.clone(), batch.columns().to_vec(), &options)
            .map_err(FlightError::Arrow)
    });
    let counting = token.clone();
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from)
        .map(move |data| {
            let data = data.inspect_err(|status| {
                counting.end(Outcome::Failed, status.message());
            })?;
            counting
                .sent(&data.data_header, &data.data_body)
                .map_err(to_status)?;
            Ok(data)
        });
    // Reached only when every batch went out.
    let finished = futures::stream::once(async move {
        token.completed();
        None
    })
    .filter_map(|x: Option<Result<arrow_flight::FlightData, Status>>| async move { x });
    Box::pin(encoded.chain(finished))
}
