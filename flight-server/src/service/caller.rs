//! Who is calling: the bearer token resolved to a session, the scenario it runs under, and the
//! client's address.

use super::*;

/// Who is calling: the session token and the principal it acts as.
pub(super) struct Caller {
    pub(super) token: String,
    pub(super) principal: Principal,
}

impl LakegateService {
    /// Authenticates a call by its bearer token and works out its scenario.
    pub(super) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let metadata = request.metadata();
        // Resolved by the gate already (the served path); resolved here otherwise.
        let (token, session) = match request.extensions().get::<crate::gate::GatedSession>() {
            Some(gated) => (gated.token.clone(), gated.session.clone()),
            None => {
                let token = bearer(metadata).ok_or_else(|| auth_status(AuthError::NoToken))?;
                let session = self.sessions.resolve(&token).map_err(auth_status)?;
                (token, session)
            }
        };
        let header = metadata
            .get(SCENARIO_HEADER)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| Status::invalid_argument("x-lakegate-scenario is not ASCII text"))
            })
            .transpose()?
            .filter(|s| !s.is_empty());
        if session.pinned && header.is_some() && header != session.scenario {
            return Err(auth_status(AuthError::Pinned(
                session.scenario.unwrap_or_default(),
            )));
        }
        let scenario = header
            .or(session.scenario)
            .or_else(|| self.sessions.default_scenario(&session.user));
        Ok(Caller {
            token,
            principal: Principal {
                user: session.user,
                scenario,
            },
        })
    }
}

/// The client's address, for the audit trail.
pub(super) fn client<T>(request: &Request<T>) -> Option<String> {
    crate::connections::peer(request).map(|a| a.to_string())
}

/// The bearer token of a call's `authorization` header.
fn bearer(metadata: &MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    crate::auth::bearer_token(value).map(str::to_string)
}
