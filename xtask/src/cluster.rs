//! `cargo xtask cluster`: the Kubernetes control plane of the tests, for a person.
//!
//!     cargo xtask cluster build          build (or reuse) etcd, kube-apiserver,
//!                                        kube-controller-manager and kubectl under target/testenv
//!     cargo xtask cluster up             the control plane and the test kubelet until Ctrl-C
//!     cargo xtask cluster exec -- CMD    run CMD in the running cluster's network namespace

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root, run_step, target_dir};

fn state_dir() -> PathBuf {
    target_dir().join("testenv/up")
}

/// Runs deployment/testenv/build.sh; the binaries' directory.
pub fn build() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(root().join("deployment/testenv/build.sh"))
        .env("CARGO_TARGET_DIR", target_dir())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run deployment/testenv/build.sh")?;
    if !out.status.success() {
        bail!("deployment/testenv/build.sh failed ({})", out.status);
    }
    let dir = String::from_utf8(out.stdout)?.trim().to_owned();
    eprintln!("xtask: control plane binaries in {dir}");
    Ok(PathBuf::from(dir))
}

pub fn up() -> anyhow::Result<()> {
    let bin = build()?;
    run_step(cargo().args(["build", "-p", "mcp-example-server"]))?;
    run_step(cargo().args([
        "build",
        "-p",
        "mcp-gateway-testkit",
        "--features",
        "cluster",
        "--bin",
        "test-cluster",
    ]))?;
    let debug = target_dir().join("debug");
    run_step(
        Command::new(debug.join("test-cluster"))
            .arg(state_dir())
            .env("MCP_EXAMPLE_SERVER", debug.join("mcp-example-server"))
            .env("MCP_GATEWAY_TESTENV_BIN", bin),
    )
}

pub fn exec(args: Vec<String>) -> anyhow::Result<()> {
    let state = state_dir();
    let pid = std::fs::read_to_string(state.join("pid"))
        .context("no cluster is running: start one with `cargo xtask cluster up`")?;
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("ready.json"))?)?;
    let pid = pid.trim();
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("the cluster (pid {pid}) is not running: start one with `cargo xtask cluster up`");
    }
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: cargo xtask cluster exec -- CMD [ARGS...]");
    };
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg(program)
        .args(rest)
        .env(
            "KUBECONFIG",
            ready["kubeconfig"].as_str().context("kubeconfig")?,
        )
        .env(
            "PATH",
            format!(
                "{}:{}",
                target_dir().join("testenv/bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    let status = cmd.status().context("nsenter")?;
    std::process::exit(status.code().unwrap_or(1));
}
