//! The control plane alone refuses the local runtime (no data plane could reach its replicas),
//! saying what to run instead (review D9).

#[test]
fn gateway_management_refuses_to_start_with_the_local_runtime() {
    let dir = std::env::temp_dir().join(format!("gw-mgmt-refuses-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-management"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--insecure-no-auth")
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run `gateway-service`"), "{stderr}");
}
