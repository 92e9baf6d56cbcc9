//! DoPut of a prepared statement's parameter values: read as they arrive, bounded, bound.

use super::*;

impl LakegateService {
    /// Reads the parameter values a DoPut sends for a prepared statement and binds them.
    pub(super) async fn bind_parameters(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let caller = self.caller(&request)?;
        let unbound = self
            .handles
            .unbound(&caller.principal, &query.prepared_statement_handle)?;
        // Read as it arrives, and stopped at the first row or byte too many: collected whole,
        // 250 batches of 32 MiB held 8.7 GB before the row count was looked at.
        let most = self.limits.max_parameter_bytes();
        // Counted as it arrives, before decoding: dictionary messages are decoded and kept by
        // the decoder without reaching the batches below (300 of 15 MB held 4.6 GB, round 9).
        let mut arrived = 0usize;
        let mut stream = FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(FlightError::from)
                .and_then(move |data| {
                    // What the message declares it holds, before it is decoded: a compressed
                    // body stands for far more (74 KB of zstd decoded to 6.9 GB, round 29 H2).
                    let declared = match declared_size(&data.data_header, &data.data_body) {
                        Ok(d) => d,
                        Err(why) => {
                            return futures::future::ready(Err(FlightError::Tonic(Box::new(
                                Status::invalid_argument(format!("parameters: {why}")),
                            ))))
                        }
                    };
                    arrived = arrived.saturating_add(data.data_header.len() + declared);
                    futures::future::ready(if arrived > most {
                        Err(FlightError::Tonic(Box::new(Status::invalid_argument(
                            format!(
                                "parameters: more than {most} bytes of parameter values were sent \
                             (twice [execution] max_sql_bytes)"
                            ),
                        ))))
                    } else {
                        Ok(data)
                    })
                }),
        );
        let (mut batches, mut rows, mut bytes) = (Vec::<RecordBatch>::new(), 0usize, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| {
                Status::invalid_argument(format!("cannot read the parameters: {e}"))
            })?;
            rows += batch.num_rows();
            // What the values stand for, not what they take on the wire: a dictionary or a
            // list view repeats values without sending them again (round 24 H1).
            bytes += batch
                .get_array_memory_size()
                .max(gateway::logical_row_bytes(&batch) as usize);
            if rows > 1 {
                return Err(Status::invalid_argument(
                    "parameters: a query takes exactly one row of parameter values, more were sent",
                ));
            }
            if bytes > most {
                return Err(Status::invalid_argument(format!(
                    "parameters: more than {most} bytes of parameter values were sent (twice \
                     [execution] max_sql_bytes)"
                )));
            }
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
        }
        let bound = match rows {
            0 if unbound.parameter_schema().fields().is_empty() => None,
            1 => {
                let batch = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
                let values = batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
                // In the user's planning turn, on the query runtime, like planning itself.
                let turn = self
                    .limits
                    .planning_turn(&caller.principal.user)
                    .await
                    .inspect_err(|s| crate::metrics::metrics().refused(s))?;
                let binding = unbound.bind_on_runtime(values);
                let bound = gateway::executor::holding(gateway::executor::Hold::new(turn), binding)
                    .await
                    .map_err(to_status)?;
                Some(Box::new(bound))
            }
            n => {
                return Err(Status::invalid_argument(format!(
                    "parameters: a query takes exactly one row of parameter values, {n} were sent"
                )))
            }
        };
        let bound_bytes = bound.as_ref().map_or(0, |q| q.bound_bytes() as usize);
        self.handles.bind(
            &caller.principal,
            &query.prepared_statement_handle,
            bound,
            bound_bytes,
        )?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }
}

/// The bytes an IPC message's body stands for once decoded: its buffers as the decoder will
/// allocate them (a compressed buffer by the length it declares), and one per value of its
/// field nodes (values without buffers, such as nulls, are made too). A record batch of more
/// than one row is refused before it is decoded.
fn declared_size(header: &[u8], body: &[u8]) -> Result<usize, String> {
    use arrow::ipc::{root_as_message, MessageHeader};
    if header.is_empty() {
        return Ok(body.len());
    }
    let message = root_as_message(header).map_err(|e| format!("not an Arrow IPC message: {e}"))?;
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => {
            let batch = message.header_as_record_batch().ok_or("no record batch")?;
            if batch.length() > 1 {
                return Err(
                    "a query takes exactly one row of parameter values, more were sent".into(),
                );
            }
            batch
        }
        MessageHeader::DictionaryBatch => message
            .header_as_dictionary_batch()
            .and_then(|d| d.data())
            .ok_or("a dictionary batch without data")?,
        // A schema message: what it says is bounded by its own length.
        _ => return Ok(body.len()),
    };
    let mut size = body.len();
    if let Some(nodes) = batch.nodes() {
        for node in nodes {
            size = size.saturating_add(usize::try_from(node.length()).unwrap_or(usize::MAX));
        }
    }
    if batch.compression().is_some() {
        for buffer in batch.buffers().into_iter().flatten() {
            let (offset, length) = (buffer.offset(), buffer.length());
            if length == 0 {
                continue;
            }
            let start = usize::try_from(offset).map_err(|_| "a negative buffer offset")?;
            let prefix = body
                .get(start..start.saturating_add(8))
                .ok_or("a compressed buffer outside the message body")?;
            let declared = i64::from_le_bytes(prefix.try_into().expect("eight bytes"));
            // -1: the buffer was left uncompressed.
            let decoded = if declared == -1 {
                length.saturating_sub(8)
            } else {
                declared
            };
            let decoded = usize::try_from(decoded).map_err(|_| "a negative buffer length")?;
            size = size.saturating_add(decoded);
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::declared_size;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
    use arrow::ipc::CompressionType;
    use std::sync::Arc;

    fn encoded(rows: usize, compression: Option<CompressionType>) -> (Vec<u8>, Vec<u8>) {
        let batch =
            RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![0i64; rows])) as _)])
                .unwrap();
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)
            .unwrap();
        let (_, data) = IpcDataGenerator::default()
            .encode(
                &batch,
                &mut DictionaryTracker::new(false),
                &options,
                &mut Default::default(),
            )
            .unwrap();
        (data.ipc_message, data.arrow_data)
    }

    #[test]
    fn compressed_bodies_count_what_they_decode_to() {
        let (header, body) = encoded(1, None);
        assert!(declared_size(&header, &body).unwrap() >= 8);
        for codec in [CompressionType::ZSTD, CompressionType::LZ4_FRAME] {
            // One row: a few bytes; the count is what it decodes to.
            let (header, body) = encoded(1, Some(codec));
            assert!(declared_size(&header, &body).unwrap() >= 8);
            // Many rows are refused from the header alone, however small the body.
            let (header, body) = encoded(1_000_000, Some(codec));
            assert!(body.len() < 100_000, "{}", body.len());
            let err = declared_size(&header, &body).unwrap_err();
            assert!(err.contains("exactly one row"), "{err}");
        }
        assert!(declared_size(b"garbage", b"").is_err());
    }
}
