//! A query stops when its client goes away. Alone in its test binary: it reads this process's
//! CPU time, which other tests would add to.

use std::time::Duration;

use futures::StreamExt;

use lakegate_tests::attack::{self, ALICE_PASSWORD, SCENARIO};
use lakegate_tests::{set_scenario, TestServer};

/// User plus system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_result_stream_stops_its_query() {
    let dir = tempfile::tempdir().unwrap();
    let config = attack::build(dir.path()).await;
    let server = TestServer::start(&config).await;
    let mut c = server.login("alice", ALICE_PASSWORD).await;
    set_scenario(&mut c, SCENARIO).await.unwrap();
    // 40^6 = 4·10^9 rows to count: minutes of work.
    let info = c
        .execute(
            "SELECT count(*) FROM hr.employees a, hr.employees b, hr.employees c, \
             hr.employees d, hr.employees e, hr.employees f"
                .into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = c.do_get(ticket).await.unwrap();
    // Let it run, then go away.
    let _ = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await;
    let busy = cpu_seconds();
    drop(stream);
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_seconds() - start;
    assert!(busy > 0.5, "the query never ran ({busy} s of CPU)");
    assert!(used < 0.6, "{used} s of CPU in 3 s after the client left");
    drop(server);
}
