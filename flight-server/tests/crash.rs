//! `kill -9` in the middle of load: the server restarts and the audit chain still verifies.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

fn lakegate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(args)
        .env("LAKEGATE_LOG", "warn")
        .output()
        .unwrap()
}

/// Starts `lakegate serve` and waits for its ready line.
fn serve(config: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .args(["serve", "--config", config, "--listen", "127.0.0.1:0"])
        .env("LAKEGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(a) = line.strip_prefix("lakegate listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

async fn run_queries(addr: String) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightSqlServiceClient::new(channel);
    c.handshake("banker", "banker-demo").await.unwrap();
    c.set_header("x-lakegate-scenario", "bank-credit");
    loop {
        let Ok(info) = c
            .execute(
                "SELECT district, count(*) FROM market.penalties GROUP BY district".into(),
                None,
            )
            .await
        else {
            return;
        };
        let Some(ticket) = info.endpoint[0].ticket.clone() else {
            return;
        };
        let Ok(stream) = c.do_get(ticket).await else {
            return;
        };
        if stream.try_collect::<Vec<_>>().await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn the_chain_survives_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(
        lakegate(&["demo", "--dir", d, "--rows", "1000", "--build-only"])
            .status
            .success()
    );
    let config = dir.path().join("lakegate.toml");
    let c = config.to_str().unwrap();

    let (mut child, addr) = serve(c);
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(run_queries(addr.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for client in clients {
        let _ = client.await;
    }

    // Restart: the log is reopened (a torn tail, if any, is cut and recorded), and serves.
    let (mut child, addr) = serve(c);
    tokio::time::timeout(Duration::from_secs(2), run_queries(addr))
        .await
        .ok();
    child.kill().unwrap();
    child.wait().unwrap();

    let out = lakegate(&["audit", "verify", "--config", c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: u64 = text
        .strip_prefix("ok: ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(records > 10, "{text}");
}
