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
                    arrived = arrived.saturating_add(data.data_header.len() + data.data_body.len());
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
