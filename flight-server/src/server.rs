//! Binding and serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;

use gateway::Gateway;
use lake_config::Config;

use crate::auth::Sessions;
use crate::connections::{ConnectionBounds, ConnectionLimits, Limited};
use crate::LakegateService;

/// A bound, not yet serving, lakegate server.
pub struct Server {
    listener: TcpListener,
    service: LakegateService,
    gateway: Arc<Gateway>,
    anchor_interval: Duration,
    /// How long running calls may take to finish after a shutdown signal.
    grace: Duration,
    /// `[server.tls]`, loaded.
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// `[server] metrics_listen`, bound.
    metrics: Option<TcpListener>,
    sessions: Arc<Sessions>,
    connections: Arc<ConnectionLimits>,
}

/// The largest message a client may send: a command, a ticket, a row of parameters (their
/// values obey `[execution] max_sql_bytes` in all). tonic reads a whole message before the
/// service sees it, so this is what one call can make the server hold.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The largest health-check message: unauthenticated, so small (tonic's default is 4 MiB: 200
/// streams of almost 4 MiB each held 4.4 GB without a login, attacker round 9).
const MAX_HEALTH_MESSAGE_BYTES: usize = 4 << 10;

/// Concurrent streams one HTTP/2 connection may open.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How often the policy folder is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(2);

impl Server {
    /// Opens the gateway for `config` and binds `listen` (or the configured address).
    pub async fn bind(config: &Config, listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        let gateway = Arc::new(Gateway::open_serving(config).await?);
        let ttl = Duration::from_secs(config.server.token_ttl_secs);
        let jwt = config
            .jwt
            .as_ref()
            .map(crate::jwt::JwtVerifier::new)
            .transpose()?;
        let sessions = Arc::new(Sessions::new(&config.users, ttl).with_jwt(jwt));
        let service = LakegateService::new(
            gateway.clone(),
            sessions.clone(),
            ttl,
            crate::limits::Limits::new(&config.execution),
        );
        let tls = config.server.tls.as_ref().map(tls_config).transpose()?;
        let addr = listen.unwrap_or(config.server.listen);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let metrics = match config.server.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} ([server] metrics_listen): {e}")
            })?),
            None => None,
        };
        let connections =
            ConnectionLimits::new(crate::connections::fitted_to_file_limit(ConnectionBounds {
                total: config.server.max_connections,
                per_client: config.server.max_connections_per_client,
                login_within: Duration::from_secs(config.server.login_timeout_secs),
                per_user: crate::connections::MAX_CONNECTIONS_PER_USER,
            }));
        Ok(Self {
            connections,
            metrics,
            sessions,
            listener,
            service,
            gateway,
            anchor_interval: Duration::from_secs(config.audit.anchor_interval_secs),
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            tls,
        })
    }

    /// Where `GET /metrics` is served, when `[server] metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The gateway it serves.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Whether it serves TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        // The one line operators and tests wait for.
        println!("lakegate listening on {addr}");
        tracing::info!(%addr, "lakegate listening");
        let reloader = tokio::spawn(reload_policies(self.gateway.clone()));
        let anchorer = tokio::spawn(anchor_audit(self.gateway.clone(), self.anchor_interval));
        let sessions = self.sessions.clone();
        let accel = self.gateway.lake().accelerator().cloned();
        let metrics = self
            .metrics
            .map(|l| tokio::spawn(crate::metrics::serve(l, sessions, accel)));
        // Once `shutdown` fires, tonic stops accepting and lets running calls finish; past the
        // grace period the rest are dropped (their streams record `cancelled`).
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                stopping.notify_one();
            }
        };
        // grpc.health.v1: the server ("") and the Flight service report SERVING until shutdown.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<FlightServiceServer<crate::front::Front>>()
            .await;
        let signal = {
            let health = health.clone();
            async move {
                signal.await;
                health
                    .set_not_serving::<FlightServiceServer<crate::front::Front>>()
                    .await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
        };
        // Streams per connection bounded (unbounded by default: 200,000 health watches on a
        // few connections held 2 GB without a login).
        let mut builder =
            tonic::transport::Server::builder().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        let accepted = self.connections.clone().accept(self.listener);
        let incoming: Connections = if self.tls.is_some() {
            Box::pin(crate::plaintext::tls_connections(accepted))
        } else {
            Box::pin(accepted)
        };
        if let Some(tls) = self.tls.clone() {
            builder = builder
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("cannot serve TLS ([server.tls]): {e}"))?;
        }
        let serving = builder
            .layer(crate::gate::AuthGateLayer::new(self.sessions.clone()))
            // Health checks carry a service name: anything larger is no health check.
            .add_service(health_service.max_decoding_message_size(MAX_HEALTH_MESSAGE_BYTES))
            .add_service(
                FlightServiceServer::new(crate::front::Front(Arc::new(self.service)))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(64 * 1024 * 1024),
            )
            .serve_with_incoming_shutdown(incoming, signal);
        let grace = self.grace;
        let drained = tokio::select! {
            served = serving => {
                served?;
                true
            }
            _ = async {
                stopping.notified().await;
                tracing::info!(grace_secs = grace.as_secs(), "running calls may finish");
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over: cancelling the calls still running");
                false
            }
        };
        reloader.abort();
        anchorer.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        // A last anchor on a clean shutdown.
        let anchored = match self.gateway.anchor_audit(true).await {
            Ok(a) => a.map(|a| a.seq),
            Err(e) => {
                tracing::error!("cannot anchor the audit trail: {e}");
                None
            }
        };
        let (head, _) = self.gateway.audit_log().head();
        tracing::info!(drained, audit_head = head.seq, anchored = ?anchored, "lakegate stopped");
        Ok(())
    }
}

