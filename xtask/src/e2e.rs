//! `cargo xtask e2e`: the end-to-end suite in tests/e2e (real MCP servers, official SDK clients,
//! the official conformance suite) against the release build of gateway-service.

use std::process::Command;

use crate::{build_release, root, run_step, target_dir};

/// Builds the release binaries, installs the test tools under target/e2e, runs pytest on tests/e2e.
pub fn run(pytest_args: Vec<String>) -> anyhow::Result<()> {
    build_release(&[])?;
    run_step(
        Command::new("bash")
            .arg("tests/e2e/setup.sh")
            .current_dir(root()),
    )?;

    let gateway = std::env::var_os("GATEWAY_BIN").unwrap_or_else(|| {
        target_dir()
            .join("release/gateway-service")
            .into_os_string()
    });
    let python = root().join("target/e2e/venv/bin/python");
    run_step(
        Command::new(python)
            .args([
                "-m",
                "pytest",
                "tests/e2e",
                "-v",
                "-s",
                "-p",
                "no:cacheprovider",
            ])
            .args(pytest_args)
            .env("GATEWAY_BIN", gateway)
            .current_dir(root()),
    )
}
