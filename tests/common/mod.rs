//! Shared harness of the end-to-end tests: a real server on `127.0.0.1:0`, bound before
//! it is served (no sleeps), stopped through its shutdown signal.

#![allow(dead_code, unreachable_pub)] // each test crate uses a part of the harness

use std::net::SocketAddr;
use std::time::Duration;

use itc_server::config::Settings;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves `/metrics` (only [`TestServer::start_with_metrics`]).
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), itc_server::ServeError>>>,
}

impl TestServer {
    /// Starts a server with default settings, in memory.
    pub async fn start() -> Self {
        Self::start_with(memory()).await
    }

    /// Starts a server with `settings` (its `listen` is ignored: it binds 127.0.0.1:0).
    pub async fn start_with(settings: Settings) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("address"), settings).await
    }

    /// Starts a server on `addr` (a loopback address; port 0 for any), e.g. the address
    /// of a server that was stopped, to restart it where clients expect it.
    pub async fn start_on(addr: SocketAddr, settings: Settings) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind a loopback address");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(itc_server::serve(listener, settings, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr: None,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts a server with `settings` and Prometheus metrics, both on 127.0.0.1:0 (bound
    /// first, so `metrics_addr` is known before it serves).
    pub async fn start_with_metrics(settings: Settings) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback address");
        let addr = listener.local_addr().expect("local addr");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback address");
        let metrics_addr = metrics.local_addr().expect("metrics local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(itc_server::serve_with_metrics(listener, metrics, settings, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr: Some(metrics_addr),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A raw tonic channel to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.uri())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// The SDK client.
    pub async fn client(&self) -> itc_client::Client {
        itc_client::Client::connect(self.uri()).await.expect("connect")
    }

    /// Signals shutdown and waits (bounded) for the server to return.
    pub async fn stop(mut self) -> Result<(), itc_server::ServeError> {
        self.signal_shutdown();
        let handle = self.handle.take().expect("not stopped twice");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("server stops within 30 s")
            .expect("server task does not panic")
    }

    /// Signals shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

/// Default settings with the in-memory store (tests that want the durable one set a
/// temporary `data_dir`).
pub fn memory() -> Settings {
    Settings {
        in_memory: true,
        ..Settings::default()
    }
}

/// The next message of a raw Subscribe stream, within [`DEADLINE`].
pub async fn next_event(stream: &mut tonic::Streaming<itc_proto::v1::SubscribeResponse>) -> itc_proto::v1::Event {
    use tokio_stream::StreamExt;
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("an event before the deadline")
        .expect("the stream goes on")
        .expect("no error")
        .event
        .expect("an event")
}

/// A deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A TCP proxy on 127.0.0.1 in front of a server, whose connections can be cut hard (no
/// STREAM_END, no GOAWAY): what a network failure looks like to a client.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    /// Drops every open connection at once; new ones are still accepted.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
