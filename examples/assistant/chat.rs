//! The interactive chat, and the one-shot `--prompt` answer: streaming text, a route badge
//! under each answer, and slash commands that change the policy and the device on the fly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use elmroute::{
    Backend, Battery, ChatRequest, Completion, ManualDevice, Message, Mode, Network, Route, Router,
    StreamEvent, ThermalLevel,
};
use futures::StreamExt;

use crate::setup::{self, LocalModel};
use crate::{Args, BadInput};

/// Everything the chat holds between turns.
pub struct Session {
    pub args: Args,
    pub policy_path: PathBuf,
    pub router: Router,
    pub device: ManualDevice,
    pub local: LocalModel,
    pub cloud: Option<Arc<dyn Backend>>,
    pub mode: Option<Mode>,
    pub history: Vec<Message>,
    pub last_route: Option<Route>,
}

/// What one answer took.
struct Figures {
    first_token: Option<Duration>,
    total: Duration,
    tokens: u32,
}

impl Figures {
    fn tokens_per_sec(&self) -> Option<f64> {
        let gen_time = self.total.checked_sub(self.first_token?)?.as_secs_f64();
        (self.tokens > 1 && gen_time > 0.0).then(|| f64::from(self.tokens - 1) / gen_time)
    }
}

/// The one-line badge under an answer: where, the main reason, speed, time to first token.
fn badge(route: &Route, figures: &Figures) -> String {
    let mut out = format!(
        "── {} · {} · {}",
        route.target,
        route.backend.as_deref().unwrap_or("?"),
        route.reason()
    );
    out.push_str(&format!(" · {} tokens", figures.tokens));
    if let Some(tps) = figures.tokens_per_sec() {
        out.push_str(&format!(" · {tps:.1} tok/s"));
    }
    if let Some(ft) = figures.first_token {
        out.push_str(&format!(" · first token {} ms", ft.as_millis()));
    }
    out
}

impl Session {
    fn request(&self) -> ChatRequest {
        let mut request = ChatRequest::new(self.history.clone());
        request.mode = self.mode;
        request.max_tokens =
            Some(
                self.args
                    .max_tokens
                    .unwrap_or(if self.local.demo { 48 } else { 256 }),
            );
        request.temperature = self.args.temperature;
        request.seed = self.args.seed;
        request
    }

