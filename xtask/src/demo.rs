//! `cargo xtask demo`: the quick start. Builds the gateway and the example MCP server, starts
//! two replicas of the server and a gateway in front of them, and runs until Ctrl-C.
//!
//! The demo gateway listens on loopback only and runs with `--insecure-no-auth`, so any MCP
//! client on this machine can connect without a token; it says so when it starts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::{build_release, target_dir};

/// Child processes stopped when dropped (SIGTERM, then SIGKILL after 10 s), so nothing
/// outlives the demo, however it ends: Ctrl-C, SIGTERM, or a child exiting.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for child in &mut self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for child in &mut self.0 {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for SIGINT or SIGTERM (a supervisor, `timeout`, `kill`: not only Ctrl-C, which also
/// reaches the children through the terminal's process group), or for a child to exit.
fn wait_for_stop(children: &mut Children) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    for child in &mut children.0 {
                        if let Some(status) = child.try_wait()? {
                            bail!("a demo process exited ({status})");
                        }
                    }
                }
            }
        }
    })
}

pub fn run(port: u16) -> anyhow::Result<()> {
    build_release(&[])?;
    let bin = target_dir().join("release");
    let mut children = Children(Vec::new());

    let mut upstreams = Vec::new();
    for replica in ["r0", "r1"] {
        let mut child = Command::new(bin.join("mcp-example-server"))
            .args(["--port", "0", "--replica", replica])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start mcp-example-server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        children.0.push(child);
        // First line: "listening on http://127.0.0.1:PORT".
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            bail!("mcp-example-server said {line:?}, expected \"listening on URL\"");
        };
        upstreams.push(url.to_owned());
    }

    let listen = format!("127.0.0.1:{port}");
    let gateway = Command::new(bin.join("gateway-service"))
        .args(["--listen", &listen, "--admin-listen", "127.0.0.1:0"])
        // Loopback only (the gateway refuses this flag on any other address).
        .arg("--insecure-no-auth")
        .args(["--adapter", &format!("demo={}", upstreams.join(","))])
        .spawn()
        .context("cannot start gateway-service")?;
    children.0.push(gateway);

    eprintln!();
    eprintln!(
        "MCP gateway demo: adapter `demo` with replicas {}",
        upstreams.join(", ")
    );
    eprintln!("  streamable HTTP  http://{listen}/adapters/demo/mcp");
    eprintln!("  HTTP+SSE         http://{listen}/adapters/demo/sse");
    eprintln!("  tools: whoami, counter_increment, echo, slow, big");
    eprintln!(
        "Auth is OFF for this demo (--insecure-no-auth, loopback only). Without that flag the \
         gateway requires `Authorization: Bearer <key>`: it creates an admin key in its data \
         directory (admin.key) on first start, and `gateway-service api-key --subject NAME \
         --roles ROLES` makes more."
    );
    eprintln!("Ctrl-C (or SIGTERM) stops everything.");
    eprintln!();

    let result = wait_for_stop(&mut children);
    eprintln!("stopping the demo's processes");
    drop(children);
    result
}