/// `[server.tls]` read from its PEM files; errors name the file.
fn tls_config(tls: &lake_config::TlsConfig) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    crate::tls::install_crypto_provider();
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read [server.tls] {what} {}: {e}", path.display()))
    };
    let identity =
        tonic::transport::Identity::from_pem(read("cert", &tls.cert)?, read("key", &tls.key)?);
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "client_ca",
            ca,
        )?));
    }
    // tonic parses the PEM when the server is built: fail here, at start, naming the setting.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| anyhow::anyhow!("[server.tls]: the certificate or key is not usable: {e}"))?;
    Ok(config)
}

/// Binds and serves until SIGTERM or SIGINT (Ctrl-C).
pub async fn serve(config: &Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    // The handlers first: a signal that arrives once "listening" is printed must drain, not
    // kill the process with the default action.
    let shutdown = shutdown_signal();
    let server = Server::bind(config, listen).await?;
    server.run(shutdown).await
}

/// Resolves on SIGTERM (what service managers send) or SIGINT, and says which. The handlers are
/// installed when this is called (inside a Tokio runtime), not when the future is first polled.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let on = |s: &mut Option<tokio::signal::unix::Signal>| {
            let s = s.take();
            async move {
                match s {
                    Some(mut s) => s.recv().await,
                    None => std::future::pending().await,
                }
            }
        };
        let name = tokio::select! {
            _ = on(&mut term) => "SIGTERM",
            _ = on(&mut int) => "SIGINT",
        };
        tracing::info!("{name}: no new calls; draining the running ones");
    }
}

/// Reloads the policy folder when its files change, and on SIGHUP.
async fn reload_policies(gateway: Arc<Gateway>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(POLICY_POLL);
    loop {
        let sighup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {
                if let Some(result) = gateway.reload_if_changed().await {
                    crate::metrics::metrics().reloaded(result.is_ok());
                }
            }
            _ = sighup => {
                tracing::info!("SIGHUP: reloading the policy folder");
                let result = gateway.reload_policies().await;
                crate::metrics::metrics().reloaded(result.is_ok());
            }
        }
    }
}

/// Anchors the audit chain to the lake when a segment closes (checked every second) and at the
/// configured interval; exports closed segments to `lakegate_audit.queries`.
async fn anchor_audit(gateway: Arc<Gateway>, interval: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        match gateway.export_audit().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                segments = n,
                "audit segments exported to lakegate_audit.queries"
            ),
            Err(e) => tracing::error!("cannot export the audit trail: {e}"),
        }
        let force = last.elapsed() >= interval;
        match gateway.anchor_audit(force).await {
            Ok(Some(a)) => {
                last = tokio::time::Instant::now();
                tracing::info!(seq = a.seq, "audit trail anchored");
            }
            Ok(None) => {
                if force {
                    last = tokio::time::Instant::now();
                }
            }
            Err(e) => tracing::error!("cannot anchor the audit trail: {e}"),
        }
    }
}

/// The connections a server takes.
type Connections =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Limited>> + Send>>;
