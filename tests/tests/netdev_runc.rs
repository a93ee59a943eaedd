//! netdev mode with the real runc: a bundle whose config.json has the
//! createRuntime and poststop hooks pointing at the built `kata-sriov`
//! binary (with `KATA_SRIOV_CONFIG` in the hook's env), a busybox rootfs,
//! and a network namespace created beforehand (`ip netns add`, joined by
//! path, as CNI setups do: it outlives the container, so the veth standing
//! in for the VF survives the container and can come home; a real VF's
//! netdev is also returned by the kernel when a private namespace dies).
//! Needs root, runc and `ip`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kata_sriov_tests::busybox_rootfs;
use kata_sriov_tests::{output_with_stdin, workspace_bin};
use netdev_support::{quiet_ok, with_netdev_hooks, Netns, VethHost};

fn base_spec() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

struct Runc {
    root: std::path::PathBuf,
    id: String,
}
impl Runc {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn status(&self) -> Option<String> {
        let o = self.cmd(&["state", &self.id]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v["status"].as_str().map(str::to_owned)
    }
}
impl Drop for Runc {
    fn drop(&mut self) {
        let _ = self.cmd(&["delete", "--force", &self.id]);
    }
}

/// `bin hook create-runtime` given `state`, with `host`'s config.
fn create_runtime(bin: &Path, host: &VethHost, state: &Value) -> std::process::Output {
    output_with_stdin(
        Command::new(bin)
            .args(["hook", "create-runtime"])
            .env("KATA_SRIOV_CONFIG", &host.config)
            .env("KATA_SRIOV_LOG", host.path().join("log")),
        &serde_json::to_vec(state).unwrap(),
    )
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runc_container_gets_the_vf_netdev_and_gives_it_back() {
    let bin = workspace_bin("kata-sriov");
    let host = VethHost::new("kr", 1, "");
    let vf_name = host.vf_netdev(0);
    let mac = host.mac(&vf_name);
    let ns = Netns::add(format!("{}ns", host.tag));

    let bundle = host.path().join("bundle");
    busybox_rootfs(&bundle.join("rootfs"));
    let out_file = host.path().join("out.txt");
    let log = host.path().join("hook.log");
    let mut spec = base_spec();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!([
        "/bin/sh",
        "-c",
        "ip addr show; ip route show; echo READY; sleep 300"
    ]);
    spec["root"]["readonly"] = json!(false);
    with_netdev_hooks(&mut spec, &ns, &bin, &host, &log);
    spec["annotations"] = json!({
        "io.kata-sriov.networks": r#"[{"pool":"nd","ips":["10.79.1.5/24"],"gateway":"10.79.1.1"}]"#
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let r = Runc {
        root: host.path().join("runc"),
        id: format!("{}c", host.tag),
    };
    let out = std::fs::File::create(&out_file).unwrap();
    let created = Command::new("runc")
        .arg("--root")
        .arg(&r.root)
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg(&r.id)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        created.success(),
        "runc create: {}\nhook log: {}",
        std::fs::read_to_string(&out_file).unwrap_or_default(),
        log_text()
    );
    // After create (the createRuntime hook ran), before start.
    assert!(!host.host_has(&vf_name), "the VF netdev left the host");
    assert!(quiet_ok(
        "ip",
        &["-n", &ns.name, "link", "show", "dev", "net1"]
    ));
    assert_eq!(host.leases(), 1);
    let o = r.cmd(&["start", &r.id]);
    assert!(o.status.success(), "runc start: {o:?}");
    wait_for("the container's output", Duration::from_secs(20), || {
        std::fs::read_to_string(&out_file).is_ok_and(|s| s.contains("READY"))
    });
    let seen = std::fs::read_to_string(&out_file).unwrap();
    // busybox `ip addr` inside the container.
    let net1 = seen
        .split("\n")
        .skip_while(|l| !l.contains(": net1"))
        .take(4)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(net1.contains("net1"), "{seen}");
    assert!(net1.contains("inet 10.79.1.5/24"), "{seen}");
    assert!(net1.contains(&format!("link/ether {mac}")), "{seen}");
    assert!(seen.contains("default via 10.79.1.1 dev net1"), "{seen}");

    // Stop and delete: poststop brings the netdev home and releases.
    let o = r.cmd(&["kill", &r.id, "KILL"]);
    assert!(o.status.success(), "runc kill: {o:?}");
    wait_for("the container to stop", Duration::from_secs(20), || {
        r.status().as_deref() == Some("stopped")
    });
    let t = Instant::now();
    let o = r.cmd(&["delete", &r.id]);
    let delete_ms = t.elapsed().as_millis();
    assert!(
        o.status.success(),
        "runc delete: {o:?}\nhook log: {}",
        log_text()
    );
    assert!(
        host.host_has(&vf_name),
        "back under its own name; log: {}",
        log_text()
    );
    assert_eq!(host.mac(&vf_name), mac);
    assert!(!quiet_ok(
        "ip",
        &["-n", &ns.name, "link", "show", "dev", "net1"]
    ));
    assert_eq!(host.leases(), 0, "log: {}", log_text());
    eprintln!("runc delete (poststop: move back + release) took {delete_ms} ms");
}

#[test]
fn create_runtime_without_a_netdev_request_changes_nothing() {
    let bin = workspace_bin("kata-sriov");
    let host = VethHost::new("kn", 1, "");
    let bundle = host.path().join("b");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&base_spec()).unwrap(),
    )
    .unwrap();
    let state = json!({ "ociVersion": "1.0.2", "id": "x", "pid": std::process::id(), "bundle": bundle, "status": "creating" });
    let o = create_runtime(&bin, &host, &state);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stdout.is_empty());
    assert!(host.host_has(&host.vf_netdev(0)));
    assert_eq!(host.leases(), 0);
    // This test's own pid is in the host's namespace: a netdev request is
    // refused there.
    let mut spec = base_spec();
    spec["annotations"] = json!({ "io.kata-sriov.networks": "nd" });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let o = create_runtime(&bin, &host, &state);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("host's own network namespace") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(host.host_has(&host.vf_netdev(0)));
    assert_eq!(host.leases(), 0);
}
