//! The seed's `streaming_coordination_demo.py`, both demos:
//!
//! A. A coordinator agent watches two long workers live, boosts the priority of the slow
//!    one, interrupts it when it runs too long (it actually stops, at its next
//!    checkpoint), and queries status and the connected coordinators.
//! B. Polling a long task: the coordinator disconnects and reconnects mid-task, and the
//!    task's state survives its absence.
//!
//! `cargo run --example streaming_coordination [-- --addr http://127.0.0.1:50051]`

mod common;

use std::time::{Duration, Instant};

use itc_client::{Action, Client, Error, EventType, SessionKind, StatusQuery};
use serde_json::json;
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::server().await?;
    let client = common::client(&server).await?;
    println!("=== Demo A: streaming coordination ===");
    demo_streaming(&client).await?;
    println!("\n=== Demo B: polling a long task across a reconnect ===");
    demo_polling(&client).await?;
    let stats = client.status(StatusQuery::default()).await?.statistics;
    println!(
        "\nstats: started {}, completed {}, interrupted {}, cancelled {}",
        stats.tasks_started, stats.tasks_completed, stats.tasks_interrupted, stats.tasks_cancelled
    );
    Ok(())
}

async fn demo_streaming(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    let coordinator = client
        .coordinator("StreamingCoordinator")
        .kind(SessionKind::CoordinatorAgent)
        .connect()
        .await?;
    let mut events = client
        .subscribe()
        .events([
            EventType::TaskProgress,
            EventType::RealTimeUpdate,
            EventType::TaskCompleted,
        ])
        .start()
        .await?;

    let fast = tokio::spawn(long_task(
        client.clone(),
        "LongTaskWorker1",
        "Process large dataset",
        3.0,
    ));
    let slow = tokio::spawn(long_task(
        client.clone(),
        "LongTaskWorker2",
        "Analyze complex patterns",
        9.0,
    ));

    let started = Instant::now();
    let mut boosted = false;
    let mut interrupted = false;
    let mut queried = [false, false];
    while started.elapsed() < Duration::from_secs(12) && !(fast.is_finished() && slow.is_finished()) {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await else {
            // Nothing in half a second: time for the scheduled checks below.
            scheduled(client, &coordinator, started, &mut interrupted, &mut queried).await?;
            continue;
        };
        let event = event?;
        if event.kind == EventType::TaskProgress
            && let (Some(task), Some((progress, _))) = (event.task_id.as_deref(), event.progress)
        {
            println!(
                "StreamingCoordinator sees task {task} at {:.0}% progress",
                progress * 100.0
            );
            if task == "long_task_LongTaskWorker2" && progress < 0.5 && progress > 0.0 && !boosted {
                boosted = true;
                let data = json!({
                    "action": "boost_priority",
                    "suggestion": "Consider parallel processing",
                    "coordinator": "StreamingCoordinator",
                });
                coordinator
                    .coordinate(task, Action::BoostPriority)
                    .data(data)
                    .send()
                    .await?;
                println!("StreamingCoordinator boosted the priority of the slow task {task}");
            }
        } else if event.kind == EventType::TaskCompleted {
            println!(
                "StreamingCoordinator sees {} completed",
                event.task_id.unwrap_or_default()
            );
        }
        scheduled(client, &coordinator, started, &mut interrupted, &mut queried).await?;
    }
    println!("worker 1: {}", fast.await??);
    println!("worker 2: {}", slow.await??);
    coordinator.close().await?;
    Ok(())
}

