//! Crash safety of the real binary: clients load it, it is killed with SIGKILL mid-load,
//! restarted on the same data dir, and every acknowledged change is there, nothing is
//! half-applied, and the log's seq has no gap and no repeat.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use itc_proto::v1 as pb;
use itc_proto::v1::agent_service_client::AgentServiceClient;
use itc_proto::v1::monitor_service_client::MonitorServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_itc-server");
const DEADLINE: Duration = Duration::from_secs(30);
const AGENTS: usize = 8;
/// Progress reports acknowledged (over all agents) before the kill.
const ACKED_BEFORE_KILL: usize = 400;

async fn start(dir: &std::path::Path, extra: &[&str]) -> (Child, Channel) {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itc-server");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("listening line before the deadline")
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (child, channel)
}

/// Per task: the highest version an acknowledged report reached.
type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Progress of the k-th report of a task: its version after the report is k + 1.
fn progress_of(k: u64) -> f64 {
    (k % 1000) as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    kill_9_under_load(&[], ACKED_BEFORE_KILL).await;
}

/// The same with 16 KiB log segments: the kill lands among segment rolls and snapshot
/// compactions (each roll of this load's small state compacts), and a restart reads a
/// snapshot, the segments after it, and older segments for their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_amid_rolls_and_compactions_loses_nothing_acknowledged() {
    kill_9_under_load(&["--log-segment-bytes", "16384"], 4 * ACKED_BEFORE_KILL).await;
}

async fn kill_9_under_load(extra: &[&str], acked_before_kill: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, channel) = start(dir.path(), extra).await;
    let acked: Acked = Arc::default();
    let (count_tx, mut count_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut load = Vec::new();
    for a in 0..AGENTS {
        let mut agent = AgentServiceClient::new(channel.clone());
        let acked = acked.clone();
        let count = count_tx.clone();
        load.push(tokio::spawn(async move {
            let task_id = format!("crash-{a}");
            let start = pb::StartTaskRequest {
                task_id: task_id.clone(),
                agent_id: format!("agent-{a}"),
                description: "under load".into(),
                ..Default::default()
            };
            if agent.start_task(start).await.is_err() {
                return;
            }
            acked.lock().unwrap().insert(task_id.clone(), 1);
            // Bounded: at most 100,000 reports; in practice the kill stops it far sooner.
            for k in 1..100_000u64 {
                let report = pb::ReportProgressRequest {
                    task_id: task_id.clone(),
                    progress: progress_of(k),
                    message: format!("report {k}"),
                };
                match agent.report_progress(report).await {
                    Ok(ack) => {
                        let version = ack.into_inner().version;
                        assert_eq!(version, k + 1, "each report bumps the version once");
                        acked.lock().unwrap().insert(task_id.clone(), version);
                        let _ = count.send(());
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(count_tx);
    for _ in 0..acked_before_kill {
        tokio::time::timeout(DEADLINE, count_rx.recv())
            .await
            .expect("load progresses")
            .expect("load runs");
    }
    // SIGKILL while the agents are still sending.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for task in load {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), AGENTS);

    let (_child, channel) = start(dir.path(), extra).await;
    if !extra.is_empty() {
        let log = dir.path().join("log");
        let files: Vec<String> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            files.iter().any(|f| f.ends_with(".snap")) && files.iter().filter(|f| f.ends_with(".seg")).count() > 1,
            "the load rolled segments and compacted them: {files:?}"
        );
    }
    let mut monitor = MonitorServiceClient::new(channel);
    let status = monitor
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let head = status.statistics.unwrap().head_seq;
    let mut versions = HashMap::new();
    for task in &status.tasks {
        let acked_version = acked[&task.task_id];
        assert!(
            task.version >= acked_version,
            "{}: version {} < acknowledged {acked_version}",
            task.task_id,
            task.version
        );
        // Whole changes only: the state is exactly the one its version says.
        assert_eq!(task.progress, progress_of(task.version - 1), "{}", task.task_id);
        assert_eq!(task.status_message, format!("report {}", task.version - 1));
        versions.insert(task.task_id.clone(), task.version);
    }
    assert_eq!(versions.len(), AGENTS);

    // The log: seqs 1..=head exactly once, each task's versions 1, 2, 3… in order.
    let mut stream = monitor
        .subscribe(pb::SubscribeRequest {
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut next_seq = 1;
    let mut last_version: HashMap<String, u64> = HashMap::new();
    while next_seq <= head {
        let event = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if event.seq == 0 {
            continue;
        }
        assert_eq!(event.seq, next_seq, "no gap, no repeat");
        next_seq += 1;
        let last = last_version.entry(event.task_id.clone()).or_insert(0);
        assert_eq!(
            event.task_version,
            *last + 1,
            "task {} versions in order",
            event.task_id
        );
        *last = event.task_version;
    }
    assert_eq!(last_version, versions, "the log and the tasks agree");
}