    /// Streams one answer to `out`, then its badge to `badge_out`.
    async fn answer(
        &mut self,
        prompt: String,
        out: &mut dyn Write,
        badge_out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        self.history.push(Message::user(prompt));
        let started = Instant::now();
        let mut stream = match self.router.stream(self.request()).await {
            Ok(s) => s,
            Err(e) => {
                self.history.pop();
                if let Some(no) = e.no_route_details() {
                    writeln!(badge_out, "── nowhere · {}", no.route.reason())?;
                    self.last_route = Some(no.route.clone());
                }
                return Err(e.into());
            }
        };
        let mut text = String::new();
        let mut first_token = None;
        let mut deltas = 0u32;
        while let Some(event) = stream.next().await {
            match event {
                Ok(StreamEvent::Delta(d)) => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    deltas += 1;
                    out.write_all(d.as_bytes())?;
                    out.flush()?;
                    text.push_str(&d);
                }
                Ok(StreamEvent::Done { usage, route, .. }) => {
                    writeln!(out)?;
                    let figures = Figures {
                        first_token,
                        total: started.elapsed(),
                        tokens: if usage.completion_tokens > 0 {
                            usage.completion_tokens
                        } else {
                            deltas
                        },
                    };
                    writeln!(badge_out, "{}", badge(&route, &figures))?;
                    self.last_route = Some(*route);
                }
                Err(e) => {
                    writeln!(out)?;
                    self.history.pop();
                    return Err(e.into());
                }
            }
        }
        self.history.push(Message::assistant(text));
        Ok(())
    }

    /// Answers once in one piece, for `--json`.
    pub async fn complete(&mut self, prompt: String) -> elmroute::Result<Completion> {
        self.history.push(Message::user(prompt));
        self.router.complete(self.request()).await
    }

    /// Answers once, streaming the text to stdout and the badge to stderr.
    pub async fn answer_once(&mut self, prompt: String) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        self.answer(prompt, &mut stdout.lock(), &mut stderr.lock())
            .await
    }

    fn banner(&self) -> String {
        let cloud = match &self.cloud {
            Some(c) => c.name().to_owned(),
            None => "not configured (give --remote-url URL --remote-model NAME, or a [remote] table in the policy)".into(),
        };
        let mut out = format!(
            "elmroute assistant · policy {}\n  device: {}\n  cloud:  {cloud}\n/help lists the commands; /why explains the last route.",
            self.policy_path.display(),
            self.local.source,
        );
        if self.local.demo {
            out.push_str(
                "\nDEMO MODE: the on-device model has random weights, so its answers are noise. \
                 The routing, streaming and fallback around it are real.",
            );
        }
        out
    }

    /// Runs a slash command; returns false to quit.
    fn command(&mut self, line: &str) -> anyhow::Result<bool> {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        match name {
            "/help" => println!("{HELP}"),
            "/quit" | "/exit" => return Ok(false),
            "/why" => match &self.last_route {
                Some(r) => println!("{}", r.explain()),
                None => println!("nothing answered yet"),
            },
            "/mode" => match rest.first() {
                None => println!(
                    "mode: {} ({})",
                    self.mode.unwrap_or(self.router.policy().mode),
                    if self.mode.is_some() {
                        "set here"
                    } else {
                        "from the policy"
                    }
                ),
                Some(&"policy") => {
                    self.mode = None;
                    println!("mode: {} (from the policy)", self.router.policy().mode);
                }
                Some(m) => match crate::parse_mode(m) {
                    Ok(mode) => {
                        self.mode = Some(mode);
                        println!("mode: {mode}");
                    }
                    Err(e) => println!("{e}; `/mode policy` goes back to the policy's"),
                },
            },
            "/policy" => match rest.first() {
                None => println!(
                    "policy: {}\n{}",
                    self.policy_path.display(),
                    self.router.policy()
                ),
                Some(path) => {
                    let path = PathBuf::from(path);
                    match setup::load_policy(&path).and_then(|p| {
                        setup::router(p, &self.local.engine, self.cloud.as_ref(), &self.device)
                    }) {
                        Ok(router) => {
                            self.router = router;
                            self.policy_path = path;
                            println!("policy: {}", self.policy_path.display());
                        }
                        Err(e) => println!("policy not changed: {e:#}"),
                    }
                }
            },
            "/offline" => {
                self.device.update(|d| d.network = Network::Offline);
                println!("network: offline");
            }
            "/online" => {
                self.device.update(|d| d.network = Network::Online);
                println!("network: online");
            }
            "/metered" => {
                self.device.update(|d| d.network = Network::Metered);
                println!("network: metered");
            }
            "/battery" => match rest.first() {
                None => {
                    use elmroute::DeviceSource;
                    println!("battery: {:?}", self.device.state().battery);
                }
                Some(&"none") | Some(&"mains") => {
                    self.device.update(|d| d.battery = None);
                    println!("battery: none (mains power)");
                }
                Some(level) => match parse_level(level) {
                    Some(level) => {
                        let charging = rest.get(1).is_some_and(|w| *w == "charging");
                        self.device
                            .update(|d| d.battery = Some(Battery { level, charging }));
                        println!(
                            "battery: {:.0}%{}",
                            level * 100.0,
                            if charging { ", charging" } else { "" }
                        );
                    }
                    None => println!(
                        "expected /battery N [charging] with N from 0 to 1 or a percentage, or /battery none"
                    ),
                },
            },
            "/thermal" => match rest.first().map(|l| l.parse::<ThermalLevel>()) {
                Some(Ok(level)) => {
                    self.device.update(|d| d.thermal = level);
                    println!("thermal: {level}");
                }
                _ => println!("expected /thermal nominal|fair|serious|critical"),
            },
            "/model" => {
                println!(
                    "device: {} ({})",
                    self.local.engine.name(),
                    self.local.source
                );
                match &self.cloud {
                    Some(c) => println!("cloud:  {}", c.name()),
                    None => println!("cloud:  not configured"),
                }
            }
            "/reset" => {
                self.history.clear();
                self.last_route = None;
                println!("conversation cleared");
            }
            other => println!("unknown command {other}; /help lists them"),
        }
        Ok(true)
    }

    /// The interactive loop: until end of input or `/quit`.
    pub async fn repl(&mut self) -> anyhow::Result<()> {
        println!("{}", self.banner());
        let config = rustyline::Config::builder().auto_add_history(false).build();
        let mut editor: rustyline::Editor<(), rustyline::history::FileHistory> =
            rustyline::Editor::with_config(config)
                .map_err(|e| anyhow!("cannot read the terminal: {e}"))?;
        let history_file = self.args.history.clone().or_else(default_history);
        if let Some(path) = &history_file {
            let _ = editor.load_history(path);
        }
        loop {
            let line = match editor.readline("you> ") {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(anyhow!("cannot read input: {e}")),
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let _ = editor.add_history_entry(line);
            if line.starts_with('/') {
                if !self.command(line)? {
                    break;
                }
                continue;
            }
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut badge_out = std::io::stdout();
            if let Err(e) = self.answer(line.to_owned(), &mut out, &mut badge_out).await {
                println!("error: {e:#}");
            }
        }
        if let Some(path) = &history_file {
            let _ = editor.save_history(path);
        }
        Ok(())
    }
}

/// A battery level from `0.4`, `40` or `40%`.
fn parse_level(s: &str) -> Option<f32> {
    let v: f32 = s.trim_end_matches('%').parse().ok()?;
    let v = if v > 1.0 || s.ends_with('%') {
        v / 100.0
    } else {
        v
    };
    (v.is_finite() && (0.0..=1.0).contains(&v)).then_some(v)
}

fn default_history() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".elmroute_history"))
}

/// Checks a one-shot prompt is not empty.
pub fn prompt_of(args: &Args) -> anyhow::Result<Option<String>> {
    let prompt = args
        .prompt_flag
        .clone()
        .or_else(|| (!args.prompt.is_empty()).then(|| args.prompt.join(" ")));
    match prompt {
        Some(p) if p.trim().is_empty() => Err(anyhow!(BadInput("the prompt is empty".into()))),
        other => Ok(other),
    }
}

const HELP: &str = "\
commands:
  /why                  the full explanation of the last route
  /mode [MODE|policy]   show or set the mode: auto, prefer_local, local_only, prefer_cloud, cloud_only
  /policy [FILE]        show the policy, or switch to another policy file
  /offline, /online, /metered
                        set the network state the router sees
  /battery N [charging] battery level (0..1 or a percentage); /battery none for mains power
  /thermal LEVEL        nominal, fair, serious or critical
  /model                which models answer on the device and in the cloud
  /reset                forget the conversation
  /help, /quit";
