//! The README's library example, compiled with the tests so it cannot go stale
//! (`tests/readme.rs` checks the README shows this very code). Needs an OpenELM checkpoint
//! in `models/OpenELM-270M-Instruct` and, for the cloud, `OPENAI_API_KEY`.
use elmroute::{ChatRequest, LoadOptions, OpenAi, OpenAiConfig, OpenElm, Policy, Router};
use elmroute::{StreamEvent, SystemDevice};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::builder()
        .policy(Policy::from_file("policies/balanced.toml")?)
        .local(OpenElm::from_dir(
            "models/OpenELM-270M-Instruct",
            LoadOptions::default(),
        )?)
        .remote(OpenAi::new(OpenAiConfig::from_env("gpt-4o-mini"))?)
        .device(SystemDevice::new())
        .build()?;

    let answer = router
        .complete(ChatRequest::user("Name three colours"))
        .await?;
    println!(
        "{}\n[{}: {}]",
        answer.text,
        answer.route.target,
        answer.route.reason()
    );

    let mut stream = router
        .stream(ChatRequest::user("Explain TCP slow start"))
        .await?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(text) => print!("{text}"),
            StreamEvent::Done { route, .. } => println!("\n[{}]", route.explain()),
        }
    }
    Ok(())
}
