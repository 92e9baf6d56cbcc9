//! A query's results under `[execution] query_timeout_secs`, whether or not its client reads.
//!
//! The query runs in a task of its own that hands batches to the client through a buffer of
//! [`BUFFERED`] batches. At the deadline the task drops the execution (cancelling it and giving
//! back its memory), empties the buffer and gives back the query's slot — even while the client
//! has stopped reading (attacker round 26 M2: a paused client kept a query, its slot and its
//! pool share past the timeout; round 28 F3: a query executed to the end kept them while its
//! last batches waited for the client). A query is timed from its start to its last batch
//! taken: a client that has not read everything by the deadline gets the timeout, never a cut
//! result as if complete. A client that goes away cancels the query at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use datafusion::arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::GatewayError;

/// Batches executed ahead of the client.
const BUFFERED: usize = 2;

type Item = Result<RecordBatch, GatewayError>;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Executing.
    Running,
    /// Executed to the end; what is left is in the buffer.
    Done,
    /// Past the deadline: execution dropped, buffer emptied.
    TimedOut,
    /// The client went away.
    Gone,
}

struct Pipe {
    state: Mutex<(VecDeque<Item>, Run)>,
    /// Wakes the client: a batch, the end, or the timeout.
    to_client: Notify,
    /// Wakes the task: room in the buffer, or the client gone.
    to_task: Notify,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Item>, Run)> {
        self.state.lock().expect("query pipe poisoned")
    }
}

/// Ends the run when the client's side is dropped.
struct ClientSide(Arc<Pipe>);

impl Drop for ClientSide {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.0.clear();
        s.1 = Run::Gone;
        drop(s);
        self.0.to_task.notify_one();
    }
}

/// `stream` run until `deadline`. `timed_out` runs once in the task when the deadline cut the
/// run (the execution is dropped by then); `released` runs once when the run no longer needs
/// its slot: the client took the last batch, went away, or the deadline passed.
pub(crate) fn run_until(
    stream: BoxStream<'static, Item>,
    deadline: Instant,
    reason: String,
    timed_out: impl FnOnce() + Send + 'static,
    released: impl FnOnce() + Send + 'static,
) -> BoxStream<'static, Item> {
    let pipe = Arc::new(Pipe {
        state: Mutex::new((VecDeque::new(), Run::Running)),
        to_client: Notify::new(),
        to_task: Notify::new(),
    });
    let task = pipe.clone();
    tokio::spawn(async move {
        let pipe = task;
        let mut stream = Some(stream);
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            let (room, run) = {
                let s = pipe.lock();
                (s.0.len() < BUFFERED, s.1)
            };
            match run {
                Run::Gone => return released(),
                Run::Done if pipe.lock().0.is_empty() => return released(),
                _ => {}
            }
            let waiting = pipe.to_task.notified();
            tokio::select! {
                biased;
                _ = &mut timer => {
                    drop(stream.take());
                    let mut s = pipe.lock();
                    if s.1 == Run::Gone {
                        return released();
                    }
                    s.0.clear();
                    s.1 = Run::TimedOut;
                    drop(s);
                    pipe.to_client.notify_one();
                    timed_out();
                    return released();
                }
                _ = waiting => {}
                item = async { stream.as_mut().expect("running").next().await },
                    if room && run == Run::Running =>
                {
                    let mut s = pipe.lock();
                    if s.1 == Run::Gone {
                        return released();
                    }
                    match item {
                        Some(item) => s.0.push_back(item),
                        None => {
                            s.1 = Run::Done;
                            drop(stream.take());
                        }
                    }
                    drop(s);
                    pipe.to_client.notify_one();
                }
            }
        }
    });
    let client = ClientSide(pipe);
    futures::stream::unfold(Some(client), move |client| {
        let reason = reason.clone();
        async move {
            let client = client?;
            let pipe = client.0.clone();
            loop {
                let waiting = pipe.to_client.notified();
                {
                    let mut s = pipe.lock();
                    if let Some(item) = s.0.pop_front() {
                        drop(s);
                        pipe.to_task.notify_one();
                        return Some((item, Some(client)));
                    }
                    match s.1 {
                        Run::Running => {}
                        Run::Done => {
                            drop(s);
                            pipe.to_task.notify_one();
                            return None;
                        }
                        Run::TimedOut | Run::Gone => {
                            return Some((Err(GatewayError::Timeout(reason)), None));
                        }
                    }
                }
                waiting.await;
            }
        }
    })
    .boxed()
}
