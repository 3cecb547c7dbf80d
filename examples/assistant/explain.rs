//! `--explain` and `--explain-jsonl`: where prompts would go and why, with no model and no
//! network. The backends are declared, not run: the decision needs to know what the device
//! and the cloud could do, not to run them, so a cloud is assumed even when none is
//! configured (its name is the configured one when there is one).

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, anyhow};
use elmroute::{ChatRequest, DeclaredBackend, ManualDevice, Mode, Policy, Router, Sensitivity};
use serde::Deserialize;

use crate::BadInput;

/// One line of `--explain-jsonl` input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    sensitivity: Option<Sensitivity>,
}

/// A router over declared backends.
pub fn router(
    policy: Policy,
    device: &ManualDevice,
    local_context: usize,
    cloud_name: Option<String>,
) -> anyhow::Result<Router> {
    Router::builder()
        .policy(policy)
        .device(device.clone())
        .local(DeclaredBackend::local("openelm", local_context))
        .remote(DeclaredBackend::remote(
            cloud_name.unwrap_or_else(|| "cloud".into()),
        ))
        .build()
        .map_err(|e| anyhow!(BadInput(e.to_string())))
}

/// Prints the decision for one prompt as one JSON object.
pub fn one(router: &Router, request: &ChatRequest) -> anyhow::Result<()> {
    let route = router.decide(request)?;
    println!("{}", serde_json::to_string(&route)?);
    Ok(())
}

/// Prints one decision per line of `path`; a bad line prints `{"line", "error"}` so outputs
/// stay aligned with inputs. Returns how many lines failed.
pub fn jsonl(router: &Router, path: &Path, mode: Option<Mode>) -> anyhow::Result<usize> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow!(BadInput(format!("cannot open {}: {e}", path.display()))))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0usize;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let decided = serde_json::from_str::<Line>(&line)
            .map_err(|e| {
                anyhow!(
                    "{}:{}: expected {{\"prompt\": \"...\"}}: {e}",
                    path.display(),
                    i + 1
                )
            })
            .and_then(|l| {
                let mut req = ChatRequest::user(l.prompt);
                req.max_tokens = l.max_tokens;
                req.mode = l.mode.or(mode);
                req.sensitivity = l.sensitivity.unwrap_or_default();
                Ok(router.decide(&req)?)
            });
        match decided {
            Ok(route) => writeln!(out, "{}", serde_json::to_string(&route)?)?,
            Err(e) => {
                failures += 1;
                eprintln!("{e:#}");
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "line": i + 1, "error": format!("{e:#}") })
                )?;
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} line(s) could not be decided");
    }
    Ok(failures)
}
