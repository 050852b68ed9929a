//! The seed's no-LLM background demo: three data processors work through five steps; a
//! coordinator subscribed once per agent sees their progress and updates as they happen
//! and reacts (it boosts a processor that is ahead, as the seed's coordinator offered a
//! performance boost).
//!
//! `cargo run --example background_monitoring [-- --addr http://127.0.0.1:50051]`

mod common;

use std::time::Duration;

use itc_client::{Action, EventType, StatusQuery};
use serde_json::json;
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::server().await?;
    let client = common::client(&server).await?;
    let coordinator = client.coordinator("StreamingCoordinator").connect().await?;

    // One subscription per agent, as the seed's coordinator subscribed.
    let mut streams = Vec::new();
    for i in 1..=3 {
        let stream = client
            .subscribe()
            .agent(format!("DataProcessor_{i}"))
            .events([EventType::TaskProgress, EventType::RealTimeUpdate])
            .start()
            .await?;
        streams.push(stream);
    }
    let mut merged = tokio_stream::StreamMap::new();
    for (i, stream) in streams.into_iter().enumerate() {
        merged.insert(i + 1, stream);
    }

    let mut agents = Vec::new();
    let mut tasks = Vec::new();
    for i in 1..=3 {
        let agent = client.agent(format!("DataProcessor_{i}")).connect().await?;
        let task = agent
            .start_task_with(
                itc_client::StartTask::new("", format!("Processing dataset {i}")).with_task_id(format!("task_{i}")),
            )
            .await?;
        agents.push(agent);
        tasks.push(task);
    }

    let mut boosted = false;
    for step in 0..5u32 {
        for (i, task) in tasks.iter().enumerate() {
            let records = (step + 1) * 1000 * (i as u32 + 1);
            task.progress(f64::from(step + 1) / 5.0, format!("Processing step {}", step + 1))
                .await?;
            task.update(json!({
                "step": step,
                "processing_time": f64::from(step) * 0.2,
                "records_processed": records,
                "update_type": "processing_progress",
            }))
            .await?;
        }
        // The coordinator drains what arrived and reacts.
        while let Ok(Some((_, event))) = tokio::time::timeout(Duration::from_millis(150), merged.next()).await {
            let event = event?;
            if event.kind != EventType::RealTimeUpdate {
                continue;
            }
            let agent = event.agent_id.clone().unwrap_or_default();
            let records = event
                .data
                .as_ref()
                .and_then(|d| d.get("records_processed"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            println!("Saw: {agent} processed {records} records");
            if !boosted && records >= 6000 {
                boosted = true;
                let task = event.task_id.clone().unwrap_or_default();
                coordinator
                    .coordinate(&task, Action::BoostPriority)
                    .data(json!({"action": "performance_boost", "reason": "ahead of the others"}))
                    .send()
                    .await?;
                println!("StreamingCoordinator: performance boost for {task} ({agent})");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for task in tasks {
        task.complete(json!({"status": "completed", "records": 5000})).await?;
    }
    for agent in agents {
        agent.close().await?;
    }
    coordinator.close().await?;
    let stats = client.status(StatusQuery::default()).await?.statistics;
    println!("tasks completed: {}", stats.tasks_completed);
    Ok(())
}
