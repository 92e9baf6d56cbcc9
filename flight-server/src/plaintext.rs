//! A TLS server's answer to plaintext clients: a gRPC error that says so.
//!
//! Without it a client that dials `grpc://` at a TLS port sees its own transport's complaint
//! ("error reading server preface", "frame too large"). Each accepted connection is peeked at:
//! the start of an HTTP/2 preface (`PRI * HTTP/2.0`) is a plaintext gRPC client, answered over
//! plaintext HTTP/2 (h2, the HTTP/2 of tonic's own stack) with UNAVAILABLE naming `grpc+tls://`,
//! and closed; anything else goes on to the TLS handshake.

use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpStream;

use crate::connections::Limited;

/// How long a connection may take to send its first bytes, and a plaintext one to be answered.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// How long a connection refused for a bound may take to be answered.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// gRPC's UNAVAILABLE.
const UNAVAILABLE: u8 = 14;

/// The message plaintext gRPC clients get.
pub const PLAINTEXT_REFUSED: &str =
    "this lakegate server accepts TLS connections only: connect with grpc+tls:// and trust the server's CA";

/// The connections of `accepted` that may be TLS; plaintext HTTP/2 clients are answered and
/// dropped on the way.
pub fn tls_connections(
    accepted: impl tokio_stream::Stream<Item = std::io::Result<Limited>> + Send + 'static,
) -> impl tokio_stream::Stream<Item = std::io::Result<Limited>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Limited>>(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            // Stops with the server, which drops the receiving end.
            let conn = tokio::select! {
                _ = tx.closed() => break,
                conn = accepted.next() => match conn {
                    Some(Ok(conn)) => conn,
                    Some(Err(e)) => {
                        tracing::debug!("accept: {e}");
                        continue;
                    }
                    None => break,
                },
            };
            // Peeking waits for the client: never in the accept loop.
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(FIRST_BYTES, plaintext_http2(conn.tcp())).await {
                    Ok(true) => answer(conn, UNAVAILABLE, PLAINTEXT_REFUSED, FIRST_BYTES).await,
                    Ok(false) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(_) => {} // silent: dropped
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Answers a plaintext gRPC client with `code` and `message` and closes the connection; any
/// other client (TLS, or silent for a second) is closed without a word.
pub async fn answer_plaintext(conn: TcpStream, code: u8, message: &str) {
    if let Ok(true) = tokio::time::timeout(REFUSAL_TIME, plaintext_http2(&conn)).await {
        answer(conn, code, message, REFUSAL_TIME).await;
    }
}

/// Whether the connection starts as plaintext HTTP/2 does (TLS starts with 0x16).
async fn plaintext_http2(conn: &TcpStream) -> bool {
    let mut first = [0u8; 4];
    loop {
        match conn.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n < first.len() && b"PRI "[..n] == first[..n] => {
                // Part of the preface so far: wait for the rest.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(_) => return &first == b"PRI ",
        }
    }
}

/// Answers every call of a plaintext HTTP/2 connection with gRPC status `code` and `message`,
/// for at most `time`.
async fn answer<IO>(conn: IO, code: u8, message: &str, time: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let serve = async move {
        let Ok(mut h2) = h2::server::handshake(conn).await else {
            return;
        };
        while let Some(Ok((_request, mut respond))) = h2.accept().await {
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string())
                .header("grpc-message", message)
                .body(())
                .expect("static response");
            let _ = respond.send_response(response, true);
        }
    };
    let _ = tokio::time::timeout(time, serve).await;
}
