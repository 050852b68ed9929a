//! Shared by the examples: an in-process ITC server (in memory, on 127.0.0.1:0) unless
//! `--addr URI` names a running one.

#![allow(dead_code, unreachable_pub)] // each example uses a part of it

use itc_client::Client;
use tokio::sync::oneshot;

/// The server the example talks to; an in-process one stops when this is dropped.
pub struct Server {
    /// Where it is.
    pub uri: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `--addr URI` from the command line, or an in-process server.
pub async fn server() -> Result<Server, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--addr") {
        let uri = args
            .get(i + 1)
            .ok_or("--addr needs a URI, e.g. http://127.0.0.1:50051")?;
        return Ok(Server {
            uri: uri.clone(),
            stop: None,
        });
    }
    let settings = itc_server::config::Settings {
        in_memory: true,
        stream_interval: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let uri = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(itc_server::serve(listener, settings, async {
        let _ = stopped.await;
    }));
    println!("(in-process ITC server at {uri}; pass --addr URI to use a running one)");
    Ok(Server { uri, stop: Some(stop) })
}

/// A client of the server.
pub async fn client(server: &Server) -> Result<Client, Box<dyn std::error::Error>> {
    Ok(Client::connect(server.uri.clone()).await?)
}
