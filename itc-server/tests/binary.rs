//! The `itc-server` binary itself: settings from flags, environment and file, validated at
//! start; the listening line; signals and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_itc-server");
const DEADLINE: Duration = Duration::from_secs(20);

fn server() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // Never the working directory's ./itc-data: each run its own, or none.
        .env("ITC_IN_MEMORY", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to its end (bounded) and returns (exit code, stderr).
async fn run_to_end(cmd: &mut Command) -> (Option<i32>, String) {
    let output = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("exits before the deadline")
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A bad value exits non-zero with a message naming the setting, whichever source it came
/// from.
#[tokio::test]
async fn bad_settings_exit_non_zero_naming_the_setting() {
    let (code, stderr) = run_to_end(server().args(["--stream-interval", "-1", "--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("stream_interval"), "{stderr}");

    let (code, stderr) = run_to_end(
        server()
            .env("ITC_MAX_CONCURRENT_COORDINATORS", "0")
            .args(["--listen", "127.0.0.1:0"]),
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("max_concurrent_coordinators"), "{stderr}");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("itc.toml");
    std::fs::write(&file, "coordination_timeout = \"soon\"\n").expect("write config");
    let (code, stderr) = run_to_end(server().arg("--config").arg(&file).args(["--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("coordination_timeout"), "{stderr}");

    // The store settings: a kind or a level that does not exist, a segment too small.
    for (flag, value, named) in [
        ("--store", "bogus", "--store"),
        ("--sync", "always", "--sync"),
        ("--log-segment-bytes", "100", "log_segment_bytes"),
    ] {
        let (code, stderr) = run_to_end(server().args([flag, value, "--listen", "127.0.0.1:0"])).await;
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(named), "{flag} {value}: {stderr}");
    }
    std::fs::write(&file, "store = \"bogus\"\n").expect("write config");
    let (code, stderr) = run_to_end(server().arg("--config").arg(&file)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bogus") && stderr.contains("itc.toml"), "{stderr}");

    std::fs::write(&file, "enable_streeming = false\n").expect("write config");
    let (code, stderr) = run_to_end(server().arg("--config").arg(&file)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("enable_streeming"), "{stderr}");
}

/// Starts the binary and reads its `listening on ADDR` line.
async fn start(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.spawn().expect("spawn itc-server");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("prints its address before the deadline")
        .expect("reads stdout");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

async fn signal_and_wait(mut child: Child, signal: &str) -> (Option<i32>, String) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits before the deadline")
        .expect("waits");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr).await;
    }
    (status.code(), stderr)
}

/// Settings from the file, the environment and flags combine (flags win over the
/// environment, which wins over the file); the effective configuration is logged; SIGTERM
/// and SIGINT both end the server with exit code 0.
#[tokio::test]
async fn sources_combine_and_signals_exit_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("itc.toml");
    std::fs::write(
        &file,
        "max_concurrent_coordinators = 3\nstream_interval = 0.25\ncoordination_timeout = 30\n",
    )
    .expect("write config");
    let (child, addr) = start(
        server()
            .arg("--config")
            .arg(&file)
            .env("ITC_STREAM_INTERVAL", "750ms")
            .env("ITC_COORDINATION_TIMEOUT", "20")
            .args(["--coordination-timeout", "45", "--listen", "127.0.0.1:0"]),
    )
    .await;
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // The server answers on that address.
    let client = itc_proto_client(&addr).await;
    assert!(client);

    let (code, stderr) = signal_and_wait(child, "-TERM").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("max_concurrent_coordinators = 3"), "{stderr}");
    assert!(stderr.contains("stream_interval = 750ms"), "{stderr}");
    assert!(stderr.contains("coordination_timeout = 45s"), "{stderr}");
    assert!(stderr.contains("received SIGTERM"), "{stderr}");

    let (child, _) = start(server().args(["--listen", "127.0.0.1:0"])).await;
    let (code, stderr) = signal_and_wait(child, "-INT").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("received SIGINT"), "{stderr}");
}

/// True once a raw TCP connection to `addr` succeeds.
async fn itc_proto_client(addr: &str) -> bool {
    tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// A port already taken is reported clearly, with a non-zero exit.
#[tokio::test]
async fn busy_port_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = run_to_end(server().args(["--listen", &addr])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&addr),
        "{stderr}"
    );
}

/// `--metrics-listen` (or `ITC_METRICS_LISTEN`) that is not an address, is the gRPC
/// address, or is taken stops the server with exit code 2 and a message naming it.
#[tokio::test]
async fn bad_metrics_listen_exits_two_naming_it() {
    let (code, stderr) = run_to_end(server().args(["--metrics-listen", "nope", "--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");

    let (code, stderr) = run_to_end(
        server()
            .env("ITC_METRICS_LISTEN", "127.0.0.1:http")
            .args(["--listen", "127.0.0.1:0"]),
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("metrics-listen"), "{stderr}");

    let (code, stderr) =
        run_to_end(server().args(["--metrics-listen", "127.0.0.1:50999", "--listen", "127.0.0.1:50999"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid setting `metrics_listen`"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = run_to_end(server().args(["--metrics-listen", &addr, "--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid setting `metrics_listen`") && stderr.contains(&addr),
        "{stderr}"
    );
}

/// `--metrics-listen 127.0.0.1:0` serves Prometheus text at `/metrics`, on the address the
/// log announces; the effective configuration shows the setting.
#[tokio::test]
async fn metrics_listen_serves_prometheus_text() {
    let (mut child, _) = start(server().args(["--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])).await;
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let mut seen = String::new();
    let metrics = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("reads stderr") {
            seen.push_str(&line);
            seen.push('\n');
            if let Some((_, rest)) = line.split_once("metrics at http://") {
                return rest.trim_end_matches("/metrics").to_owned();
            }
        }
        panic!("no metrics address logged:\n{seen}");
    })
    .await
    .expect("logs the metrics address before the deadline");
    assert!(seen.contains("config: metrics_listen = 127.0.0.1:0"), "{seen}");

    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&metrics).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    })
    .await
    .expect("no panic");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\nitc_subscriptions_open 0\n"), "{body}");

    let (code, stderr) = signal_and_wait(child, "-TERM").await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// A data dir written by a newer schema, or a corrupt one, or one in use by another
/// server, stops the binary at start with exit code 2 and a message saying what to do;
/// `--in-memory` writes no files.
#[tokio::test]
async fn unusable_data_dirs_are_refused_and_in_memory_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let db = data.join("itc.sqlite3");
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch("PRAGMA application_id = 1230258993; PRAGMA user_version = 99;")
            .expect("newer schema");
    }
    let durable = |cmd: &mut Command| {
        cmd.env_remove("ITC_IN_MEMORY");
    };
    // The default store does not take a data dir the SQLite store wrote, and says how.
    let mut cmd = server();
    durable(&mut cmd);
    let (code, stderr) = run_to_end(cmd.arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SQLite store") && stderr.contains("--store sqlite"),
        "{stderr}"
    );
    let sqlite = ["--store", "sqlite", "--listen", "127.0.0.1:0"];
    let mut cmd = server();
    durable(&mut cmd);
    let (code, stderr) = run_to_end(cmd.arg("--data-dir").arg(&data).args(sqlite)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("newer ITC") && stderr.contains("upgrade itc-server"),
        "{stderr}"
    );

    std::fs::write(&db, vec![7u8; 4096]).expect("corrupt it");
    let mut cmd = server();
    durable(&mut cmd);
    let (code, stderr) = run_to_end(cmd.arg("--data-dir").arg(&data).args(sqlite)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a usable ITC database"), "{stderr}");

    // In use: a running server holds its data dir.
    let fresh = dir.path().join("fresh");
    let mut cmd = server();
    durable(&mut cmd);
    let (running, _) = start(cmd.arg("--data-dir").arg(&fresh).args(["--listen", "127.0.0.1:0"])).await;
    let mut cmd = server();
    durable(&mut cmd);
    let (code, stderr) = run_to_end(cmd.arg("--data-dir").arg(&fresh).args(["--listen", "127.0.0.1:0"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("in use by another itc-server"), "{stderr}");
    let (code, _) = signal_and_wait(running, "-TERM").await;
    assert_eq!(code, Some(0));

    // --in-memory: nothing written in the working directory.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let mut cmd = server();
    durable(&mut cmd);
    let (child, _) = start(cmd.current_dir(&cwd).args(["--in-memory", "--listen", "127.0.0.1:0"])).await;
    let (code, _) = signal_and_wait(child, "-TERM").await;
    assert_eq!(code, Some(0));
    assert_eq!(std::fs::read_dir(&cwd).expect("read dir").count(), 0, "no files");
}

/// Listening beyond loopback with authentication off refuses to start (exit 2), saying
/// how to turn it on or to accept the risk.
#[tokio::test]
async fn a_non_loopback_listen_without_auth_refuses_to_start() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let (code, stderr) = run_to_end(server().args(["--listen", addr])).await;
        assert_eq!(code, Some(2), "{addr}: {stderr}");
        for needle in ["not a loopback address", "--auth-tokens-file", "--insecure"] {
            assert!(stderr.contains(needle), "{addr}: {stderr}");
        }
    }
}

/// GetStatus with `authorization: Bearer <token>`: the status code.
async fn status_code_with(addr: &str, token: &str) -> tonic::Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = itc_proto::v1::monitor_service_client::MonitorServiceClient::new(channel);
    let mut request = tonic::Request::new(itc_proto::v1::GetStatusRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    match client.get_status(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// The tokens file is read again on SIGHUP: new tokens work, removed ones stop working,
/// and a broken file keeps the last good one.
#[tokio::test]
async fn the_tokens_file_reloads_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.toml");
    let write = |token: &str| {
        let text = format!(
            "[[principal]]\nid = \"sup\"\nroles = [\"coordinator\"]\ntoken_sha256 = \"{}\"\n",
            itc_server::auth::token_sha256(token)
        );
        std::fs::write(&path, text).expect("write tokens");
    };
    write("first");
    let (mut child, addr) = start(
        server()
            .arg("--auth-tokens-file")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"]),
    )
    .await;
    let mut log = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let mut wait_for = async |needle: &str| {
        tokio::time::timeout(DEADLINE, async {
            while let Some(line) = log.next_line().await.expect("reads stderr") {
                if line.contains(needle) {
                    return;
                }
            }
            panic!("stderr ended before {needle:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in the log before the deadline"));
    };
    let hangup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    let pid = child.id().expect("running");
    assert_eq!(status_code_with(&addr, "first").await, tonic::Code::Ok);
    assert_eq!(status_code_with(&addr, "second").await, tonic::Code::Unauthenticated);

    write("second");
    hangup(pid);
    wait_for("tokens file reloaded").await;
    assert_eq!(status_code_with(&addr, "second").await, tonic::Code::Ok);
    assert_eq!(status_code_with(&addr, "first").await, tonic::Code::Unauthenticated);

    std::fs::write(&path, "not toml [").expect("write");
    hangup(pid);
    wait_for("tokens file not reloaded").await;
    assert_eq!(
        status_code_with(&addr, "second").await,
        tonic::Code::Ok,
        "the last good file stays"
    );

    let (code, stderr) = signal_and_wait(child, "-TERM").await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// A TLS certificate or key that cannot be used, or a tokens file that cannot be read,
/// stops the start before the server announces itself: exit 2, naming the setting and
/// the cause.
#[tokio::test]
async fn unusable_tls_or_token_files_stop_the_start_before_listening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").expect("write");
    let output = tokio::time::timeout(
        DEADLINE,
        server()
            .args(["--listen", "127.0.0.1:0", "--tls-cert-file"])
            .arg(&bad)
            .arg("--tls-key-file")
            .arg(&bad)
            .output(),
    )
    .await
    .expect("exits before the deadline")
    .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tls_cert_file") && stderr.contains("cannot be used"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "announced itself: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );

    let (code, stderr) = run_to_end(
        server()
            .args(["--listen", "127.0.0.1:0", "--auth-tokens-file"])
            .arg(dir.path().join("missing.toml")),
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read the tokens file"), "{stderr}");
}
