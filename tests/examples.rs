//! The examples, exercised: each is compiled in as a module and driven over real sockets.

#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/axum.rs"]
mod axum_example;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/custom_chain.rs"]
mod custom_chain_example;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/hyper.rs"]
mod hyper_example;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/message_filter.rs"]
mod message_filter_example;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use support::*;

async fn echo_once(url: String) {
    let (mut ws, _) = within(tokio_tungstenite::connect_async(url)).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(within(ws.next()).await.unwrap().unwrap(), Message::text("ping"));
    ws.close(None).await.unwrap();
    // Finish the close handshake so that every byte has crossed the proxy.
    while let Some(Ok(_)) = within(ws.next()).await {}
}

#[tokio::test]
async fn axum_example_proxies_ws_and_serves_handlers() {
    let echo = ws_echo().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum_example::app(echo.addr)).await });
    echo_once(format!("ws://{addr}/ws/room")).await;
    let mut c = raw_client(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, rest) = read_head(&mut c).await;
    assert_eq!(status(&head), 200);
    assert_eq!(read_n(&mut c, rest, 19).await, b"plain axum handler\n");
}

#[tokio::test]
async fn hyper_example_serves_then_drains() {
    let echo = ws_echo().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = switchback::Drain::new();
    let server = tokio::spawn(hyper_example::run(
        listener,
        echo.addr,
        async {
            let _ = stopped.await;
        },
        drain.clone(),
        Duration::from_millis(100),
    ));
    let (mut ws, _) = within(tokio_tungstenite::connect_async(format!("ws://{addr}/")))
        .await
        .unwrap();
    ws.send(Message::text("before drain")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::text("before drain")
    );
    stop.send(()).unwrap();
    within(server).await.unwrap().unwrap();
    assert!(drain.is_draining());
    match within(ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
}

#[tokio::test]
async fn custom_chain_example_counts_websocket_payload_only() {
    let echo = ws_echo().await;
    let counts = Arc::new(custom_chain_example::Counts::default());
    let proxy = start(custom_chain_example::stack(echo.addr, counts.clone())).await;
    echo_once(format!("ws://{}/", proxy.addr)).await;
    // Up: "ping" as a 10-byte masked frame, then a 6-byte masked close; down: a 6-byte frame
    // and the 2-byte close reply.
    assert_eq!(counts.up.load(Ordering::Relaxed), 16);
    assert_eq!(counts.down.load(Ordering::Relaxed), 8);

    // `foo` is router-only: its bytes pass the counter by.
    let raw = RawUpstream::bind().await;
    let foo_proxy = start(custom_chain_example::stack(raw.addr, counts.clone())).await;
    let (up_before, down_before) = (
        counts.up.load(Ordering::Relaxed),
        counts.down.load(Ordering::Relaxed),
    );
    let mut client = raw_client(foo_proxy.addr, foo_upgrade("/foo").as_bytes()).await;
    let mut up = raw.accept().await;
    read_head(&mut up).await;
    up.write_all(FOO_101).await.unwrap();
    let (_, rest) = read_head(&mut client).await;
    client.write_all(b"uncounted").await.unwrap();
    assert_eq!(read_n(&mut up, Vec::new(), 9).await, b"uncounted");
    up.write_all(b"also").await.unwrap();
    assert_eq!(read_n(&mut client, rest, 4).await, b"also");
    assert_eq!(counts.up.load(Ordering::Relaxed), up_before);
    assert_eq!(counts.down.load(Ordering::Relaxed), down_before);
}

#[tokio::test]
async fn message_filter_example_wants_the_token_first_and_redacts_a_field() {
    let echo = ws_echo().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = message_filter_example::app(echo.addr, Arc::from("t0ken"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("ws://{addr}/chat/room");
    // Without the token first: 1008, and the upstream is told the client went away.
    let (mut ws, _) = within(tokio_tungstenite::connect_async(&url)).await.unwrap();
    ws.send(Message::text(r#"{"name":"ada"}"#)).await.unwrap();
    match within(ws.next()).await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected 1008, got {other:?}"),
    }
    let mut codes = echo.close_codes;
    assert_eq!(within(codes.recv()).await, Some(1001));
    // With it: the token message goes nowhere, the field is redacted on the way up (so the
    // echo carries the redacted text), other messages pass as they are.
    let (mut ws, _) = within(tokio_tungstenite::connect_async(&url)).await.unwrap();
    ws.send(Message::text(r#"{"token":"t0ken"}"#)).await.unwrap();
    ws.send(Message::text(r#"{"name":"ada","ssn":"078-05-1120"}"#))
        .await
        .unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::text(r#"{"name":"ada","ssn":"[redacted]"}"#)
    );
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::text("not json")
    );
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::binary(vec![1, 2, 3])
    );
    // A second tunnel has its own guard: it must send the token too.
    let (mut other, _) = within(tokio_tungstenite::connect_async(&url)).await.unwrap();
    other.send(Message::text("hello")).await.unwrap();
    assert!(matches!(
        within(other.next()).await.unwrap().unwrap(),
        Message::Close(Some(_))
    ));
}
