//! `[server.tls]` end to end: the Rust Flight SQL client over TLS with the CA; a plaintext
//! client against a TLS server fails and the server keeps serving; mutual TLS refuses clients
//! without a certificate the CA signed; unusable certificate files stop the server at start.

use arrow_flight::sql::client::FlightSqlServiceClient;
use lake_config::{Config, TlsConfig};
use lakegate_tests::{first_i64, query, set_scenario, shared_demo, TestServer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn tls_demo(client_ca: bool) -> (Config, flight_server::tls::TlsFiles) {
    flight_server::tls::install_crypto_provider();
    let dir = lakegate_tests::scratch_dir("lakegate-tls-");
    let files = flight_server::tls::generate(&dir).unwrap();
    let mut config = Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    config.server.tls = Some(TlsConfig {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: client_ca.then(|| files.ca.clone()),
    });
    (config, files)
}

async fn connect(
    server: &TestServer,
    tls: Option<ClientTlsConfig>,
) -> Result<FlightSqlServiceClient<Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", server.addr)).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut c = FlightSqlServiceClient::new(channel);
    c.handshake("banker", "banker-demo")
        .await
        .map_err(|e| e.to_string())?;
    set_scenario(&mut c, "bank-credit").await?;
    Ok(c)
}

fn trusting(files: &flight_server::tls::TlsFiles) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
        .domain_name("localhost")
}

const SQL: &str = "SELECT count(*) FROM market.enterprises";

#[tokio::test]
async fn queries_run_over_tls_and_plaintext_clients_are_turned_away() {
    let (config, files) = tls_demo(false);
    let server = TestServer::start_with(&config).await;
    let mut c = connect(&server, Some(trusting(&files))).await.unwrap();
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);

    // Plaintext against TLS: an error, and the server goes on serving TLS clients.
    let plain = connect(&server, None).await;
    assert!(
        plain.is_err(),
        "a plaintext client was served by a TLS server"
    );
    // ... which says what to do.
    let err = plain.err().unwrap_or_default();
    assert!(err.contains("accepts TLS connections only"), "{err}");
    assert!(err.contains("grpc+tls://"), "{err}");
    // A client that does not trust the server's CA is refused by its own TLS check.
    let untrusting = ClientTlsConfig::new().domain_name("localhost");
    assert!(connect(&server, Some(untrusting)).await.is_err());
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_the_ca_signed() {
    let (config, files) = tls_demo(true);
    let server = TestServer::start_with(&config).await;
    let without = connect(&server, Some(trusting(&files))).await;
    assert!(
        without.is_err(),
        "a client without a certificate was served"
    );
    let identity = Identity::from_pem(
        std::fs::read(&files.client_cert).unwrap(),
        std::fs::read(&files.client_key).unwrap(),
    );
    let mut c = connect(&server, Some(trusting(&files).identity(identity)))
        .await
        .unwrap();
    assert_eq!(first_i64(&query(&mut c, SQL).await.unwrap()), 200);
    // A certificate from another CA is refused.
    let other = flight_server::tls::generate(&files.ca.with_file_name("other")).unwrap();
    let foreign = Identity::from_pem(
        std::fs::read(&other.client_cert).unwrap(),
        std::fs::read(&other.client_key).unwrap(),
    );
    assert!(connect(&server, Some(trusting(&files).identity(foreign)))
        .await
        .is_err());
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_server_at_start_and_name_the_setting() {
    let (mut config, files) = tls_demo(false);
    config.server.tls.as_mut().unwrap().cert = files.ca.with_file_name("missing.pem");
    let err = flight_server::Server::bind(&config, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .err()
        .expect("bound with a missing certificate")
        .to_string();
    assert!(err.contains("[server.tls] cert"), "{err}");
    let garbage = files.ca.with_file_name("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    config.server.tls.as_mut().unwrap().cert = garbage;
    let err = flight_server::Server::bind(&config, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .err()
        .expect("bound with a garbage certificate")
        .to_string();
    assert!(err.contains("[server.tls]"), "{err}");
}
