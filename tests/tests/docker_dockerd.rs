//! The Docker driver with the real dockerd (Debian's docker.io 20.10),
//! started by the test with its own data root, exec root and API socket,
//! `--bridge=none --iptables=false --ip-masq=false`, and an image made with
//! `docker import` from a busybox rootfs. dockerd finds remote drivers by
//! name in /run/docker/plugins: the plugin listens on
//! `/run/docker/plugins/<tag>.sock` and the network is created with
//! `-d <tag>`. veth ends stand in for the VFs' netdevs. Needs root, dockerd
//! and `ip`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use netdev_support::{busybox_rootfs, Plugin, VethHost};

const DOCKER: &str = "/usr/bin/docker";

struct Dockerd {
    child: Option<Child>,
    sock: PathBuf,
    dir: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let d = Dockerd {
            child: Some(child),
            sock,
            dir: dir.to_owned(),
        };
        let start = Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "dockerd did not come up: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: dockerd stops its containers and unmounts.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The lines of busybox `ip addr` about the interface whose line has `eth0`.
fn eth0_block(out: &str) -> String {
    out.lines()
        .skip_while(|l| !l.contains(": eth0"))
        .take_while(|l| l.starts_with(' ') || l.contains(": eth0"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn docker_run_gets_the_vf_and_docker_rm_returns_it_across_a_plugin_restart() {
    let host = VethHost::new("kd", 2, "");
    let driver = host.tag.clone();
    let mut plugin = Plugin::start(
        &host.config,
        &PathBuf::from(format!("/run/docker/plugins/{driver}.sock")),
        &host.path().join("plugin.log"),
    );
    let d = Dockerd::start(&host.path().join("docker"));
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    netdev_support::run(
        "tar",
        &[
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    let image = format!("{driver}-bb:1");
    d.ok(&["import", tar.to_str().unwrap(), &image]);

    // Refused clearly: an unknown pool, and a PF/VLAN no pool has.
    let o = d.docker(&[
        "network",
        "create",
        "-d",
        &driver,
        "-o",
        "pool=nope",
        "bad1",
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no pool named \"nope\""), "{e}");
    let pf = format!("{}p", host.tag);
    let o = d.docker(&[
        "network",
        "create",
        "-d",
        &driver,
        "-o",
        &format!("pf={pf}"),
        "-o",
        "vlan=100",
        "bad2",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no netdev pool has PF"));

    // The how-to's form: pf (no VLAN here) maps to the netdev pool.
    let net = format!("{driver}net");
    d.ok(&[
        "network",
        "create",
        "-d",
        &driver,
        "-o",
        &format!("pf={pf}"),
        "--subnet",
        "10.82.0.0/24",
        "--gateway",
        "10.82.0.1",
        &net,
    ]);

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
