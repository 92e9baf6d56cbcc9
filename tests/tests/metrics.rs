//! `[server] metrics_listen`: Prometheus scrapes queries by outcome, refusals by code, latency,
//! bytes out, running queries and audit write latency over plain HTTP.

use std::io::{Read, Write};

use lake_config::Config;
use lakegate_tests::{first_i64, query, set_scenario, shared_demo};

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: lakegate\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_queries_refusals_latency_and_bytes() {
    let mut config = Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    config.audit.dir = lakegate_tests::scratch_dir("lakegate-audit-");
    config.server.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    // A policy folder of its own, to change while it serves.
    let policies = lakegate_tests::scratch_dir("lakegate-");
    for f in std::fs::read_dir(&config.policy.dir).unwrap().flatten() {
        std::fs::copy(f.path(), policies.join(f.file_name())).unwrap();
    }
    config.policy.dir = policies.clone();
    let server = flight_server::Server::bind(&config, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let (addr, metrics) = (server.local_addr().unwrap(), server.metrics_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    c.handshake("banker", "banker-demo").await.unwrap();
    set_scenario(&mut c, "bank-credit").await.unwrap();
    let sql = "SELECT count(*) FROM market.enterprises";
    assert_eq!(first_i64(&query(&mut c, sql).await.unwrap()), 200);
    assert!(query(&mut c, "SELECT * FROM health.visits").await.is_err());

    // A change to the policy folder is reloaded within seconds, and counted.
    let cedar = std::fs::read_dir(&policies)
        .unwrap()
        .flatten()
        .map(|f| f.path())
        .find(|p| p.extension().is_some_and(|e| e == "cedar"))
        .unwrap();
    let mut text_of = std::fs::read_to_string(&cedar).unwrap();
    text_of.push_str("\n// touched by the metrics test\n");
    std::fs::write(&cedar, text_of).unwrap();
    let mut text = String::new();
    for _ in 0..50 {
        text = tokio::task::spawn_blocking(move || scrape(metrics))
            .await
            .unwrap();
        if text.contains("lakegate_policy_reloads_total{result=\"ok\"}") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for expected in [
        "lakegate_queries_total{outcome=\"completed\"}",
        "lakegate_refusals_total{code=\"InvalidArgument\"}",
        "lakegate_query_duration_seconds_bucket",
        "lakegate_bytes_out_total",
        "lakegate_running_queries",
        "lakegate_active_sessions 1",
        "lakegate_audit_write_seconds_count",
        "lakegate_policy_reloads_total{result=\"ok\"}",
    ] {
        assert!(text.contains(expected), "no {expected} in:\n{text}");
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
