//! The seed's `simple_streaming_example.py`: a worker runs a 6-step task and streams
//! progress and custom updates; a watcher subscribes to progress and real-time updates
//! and prints what it sees; a poller prints status lines from GetStatus.
//!
//! `cargo run --example simple_streaming [-- --addr http://127.0.0.1:50051]`

mod common;

use std::time::{Duration, Instant};

use itc_client::{Client, EventType, StatusQuery};
use serde_json::json;
use tokio_stream::StreamExt;

const STEP: Duration = Duration::from_millis(600);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::server().await?;
    let client = common::client(&server).await?;

    let watcher = tokio::spawn(watch(client.clone(), Duration::from_secs(5)));
    // Let the watcher subscribe before work starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (worker, poller) = tokio::join!(work(client.clone(), "Data Processing Task"), poll(client.clone()));
    let seen = watcher.await??;
    let task_id = worker?;
    poller?;

    println!("\nresults: worker -> {task_id}, watcher -> {seen} updates seen, poller -> done");
    let stats = client.status(StatusQuery::default()).await?.statistics;
    println!("tasks completed: {}", stats.tasks_completed);
    Ok(())
}

/// The worker: 6 steps (0..=5), progress step/5 and a custom update each.
async fn work(client: Client, name: &str) -> Result<String, itc_client::Error> {
    let agent = client.agent("worker-agent").connect().await?;
    let task = agent
        .start_task_with(itc_client::StartTask::new("", name).with_task_id("worker_agent_task"))
        .await?;
    let started = Instant::now();
    let mut step = 0;
    while step <= 5 {
        let progress = f64::from(step) / 5.0;
        task.checkpoint(
            progress,
            format!("Step {step}/5 - {:.1}s", started.elapsed().as_secs_f64()),
        )
        .await?;
        task.update(json!({
            "worker": "Worker Agent",
            "step": step,
            "message": format!("Completed step {step} of {name}"),
            "update_type": "progress",
        }))
        .await?;
        println!("Worker Agent: step {step}/5 ({:.0}%)", progress * 100.0);
        step += 1;
        tokio::time::sleep(STEP).await;
    }
    let id = task.id().to_owned();
    task.complete(json!({"completed_steps": step})).await?;
    agent.close().await?;
    Ok(id)
}

/// The watcher: progress and real-time updates, as they happen.
async fn watch(client: Client, duration: Duration) -> Result<usize, itc_client::Error> {
    let mut events = client
        .subscribe()
        .events([EventType::TaskProgress, EventType::RealTimeUpdate])
        .start()
        .await?;
    let until = Instant::now() + duration;
    let mut seen = 0;
    while let Ok(Some(event)) = tokio::time::timeout_at(until.into(), events.next()).await {
        let event = event?;
        match event.kind {
            EventType::RealTimeUpdate => {
                let data = event.data.unwrap_or_default();
                println!(
                    "Watcher Agent sees: {} - {}",
                    data.get("worker").and_then(|v| v.as_str()).unwrap_or("Unknown"),
                    data.get("message").and_then(|v| v.as_str()).unwrap_or("Update"),
                );
                seen += 1;
            }
            EventType::TaskProgress => {
                if let Some((progress, message)) = event.progress {
                    println!("Watcher Agent sees progress: {:.0}% ({message})", progress * 100.0);
                    seen += 1;
                }
            }
            EventType::Heartbeat => println!("Watcher Agent: heartbeat"),
            _ => {}
        }
    }
    Ok(seen)
}

/// The poller: four checks, a second apart.
async fn poll(client: Client) -> Result<(), itc_client::Error> {
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = client.status(StatusQuery::default()).await?;
        println!("Poller: {} active task(s)", status.active_tasks);
        for task in status
            .tasks
            .iter()
            .filter(|t| t.status.is_some_and(|s| !s.is_finished()))
        {
            println!(
                "  {}: {:.0}% complete, {:.1}s running",
                task.id,
                task.progress * 100.0,
                task.duration.as_secs_f64()
            );
        }
    }
    Ok(())
}
