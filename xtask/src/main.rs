//! `cargo xtask`: the project's developer commands, in Rust so they run wherever cargo does.
//!
//!     cargo xtask test          unit + integration tests, then the end-to-end suite
//!     cargo xtask e2e [ARGS]    build release binaries, install the e2e tools, run tests/e2e
//!     cargo xtask bench [ARGS]  benchmarks
//!     cargo xtask openapi [--check]  write (or check) openapi/mcp-gateway.openapi.json
//!     cargo xtask demo          the quick start: two example replicas behind a gateway
//!     cargo xtask cluster build|up|exec   the Kubernetes control plane of the tests
//!     cargo xtask crd [--check]  write (or check) deployment/crd/mcpadapters.yaml

mod bench;
mod cluster;
mod crd;
mod demo;
mod e2e;
mod openapi;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer commands of the MCP gateway workspace"
)]
enum Cli {
    /// Builds (or reuses) the tests' Kubernetes control plane, then `cargo test --workspace
    /// --all-targets`, the doc tests, then `cargo xtask e2e`.
    Test,
    /// Build the release binaries, install the e2e tools under target/e2e (tests/e2e/setup.sh)
    /// and run the end-to-end suite (tests/e2e, pytest); ARGS go to pytest, e.g. `-k sse`.
    E2e {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The quick start: builds, then runs two example MCP server replicas behind a gateway on
    /// 127.0.0.1:PORT (adapter `demo`) until Ctrl-C.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Write the management API's OpenAPI document to openapi/; `--check` fails when it is stale.
    Openapi {
        #[arg(long)]
        check: bool,
    },
    /// The tests' Kubernetes control plane (built from source with Go, no Docker): `build` it
    /// under target/testenv, run it `up` until Ctrl-C (printing a kubeconfig for kubectl), or
    /// `exec -- CMD` in its network namespace, where pods are reachable.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Write (or check) the McpAdapter CRD, deployment/crd/mcpadapters.yaml, from its Rust type.
    Crd {
        #[arg(long)]
        check: bool,
    },
    /// Benchmarks; ARGS go to the benchmark runner.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Build (or reuse) etcd, kube-apiserver, kube-controller-manager and kubectl.
    Build,
    /// Start the control plane and the test kubelet; runs until Ctrl-C.
    Up,
    /// Run a command in the running cluster's network namespace (KUBECONFIG set).
    Exec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
}

fn main() {
    let result = match Cli::parse() {
        Cli::Test => cluster::build()
            .and_then(|bin| {
                run_step(
                    cargo()
                        .args(["test", "--workspace", "--all-targets"])
                        .env("MCP_GATEWAY_TESTENV_BIN", bin),
                )
            })
            .and_then(|()| run_step(cargo().args(["test", "--workspace", "--doc"])))
            .and_then(|()| e2e::run(Vec::new())),
        Cli::E2e { args } => e2e::run(args),
        Cli::Bench { args } => bench::run(args),
        Cli::Demo { port } => demo::run(port),
        Cli::Openapi { check } => openapi::run(check),
        Cli::Crd { check } => crd::run(check),
        Cli::Cluster { command } => match command {
            ClusterCommand::Build => cluster::build().map(drop),
            ClusterCommand::Up => cluster::up(),
            ClusterCommand::Exec { args } => cluster::exec(args),
        },
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

/// The workspace root (xtask's parent directory).
pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `<root>/target`.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// `cargo` (the one running xtask), in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// `cargo build --release` of the gateway and the example server (plus `extra` arguments).
pub(crate) fn build_release(extra: &[&str]) -> anyhow::Result<()> {
    run_step(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "gateway-service",
                "-p",
                "mcp-example-server",
            ])
            .args(extra),
    )
}

/// Runs a command to completion, failing with the command line when it does not exit 0.
pub(crate) fn run_step(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: running {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}
