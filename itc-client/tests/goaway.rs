//! A call the server refuses with an HTTP/2 GOAWAY (a server draining to restart) is
//! retryable: tonic reports it as INTERNAL, but the server never took the call.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::time::Duration;

use itc_client::{Client, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/2 frame: (type, flags, stream id, payload).
async fn read_frame(socket: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut header = [0u8; 9];
    socket.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4], stream, payload))
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

/// A bare HTTP/2 server on 127.0.0.1, written frame by frame so that it can refuse the
/// first call deterministically: when the call's HEADERS arrive, it answers GOAWAY
/// (NO_ERROR, last stream 0), so the call was never taken, and keeps the connection open.
async fn refusing_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        socket.write_all(&frame(0x4, 0, &[])).await.unwrap(); // our SETTINGS
        while let Some((kind, flags, _stream, payload)) = read_frame(&mut socket).await {
            match kind {
                // Their SETTINGS (not an ACK): acknowledge.
                0x4 if flags & 0x1 == 0 => socket.write_all(&frame(0x4, 0x1, &[])).await.unwrap(),
                // A call: refuse it, and every other, with GOAWAY.
                0x1 => socket.write_all(&frame(0x7, 0, &[0; 8])).await.unwrap(),
                // PING: answer, so that the connection stays up.
                0x6 if flags & 0x1 == 0 => socket.write_all(&frame(0x6, 0x1, &payload)).await.unwrap(),
                _ => {}
            }
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_call_refused_by_goaway_is_retryable() {
    let uri = refusing_server().await;
    let client = Client::builder(uri)
        .with_retry(RetryPolicy::none())
        .with_request_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), client.get_task("t"))
        .await
        .expect("the call fails rather than hangs")
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Internal), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
}
