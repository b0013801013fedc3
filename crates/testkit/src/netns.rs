//! Tests that run in a network namespace of their own.
//!
//! Pods of the test cluster need addresses that the API server accepts in EndpointSlices, and
//! it refuses loopback (127.0.0.0/8). So a test of the cluster runs in a fresh network
//! namespace (`unshare --net`) where `10.244.0.0/24` is routed to the namespace's own loopback
//! device: every `10.244.0.N` is a local address there, nothing sent to one leaves the machine
//! (the namespace has no other interface), and parallel tests each have their own.
//!
//! [`run`] does it from an ordinary `#[test]`: outside the namespace it builds what the test
//! needs (the control plane binaries: the namespace has no route to the module proxy), then runs
//! the test binary again, this one test only, under `unshare`, and fails if that run fails;
//! inside, it runs the test's body on a tokio runtime.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The private range routed to loopback inside a test's namespace.
pub const POD_NETWORK: &str = "10.244.0.0/24";
/// The API server's address inside the namespace.
pub const API_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The test kubelet's node address (its log server listens there).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 254);

const INSIDE: &str = "MCP_GATEWAY_TEST_NETNS";

/// Whether this process runs inside a test namespace made by [`run`] (or by
/// `cargo xtask cluster up`).
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Runs `body` in a network namespace of its own; see the module docs. Call it as the whole
/// body of a `#[test]`:
///
/// ```no_run
/// #[test]
/// fn pods_get_addresses() {
///     mcp_gateway_testkit::netns::run(|| async {
///         let cluster = mcp_gateway_testkit::cluster::TestCluster::start().await?;
///         Ok(())
///     });
/// }
/// ```
#[allow(clippy::print_stdout)] // the child's output, for libtest to capture
pub fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if inside() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        if let Err(err) = runtime.block_on(body()) {
            panic!("{err:#}");
        }
        return;
    }
    // The test's name is its thread's name (libtest names each test's thread).
    let thread = std::thread::current();
    let name = thread
        .name()
        .filter(|n| *n != "main")
        .expect("netns::run must be called from a #[test] (its thread carries the test's name)")
        .to_owned();
    let bin = crate::cluster::binaries();
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = unshare_command();
    cmd.args(["--", "sh", "-c", &setup_script(), "sh"])
        .arg(exe)
        .args([&name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .env(crate::cluster::BIN_ENV, &bin)
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare (util-linux): {e}"));
    // Through print!, so libtest captures it and shows it only when the test fails.
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let ran = String::from_utf8_lossy(&out.stdout).contains("1 passed");
    assert!(
        out.status.success() && ran,
        "test {name} failed in its network namespace ({})",
        out.status
    );
}

/// `unshare --net`, with a user namespace too when not root (where the kernel allows
/// unprivileged user namespaces).
pub fn unshare_command() -> Command {
    let mut cmd = Command::new("unshare");
    if !nix::unistd::Uid::effective().is_root() {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.arg("--net");
    cmd
}

/// Shell commands that make the namespace usable: loopback up, the pod network local.
pub fn setup_script() -> String {
    format!("set -e; ip link set lo up; ip route add local {POD_NETWORK} dev lo; exec \"$@\"")
}
