//! netdev mode under containerd (Debian's 1.6, started by the test with its
//! own root, state and socket) and its runc shim: `ctr run --rm --config`
//! with a spec that carries the createRuntime and poststop hooks, the
//! request annotation and a network namespace created beforehand (joined by
//! path, so that the veth standing in for the VF outlives the container).
//! Needs root, containerd, ctr, runc and `ip`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use kata_sriov_tests::busybox_rootfs;
use kata_sriov_tests::engines::{Containerd, Engines};
use kata_sriov_tests::workspace_bin;
use netdev_support::{quiet_ok, with_netdev_hooks, Netns, VethHost};

#[test]
fn containerd_runc_container_gets_the_vf_netdev_and_gives_it_back() {
    let bin = workspace_bin("kata-sriov");
    let host = VethHost::new("kc", 1, "");
    let vf_name = host.vf_netdev(0);
    let mac = host.mac(&vf_name);
    let ns = Netns::add(format!("{}ns", host.tag));
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let log = host.path().join("hook.log");

    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["/bin/sh", "-c", "ip addr show; ip route show"]);
    spec["root"] = json!({ "path": rootfs, "readonly": false });
    with_netdev_hooks(&mut spec, &ns, &bin, &host, &log);
    // No cgroup device rules: ctr's default spec handling stays out of it.
    spec["linux"]["resources"] = json!({});
    spec["linux"]["devices"] = json!([]);
    spec["annotations"] = json!({
        "io.kata-sriov.networks": r#"[{"pool":"nd","name":"sriov0","ips":["10.83.1.5/24"]}]"#
    });
    let spec_file = host.path().join("spec.json");
    std::fs::write(&spec_file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let c = Containerd::start(&Engines::Host, &host.path().join("containerd"), None, &[]);
    let id = format!("{}c", host.tag);
    let o = c.ctr(
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            "--config",
            spec_file.to_str().unwrap(),
            &id,
        ],
        Duration::from_secs(120),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let hook_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        o.status.success(),
        "ctr run: {out}{}\nhook log: {hook_log}",
        String::from_utf8_lossy(&o.stderr)
    );
    let block: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains(": sriov0"))
        .take(4)
        .collect();
    let block = block.join("\n");
    assert!(block.contains("inet 10.83.1.5/24"), "{out}");
    assert!(block.contains(&format!("link/ether {mac}")), "{out}");
    // ctr run --rm deleted the task and the container: poststop ran.
    assert!(host.host_has(&vf_name), "hook log: {hook_log}");
    assert!(!quiet_ok(
        "ip",
        &["-n", &ns.name, "link", "show", "dev", "sriov0"]
    ));
    assert_eq!(host.leases(), 0, "hook log: {hook_log}");
}
