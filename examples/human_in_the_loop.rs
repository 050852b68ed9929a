//! The human in the loop: an agent preparing a release asks for approval before it
//! deploys; a human coordinator sees the question live and answers it; the agent goes on
//! with the answer (the HITL examples the seed's ITC replaced).
//!
//! `cargo run --example human_in_the_loop [-- --addr http://127.0.0.1:50051]`

mod common;

use std::time::Duration;

use itc_client::{EventType, SessionKind};
use serde_json::json;
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::server().await?;
    let client = common::client(&server).await?;

    // The human watches for questions.
    let human = client.coordinator("alice").kind(SessionKind::Human).connect().await?;
    let mut questions = client.subscribe().events([EventType::InputRequested]).start().await?;
    let answering = {
        let human = human.clone();
        tokio::spawn(async move {
            let event = questions.next().await.ok_or("the stream ended")??;
            let question = event.input.ok_or("no input request in the event")?;
            println!(
                "alice sees: \"{}\" (choices: {})",
                question.prompt,
                question.choices.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            println!("alice answers: approve");
            human.answer(&question.id, json!("approve")).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    };

    let agent = client.agent("release-agent").connect().await?;
    let task = agent.start_task("Release v1.2").await?;
    for (step, what) in ["build", "test", "package"].iter().enumerate() {
        task.checkpoint((step + 1) as f64 / 4.0, format!("{what} done")).await?;
        println!("release-agent: {what} done");
    }
    println!("release-agent asks for approval and waits…");
    let answer = task
        .request_input("Deploy release v1.2 to production?")
        .choices(["approve", "deny"])
        .timeout(Duration::from_secs(20), Some(json!("deny")))
        .await?;
    let approved = answer.answer == Some(json!("approve"));
    println!(
        "release-agent got {:?} from {}",
        answer.answer.unwrap_or_default(),
        answer.answered_by.as_deref().unwrap_or("the deadline")
    );
    if approved {
        task.checkpoint(1.0, "deployed").await?;
        println!("release-agent: deployed");
        task.complete(json!({"deployed": true})).await?;
    } else {
        task.cancel("deployment not approved").await?;
    }
    answering.await?.map_err(|e| e.to_string())?;
    agent.close().await?;
    human.close().await?;
    Ok(())
}
