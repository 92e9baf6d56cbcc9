//! The gate in front of every call: a call other than the handshake and the health check must
//! carry a bearer token that names a live session (or a valid JWT) before its message is read.
//!
//! tonic decodes a unary call's whole request message (up to the decoding limit) before the
//! service sees it, so without the gate anybody who can open a connection could make the server
//! hold that much memory per call, many calls at a time, without an account. Refused here, the
//! call costs its headers only. The service checks the token again (and the scenario) as before.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};

use crate::auth::{AuthError, Session, Sessions};

/// The session the gate resolved for a call, in the call's extensions: the service takes it
/// from there instead of resolving (for a JWT: verifying) the same token a second time.
#[derive(Clone, Debug)]
pub struct GatedSession {
    /// The bearer token the call carried.
    pub token: String,
    /// What it names.
    pub session: Session,
}

/// Calls that carry no token: the login itself and the standard health check. (`Watch` keeps a
/// stream open for as long as the client likes: with a token only.)
fn open_path(path: &str) -> bool {
    path == "/arrow.flight.protocol.FlightService/Handshake"
        || path == "/grpc.health.v1.Health/Check"
}

/// A [`tower_layer::Layer`] putting an [`AuthGate`] in front of the served routes.
#[derive(Clone)]
pub struct AuthGateLayer {
    sessions: Arc<Sessions>,
}

impl AuthGateLayer {
    /// A gate that checks tokens against `sessions`.
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

impl<S> tower_layer::Layer<S> for AuthGateLayer {
    type Service = AuthGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthGate {
            inner,
            sessions: self.sessions.clone(),
        }
    }
}

/// Refuses a call without a live bearer token before its body is read.
#[derive(Clone)]
pub struct AuthGate<S> {
    inner: S,
    sessions: Arc<Sessions>,
}

impl<S> AuthGate<S> {
    /// The call's session (`None` for the open paths), or why it may not proceed.
    fn session(&self, request: &Request<Body>) -> Result<Option<GatedSession>, AuthError> {
        if open_path(request.uri().path()) {
            return Ok(None);
        }
        let token = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer_token)
            .ok_or(AuthError::NoToken)?;
        let session = self.sessions.resolve(token)?;
        Ok(Some(GatedSession {
            token: token.to_string(),
            session,
        }))
    }
}

impl<S> Service<Request<Body>> for AuthGate<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.session(&request) {
            Err(e) => {
                let status = crate::service::auth_status(e);
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(gated) => {
                if let Some(gated) = gated {
                    // A live token: the connection has logged in and may stay (within the
                    // user's share of connections).
                    if let Some(conn) = crate::connections::conn_of(request.extensions()) {
                        if let Err(refused) = conn.state.authenticated(&gated.session.user) {
                            let status = tonic::Status::resource_exhausted(refused);
                            return Box::pin(async move { Ok(status.into_http()) });
                        }
                    }
                    request.extensions_mut().insert(gated);
                }
                Box::pin(self.inner.call(request))
            }
        }
    }
}
