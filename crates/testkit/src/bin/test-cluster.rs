//! `test-cluster`: the tests' Kubernetes control plane and kubelet for a person, until Ctrl-C
//! (run by `cargo xtask cluster up`).
//!
//! It runs in a network namespace of its own (pods get 10.244.0.N there), and forwards a
//! loopback port of the host to the API server, so `kubectl --kubeconfig <printed path>` works
//! from any shell; `cargo xtask cluster exec -- CMD` runs a command inside the namespace,
//! where pods' addresses are reachable (a gateway-service under test, curl to a pod).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mcp_gateway_testkit::cluster::{self, Credentials, TestCluster};
use mcp_gateway_testkit::kubelet::{Images, KubeletOptions, TestKubelet};
use mcp_gateway_testkit::netns;

fn main() -> anyhow::Result<()> {
    let state = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: test-cluster STATE_DIR")?,
    );
    std::fs::create_dir_all(&state)?;
    if netns::inside() {
        return inside(&state);
    }
    // Outside: build what is missing, start ourselves in a new namespace, forward a port.
    let bin = cluster::binaries();
    let exe = std::env::current_exe()?;
    let mut child = netns::unshare_command()
        .args(["--", "sh", "-c", &netns::setup_script(), "sh"])
        .arg(&exe)
        .arg(&state)
        .env("MCP_GATEWAY_TEST_NETNS", "1")
        .env(cluster::BIN_ENV, &bin)
        .spawn()
        .context("unshare")?;
    let ready = state.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let info: serde_json::Value = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the cluster exited during start ({status})");
        }
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&text)?;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = info["pid"].as_u64().context("pid")?;
    let api: SocketAddr = info["api"].as_str().context("api")?.parse()?;
    let ns_file = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;

    // Host loopback → API server in the namespace: sockets made by a thread that entered it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let local = listener.local_addr()?;
    let host_kubeconfig = state.join("kubeconfig");
    cluster::write_kubeconfig(
        &host_kubeconfig,
        &format!("https://{local}"),
        &PathBuf::from(info["ca"].as_str().context("ca")?),
        &Credentials::Token(info["token"].as_str().context("token")?.to_owned()),
    )?;
    std::fs::write(state.join("pid"), pid.to_string())?;
    eprintln!();
    eprintln!(
        "Test cluster ready: Kubernetes v1.37.2, one node (test-node) running pods as processes."
    );
    eprintln!(
        "  kubectl --kubeconfig {} get nodes",
        host_kubeconfig.display()
    );
    eprintln!(
        "  cargo xtask cluster exec -- CMD   (inside the cluster's network, where pods are reachable)"
    );
    eprintln!("  images: mcp-example-server:test (the example MCP server)");
    eprintln!("Ctrl-C stops it.");
    // When the cluster ends (Ctrl-C reaches both processes), so does the forwarder.
    std::thread::spawn(move || {
        let status = child.wait();
        std::process::exit(i32::from(!status.is_ok_and(|s| s.success())));
    });
    std::thread::scope(|s| -> anyhow::Result<()> {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let ns = ns_file.try_clone()?;
            s.spawn(move || {
                if nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    return;
                }
                let Ok(upstream) = std::net::TcpStream::connect(api) else {
                    return;
                };
                let (mut a, mut b) = (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                );
                let (mut c, mut u) = (client, upstream);
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut u, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
        Ok(())
    })?;
    Ok(())
}

fn inside(state: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let cluster = TestCluster::start().await?;
        let opts = KubeletOptions {
            api_server: cluster.url().trim_start_matches("https://").parse().ok(),
            ..KubeletOptions::default()
        };
        let _kubelet =
            TestKubelet::start_with(cluster.client(), Images::new().with_example_server(), opts)
                .await?;
        let info = serde_json::json!({
            "pid": std::process::id(),
            "api": cluster.url().trim_start_matches("https://"),
            "ca": cluster.ca_file(),
            "token": cluster.admin_token(),
            "kubeconfig": cluster.kubeconfig(),
        });
        let tmp = state.join("ready.json.tmp");
        std::fs::write(&tmp, info.to_string())?;
        std::fs::rename(tmp, state.join("ready.json"))?;
        eprintln!("control plane started in {:?}", cluster.started_in());
        tokio::signal::ctrl_c().await?;
        eprintln!("stopping the test cluster");
        Ok(())
    })
}
