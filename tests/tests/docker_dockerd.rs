//! The Docker driver with the real dockerd: Debian bookworm's docker.io
//! 20.10, and Docker 28 from the forky root (scripts/forky-root.sh; skipped
//! when it is not built, unless `CI` is set), started by the test with its
//! own data root, exec root and API socket, `"bridge": "none", "iptables":
//! false, "ip-masq": false`, and an image made with `docker import` from a
//! busybox rootfs. dockerd finds remote drivers by
//! name in /run/docker/plugins: the plugin listens on
//! `/run/docker/plugins/<tag>.sock` and the network is created with
//! `-d <tag>`. veth ends stand in for the VFs' netdevs. Needs root, dockerd
//! and `ip`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use std::path::PathBuf;
use std::time::Instant;

use kata_sriov_tests::busybox_rootfs;
use kata_sriov_tests::engines::{major, tar_of, Dockerd, Engines};
use netdev_support::{Plugin, VethHost};

/// The lines of busybox `ip addr` about the interface whose line has `eth0`.
fn eth0_block(out: &str) -> String {
    out.lines()
        .skip_while(|l| !l.contains(": eth0"))
        .take_while(|l| l.starts_with(' ') || l.contains(": eth0"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `docker network create -d DRIVER` and `rest` (options, then the name).
fn network_create<'a>(driver: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    [&["network", "create", "-d", driver], rest].concat()
}

#[test]
fn docker_run_gets_the_vf_and_docker_rm_returns_it_across_a_plugin_restart() {
    network_driver(&Engines::Host);
}

#[test]
fn docker_28_run_gets_the_vf_and_docker_rm_returns_it_across_a_plugin_restart() {
    let Some(engines) = Engines::forky("docker_28 network driver") else {
        return;
    };
    // dockerd finds the plugin's socket in /run/docker/plugins, which the
    // forky root's private /run would hide.
    network_driver(&engines.with_bind(PLUGINS));
}

const PLUGINS: &str = "/run/docker/plugins";

/// The classic how-to on `engines`' dockerd: `docker network create -d
/// kata-sriov -o pf=...`, `docker run --net`, `docker rm`.
fn network_driver(engines: &Engines) {
    let host = VethHost::new("kd", 2, "");
    let driver = host.tag.clone();
    let mut plugin = Plugin::start(
        &host.config,
        &PathBuf::from(format!("{PLUGINS}/{driver}.sock")),
        &host.path().join("plugin.log"),
    );
    let mut daemon = serde_json::json!({
        "bridge": "none", "iptables": false, "ip-masq": false, "ip6tables": false
    });
    if engines.is_forky() {
        // overlay2 does not stack on the root's overlay.
        daemon["storage-driver"] = "vfs".into();
    }
    let daemon_json = host.path().join("daemon.json");
    std::fs::write(&daemon_json, daemon.to_string()).unwrap();
    let d = Dockerd::start(
        engines,
        &host.path().join("docker"),
        &daemon_json,
        None,
        &[],
    );
    let version = d.server_version();
    eprintln!("dockerd {version}");
    if engines.is_forky() {
        assert!(major(&version) >= 28, "forky's dockerd is {version}");
    }
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    tar_of(&rootfs, &tar);
    let image = format!("{driver}-bb:1");
    d.ok(&["import", tar.to_str().unwrap(), &image]);

    // Refused clearly: an unknown pool, and a PF/VLAN no pool has.
    let o = d.docker(&network_create(&driver, &["-o", "pool=nope", "bad1"]));
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no pool named \"nope\""), "{e}");
    let pf = format!("{}p", host.tag);
    let o = d.docker(&network_create(
        &driver,
        &["-o", &format!("pf={pf}"), "-o", "vlan=100", "bad2"],
    ));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no netdev pool has PF"));

    // The how-to's form: pf (no VLAN here) maps to the netdev pool.
    let net = format!("{driver}net");
    d.ok(&network_create(
        &driver,
        &[
            "-o",
            &format!("pf={pf}"),
            "--subnet",
            "10.82.0.0/24",
            "--gateway",
            "10.82.0.1",
            &net,
        ],
    ));

    // docker run: the VF's interface is eth0 with Docker's address and the
    // VF's MAC; after --rm it is back on the host and its lease is gone.
    let vf0 = host.vf_netdev(0);
    let mac0 = host.mac(&vf0);
    let t = Instant::now();
    let out = d.ok(&[
        "run",
        "--rm",
        "--net",
        &net,
        "--ip",
        "10.82.0.5",
        &image,
        "sh",
        "-c",
        "ip addr show; ip route show",
    ]);
    let run_ms = t.elapsed().as_millis();
    let eth0 = eth0_block(&out);
    assert!(eth0.contains("inet 10.82.0.5/24"), "{out}");
    assert!(eth0.contains(&format!("link/ether {mac0}")), "{out}");
    assert!(out.contains("default via 10.82.0.1 dev eth0"), "{out}");
    assert!(host.host_has(&vf0), "veth back after docker run --rm");
    assert_eq!(host.leases(), 0);

    // A long-running container; the plugin crashes and comes back while it
    // runs; docker exec, then docker rm through the new plugin process.
    let name = format!("{driver}c");
    d.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--net",
        &net,
        "--ip",
        "10.82.0.6",
        &image,
        "sleep",
        "300",
    ]);
    let held: Vec<String> = (0..2)
        .map(|i| host.vf_netdev(i))
        .filter(|n| !host.host_has(n))
        .collect();
    assert_eq!(held.len(), 1, "one VF netdev is in the container");
    assert_eq!(host.leases(), 1);
    plugin.kill();
    plugin.restart();
    let inside = d.ok(&["exec", &name, "ip", "addr", "show", "eth0"]);
    assert!(inside.contains("inet 10.82.0.6/24"), "{inside}");
    assert!(
        inside.contains(&format!("link/ether {}", host.mac_of_leased())),
        "{inside}"
    );
    // A second container after the restart: the network map survived.
    let out = d.ok(&[
        "run", "--rm", "--net", &net, &image, "ip", "addr", "show", "eth0",
    ]);
    assert!(out.contains("inet 10.82.0."), "{out}");
    let t = Instant::now();
    d.ok(&["rm", "-f", &name]);
    let rm_ms = t.elapsed().as_millis();
    for i in 0..2 {
        assert!(
            host.host_has(&host.vf_netdev(i)),
            "{} back",
            host.vf_netdev(i)
        );
    }
    assert_eq!(host.leases(), 0, "dockerd log: {}", d.log());
    d.ok(&["network", "rm", &net]);
    assert!(plugin.alive());
    eprintln!(
        "docker run --rm (create, join, leave, delete): {run_ms} ms; docker rm -f: {rm_ms} ms"
    );
    let calls: Vec<String> = std::fs::read_to_string(&plugin.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split("method: ")
                .nth(1)
                .map(|m| m.split(',').next().unwrap_or(m).to_owned())
        })
        .collect();
    eprintln!("calls dockerd made: {}", calls.join(" "));
}

trait LeasedMac {
    fn mac_of_leased(&self) -> String;
}

impl LeasedMac for VethHost {
    /// The MAC recorded in the only lease.
    fn mac_of_leased(&self) -> String {
        let dir = self.path().join("state/leases");
        let f = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
        v["mac"].as_str().unwrap().to_owned()
    }
}
