//! What the integration tests that run the assistant binary share.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The assistant example binary cargo built next to the running test, started in the
/// repository root with no cloud key in its environment.
pub fn assistant() -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("the test binary sits in target/<profile>/deps");
    let bin: PathBuf = dir
        .join("examples")
        .join(format!("assistant{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "build the example first: {}", bin.display());
    let mut cmd = Command::new(bin);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    cmd
}
