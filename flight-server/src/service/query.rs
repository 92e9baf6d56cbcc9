//! A statement's way through the service: planned in the user's turn (and to its decision
//! record even when the client leaves), then executed behind the output review.

use super::*;

impl LakegateService {
    pub(super) async fn execute(
        &self,
        caller: &Caller,
        planned: &Query,
    ) -> Result<Response<DoGetStream>, Status> {
        let token = crate::metrics::tracked(&self.gateway, planned, Instant::now());
        // Deciding again may plan again, and the physical plan is made here: in the user's
        // planning turn, as at GetFlightInfo (a user's DoGets of plans that expand planned
        // one after another, not all at once while others wait).
        let user = &caller.principal.user;
        let admitted = match self.limits.planning_turn(user).await {
            Ok(turn) => self
                .limits
                .admit(user)
                .map(|slot| (slot, gateway::executor::Hold::new(turn))),
            Err(refused) => Err(refused),
        };
        // A slot among the running queries first; then decided again against the policies
        // in force now: a revoked grant stops here. The turn lasts as long as the planning
        // does, even when the client goes.
        let revalidated = match admitted {
            Ok((slot, turn)) => {
                token.hold(gateway::executor::Hold::new(slot));
                gateway::executor::holding(turn.clone(), self.gateway.revalidate(planned))
                    .await
                    .map(|q| (q, turn))
                    .map_err(|e| (e.record_text(), to_status(e)))
            }
            Err(refused) => Err((refused.message().to_owned(), refused)),
        };
        let (query, turn) = match revalidated {
            Ok(q) => q,
            Err((detail, status)) => {
                let outcome = if status.code() == tonic::Code::ResourceExhausted {
                    gateway::Outcome::Refused
                } else {
                    gateway::Outcome::Failed
                };
                token.end(outcome, detail);
                token.finish().await;
                return Err(status);
            }
        };
        token.revalidated(query.clone());
        let executed = gateway::executor::holding(turn.clone(), query.execute_with_plan()).await;
        drop(turn);
        match executed {
            Ok((stream, plan)) => {
                token.executing(plan);
                Ok(Response::new(crate::review::reviewed_stream(
                    token,
                    stream,
                    self.limits.timeout(),
                )))
            }
            Err(e) => {
                token.end(gateway::Outcome::Failed, e.record_text());
                let status = to_status(e);
                token.finish().await;
                Err(status)
            }
        }
    }

    /// Plans and decides `sql` for the caller, in the user's turn ([`Limits::planning_turn`]).
    pub(super) async fn plan(
        &self,
        caller: &Caller,
        sql: &str,
        client: Option<String>,
    ) -> Result<Query, Status> {
        let turn = self
            .limits
            .planning_turn(&caller.principal.user)
            .await
            .inspect_err(|s| crate::metrics::metrics().refused(s))?;
        // Held until the planning really ends, not only the client's call; and the planning
        // runs to its decision record even when the client leaves (a task of its own: the
        // client's call going would drop the record's write, and a statement that held a core
        // for minutes left no trace, round 15 L1).
        let turn = gateway::executor::Hold::new(turn);
        let (gw, who, sql) = (
            self.gateway.clone(),
            caller.principal.clone(),
            sql.to_string(),
        );
        let planning = async move { gw.prepare_audited(&who, &sql, client).await };
        tokio::spawn(gateway::executor::holding(turn, planning))
            .await
            .map_err(|e| internal("planning ended abnormally", e))?
            .map_err(to_status)
            .inspect_err(|s| crate::metrics::metrics().refused(s))
    }
}
