//! The README's library example, compiled with the tests so it cannot go stale
//! (`tests/readme.rs` checks the README shows this very code). Needs an OpenELM checkpoint
//! in `models/OpenELM-270M-Instruct` and, for the cloud, `OPENAI_API_KEY`.
use elmroute::{ChatRequest, LoadOptions, OpenAi, OpenAiConfig, OpenElm, Policy, Router};
use elmroute::{StreamEvent, SystemDevice};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = OpenElm::from_dir("models/OpenELM-270M-Instruct", LoadOptions::default())?;
    let cloud = OpenAi::new(OpenAiConfig::from_env("gpt-4o-mini"))?;
    let router = Router::builder()
        .policy(Policy::from_file("policies/balanced.toml")?)
        .local(local)
        .remote(cloud)
        .device(SystemDevice::new())
        .build()?;

    let mut stream = router
        .stream(ChatRequest::user("Explain TCP slow start"))
        .await?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(text) => print!("{text}"),
            StreamEvent::Done { route, .. } => println!("\n[{}]", route.reason()),
        }
    }
    Ok(())
}