/// The demo's timed actions: status queries at 1.5 s and 4 s, the interrupt at 5 s.
async fn scheduled(
    client: &Client,
    coordinator: &itc_client::Session,
    started: Instant,
    interrupted: &mut bool,
    queried: &mut [bool; 2],
) -> Result<(), Box<dyn std::error::Error>> {
    let elapsed = started.elapsed();
    for (i, at) in [1.5, 4.0].into_iter().enumerate() {
        if !queried[i] && elapsed >= Duration::from_secs_f64(at) {
            queried[i] = true;
            let status = client.status(StatusQuery::default()).await?;
            println!(
                "-- status at {:.1}s: {} active task(s)",
                elapsed.as_secs_f64(),
                status.active_tasks
            );
            for task in status
                .tasks
                .iter()
                .filter(|t| t.status.is_some_and(|s| !s.is_finished()))
            {
                println!(
                    "   {}: {:.0}% complete, {:.1}s running, priority {}",
                    task.id,
                    task.progress * 100.0,
                    task.duration.as_secs_f64(),
                    task.priority
                );
            }
            for session in &status.sessions {
                println!("   connected: {}: {:?}", session.id, session.kind);
            }
        }
    }
    if !*interrupted && elapsed >= Duration::from_secs(5) {
        *interrupted = true;
        let task = "long_task_LongTaskWorker2";
        if client.get_task(task).await?.status.is_some_and(|s| !s.is_finished()) {
            coordinator
                .coordinate(task, Action::Interrupt)
                .data(json!({"reason": "running too long"}))
                .send()
                .await?;
            println!("StreamingCoordinator interrupted {task}: it runs too long");
        }
    }
    Ok(())
}

/// A worker's long task: 11 steps over `duration` seconds; stops at a checkpoint when
/// interrupted. The task id is unique per worker (the seed's time-based id collided).
async fn long_task(client: Client, worker: &str, description: &str, duration: f64) -> Result<String, Error> {
    let agent = client.agent(worker).connect().await?;
    let mut task = agent
        .start_task_with(itc_client::StartTask::new("", description).with_task_id(format!("long_task_{worker}")))
        .await?;
    let mut commands = task
        .commands()
        .ok_or_else(|| Error::Protocol("no command stream".into()))?;
    let started = Instant::now();
    let step_time = Duration::from_secs_f64(duration / 10.0);
    for step in 0..=10u32 {
        while let Ok(command) = commands.try_recv() {
            println!("{worker} received {:?} from {}", command.action, command.coordinator_id);
            task.apply(&command, None).await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        match task
            .checkpoint(
                f64::from(step) / 10.0,
                format!("Step {step}/10 - {elapsed:.1}s elapsed"),
            )
            .await
        {
            Ok(_) => {}
            Err(Error::Interrupted { reason, .. }) => {
                println!("{worker} stops at step {step}: {reason}");
                let id = task.id().to_owned();
                task.cancel(format!("interrupted at step {step}: {reason}")).await?;
                agent.close().await?;
                return Ok(format!("{id} stopped at step {step}"));
            }
            Err(e) => return Err(e),
        }
        task.update(json!({
            "step": step,
            "total_steps": 10,
            "elapsed_time": elapsed,
            "estimated_remaining": duration - elapsed,
            "worker_status": "processing",
            "update_type": "step_progress",
        }))
        .await?;
        tokio::time::sleep(step_time).await;
    }
    let id = task.id().to_owned();
    task.complete(json!({"status": "completed", "duration": duration, "steps_completed": 10}))
        .await?;
    agent.close().await?;
    Ok(format!("{id} completed"))
}

async fn demo_polling(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    let worker = tokio::spawn(long_task(
        client.clone(),
        "VeryLongTaskWorker",
        "Simulate multi-hour data processing",
        5.0,
    ));
    let mut coordinator = client.coordinator("PollingCoordinator").connect().await?;
    for check in 1..=6 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let task = client.get_task("long_task_VeryLongTaskWorker").await?;
        println!(
            "check {check}: {} is {:?} at {:.0}%, {:.1}s running",
            task.id,
            task.status,
            task.progress * 100.0,
            task.duration.as_secs_f64()
        );
        if check == 3 {
            coordinator.close().await?;
            println!("PollingCoordinator disconnected (a network drop)…");
            tokio::time::sleep(Duration::from_millis(500)).await;
            coordinator = client.coordinator("PollingCoordinator").connect().await?;
            println!("…and reconnected: the task went on without it");
        }
    }
    println!("result: {}", worker.await??);
    coordinator.close().await?;
    Ok(())
}
