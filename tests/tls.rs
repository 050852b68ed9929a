//! TLS and mTLS end to end, with certificates made at test time (rcgen): the SDK over
//! TLS, refused over plaintext or against another CA; client certificates required when
//! `tls_client_ca_file` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::{DEADLINE, TestServer, memory};
use itc_client::{Client, EventType, StartTask};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_stream::StreamExt;

/// A CA, and certificates it signs, written as PEM files.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses): (chain PEM, key PEM).
    fn sign(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A server with TLS (and, with `client_ca`, required client certificates).
async fn tls_server(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TestServer {
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    let settings = itc_server::config::Settings {
        tls_cert_file: Some(write(dir, "server.pem", &cert)),
        tls_key_file: Some(write(dir, "server.key", &key)),
        tls_client_ca_file: client_ca.map(|ca| write(dir, "client-ca.pem", &ca.pem)),
        ..memory()
    };
    TestServer::start_with(settings).await
}

fn https(server: &TestServer) -> String {
    format!("https://{}", server.addr)
}

/// A round trip that needs the connection: a task and its event on a subscription.
async fn works(client: &Client, task: &str) {
    let mut events = client
        .subscribe()
        .task(task)
        .events([EventType::TaskStarted])
        .start()
        .await
        .unwrap();
    client
        .start_task(StartTask::new("agent", "over TLS").with_task_id(task))
        .await
        .unwrap();
    let event = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    assert_eq!(event.task_id.as_deref(), Some(task));
}

#[tokio::test]
async fn the_sdk_talks_tls_and_nothing_else_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("itc test CA");
    let server = tls_server(dir.path(), &ca, None).await;

    // By IP address (the certificate names it), and by DNS name.
    let client = Client::builder(https(&server))
        .with_ca_certificate(ca.pem.clone())
        .connect()
        .await
        .unwrap();
    works(&client, "t1").await;
    let by_name = Client::builder(format!("https://localhost:{}", server.addr.port()))
        .with_ca_certificate(ca.pem.clone())
        .connect()
        .await
        .unwrap();
    works(&by_name, "t2").await;

    // Plaintext gets nothing: the connection, or the first call, fails.
    let plain = match Client::connect(server.uri()).await {
        Ok(client) => client.get_task("t1").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(plain.is_err(), "plaintext reached a TLS server");

    // Another CA's view of the server: the handshake fails.
    let stranger = Ca::new("another CA");
    let refused = Client::builder(https(&server))
        .with_ca_certificate(stranger.pem.clone())
        .connect()
        .await;
    assert!(refused.is_err(), "a certificate from an untrusted CA was accepted");
    // A name the certificate does not carry.
    let refused = Client::builder(https(&server))
        .with_ca_certificate(ca.pem.clone())
        .with_tls_domain("itc.example.com")
        .connect()
        .await;
    assert!(refused.is_err(), "a certificate for other names was accepted");
}

#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("itc server CA");
    let clients = Ca::new("itc client CA");
    let server = tls_server(dir.path(), &ca, Some(&clients)).await;

    let (cert, key) = clients.sign(&["agent-1"]);
    let client = Client::builder(https(&server))
        .with_ca_certificate(ca.pem.clone())
        .with_client_identity(cert, key)
        .connect()
        .await
        .unwrap();
    works(&client, "t1").await;

    // No client certificate, or one from another CA: refused.
    for identity in [None, Some(Ca::new("rogue CA").sign(&["agent-1"]))] {
        let mut builder = Client::builder(https(&server)).with_ca_certificate(ca.pem.clone());
        let presented = identity.is_some();
        if let Some((cert, key)) = identity {
            builder = builder.with_client_identity(cert, key);
        }
        let outcome = match builder.connect().await {
            Ok(client) => client.get_task("t1").await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(
            outcome.is_err(),
            "accepted a client (certificate presented: {presented})"
        );
    }
}

/// TLS options with an http:// URI are refused: tonic would silently connect in
/// plaintext, and send the token there.
#[tokio::test]
async fn tls_options_need_an_https_uri() {
    let ca = Ca::new("any CA");
    let err = Client::builder("http://127.0.0.1:1")
        .with_ca_certificate(ca.pem.clone())
        .with_auth_token("secret")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, itc_client::Error::InvalidUri { .. }), "{err}");
    assert!(err.to_string().contains("need an https:// URI"), "{err}");
    let builder = Client::builder("https://127.0.0.1:1").with_auth_token("secret");
    assert!(
        !format!("{builder:?}").contains("secret"),
        "the token stays out of Debug output"
    );
}

#[tokio::test]
async fn a_bad_tls_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = itc_server::config::Settings {
        tls_cert_file: Some(dir.path().join("missing.pem")),
        tls_key_file: Some(dir.path().join("missing.key")),
        ..memory()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = itc_server::serve(listener, settings, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls_cert_file") && err.contains("missing.pem"), "{err}");

    let key_only = itc_server::config::Settings {
        tls_key_file: Some(dir.path().join("k.pem")),
        ..memory()
    };
    assert!(key_only.validate().unwrap_err().to_string().contains("tls_cert_file"));
}
