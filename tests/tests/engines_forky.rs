//! The engines people run today, from the Debian forky root that
//! `scripts/forky-root.sh build` makes (scripts/test.sh builds it first):
//! containerd 2.1 + runc through our shim (`ctr run --runtime
//! io.containerd.kata-sriov.v2`), Docker 28 with the runtime that `kata-sriov
//! configure docker` adds (`runtimeType`), and podman 5.8 + runc with the
//! hooks.d files that `kata-sriov configure podman` installs (the claim in
//! `precreate`). Each gives a container a VF from a fake host (a fake sysfs
//! tree whose VFs are on igbvf, with a [`FakeKernel`] doing the kernel's
//! part of binding, `/dev/vfio` character nodes under a temp `dev_root`,
//! pool `fast` that keeps the MAC, so no netlink call) and checks what the
//! engine and the kernel report: the VFIO node in the container, the lease
//! and the VF on vfio-pci while it runs, no lease and the VF back on igbvf
//! after the container is gone. The Docker network driver on Docker 28 is in
//! docker_dockerd.rs. Each test skips (saying so) when the root is not built
//! and `CI` is unset; under CI a missing root fails. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use kata_sriov_tests::engines::{major, ok, tar_of, Containerd, Dockerd, Engines};
use kata_sriov_tests::{eventually, output_within, workspace_bin, FakeHost, FakeKernel};
use netdev_support::busybox_rootfs;

const POOL: &str = "fast";
const REQUEST: &str = "io.kata-sriov.networks";
const T: Duration = Duration::from_secs(60);

const NATIVE: &str = "igbvf";

/// Two VFs on igbvf in pool `fast`, and the kernel that binds them; the
/// shim delegates to runc's shim, hooks run this workspace's `kata-sriov`.
fn fake_host() -> (FakeHost, FakeKernel) {
    let host = FakeHost::new(
        2,
        NATIVE,
        &format!(
            "[shim]\ndelegate = \"containerd-shim-runc-v2\"\n[hook]\nbinary = {:?}\n\
             [[pools]]\nname = \"{POOL}\"\npfs = [\"ens1f0\"]\nmac = \"keep\"\n",
            workspace_bin("kata-sriov")
        ),
    );
    let kernel = FakeKernel::start(&host.fake, NATIVE, &[NATIVE, "vfio-pci"]);
    (host, kernel)
}

/// A directory with our shim under its runtime name, for an engine's PATH.
fn shim_dir(host: &FakeHost) -> PathBuf {
    let bin = host.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(
        workspace_bin("containerd-shim-kata-sriov-v2"),
        bin.join("containerd-shim-kata-sriov-v2"),
    )
    .unwrap();
    bin
}

/// `kata-sriov --config CFG args`, which must succeed; its stdout.
fn kata_sriov(host: &FakeHost, args: &[&str]) -> String {
    let o = output_within(
        Command::new(workspace_bin("kata-sriov"))
            .arg("--config")
            .arg(&host.config)
            .args(args)
            .env_remove("KATA_SRIOV_LOG"),
        T,
    );
    ok(&format!("kata-sriov {args:?}"), &o)
}

/// The one lease (its owner must be `owner`) and the node line for its
/// VF's group in `ls -l /dev/vfio` output: `crw... 240, N ... N`.
fn check_claim(host: &FakeHost, owner: &str, ls: &str) -> Value {
    let leases = host.leases();
    assert_eq!(leases.len(), 1, "{leases:?}\nlog:\n{}", host.log());
    let l = leases[0].clone();
    assert_eq!(l["owner"], owner, "{l}");
    assert_eq!(l["state"], "claimed", "{l}");
    assert_eq!(l["original_driver"], NATIVE, "{l}");
    let vf = l["vf"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        host.fake.root().driver(vf).unwrap().as_deref(),
        Some("vfio-pci"),
        "{vf} is not on vfio-pci while claimed"
    );
    let g = host.group_of(vf);
    assert!(
        ls.lines().any(|line| line.starts_with('c')
            && line.contains(&format!("240, {g:>3}"))
            && line.ends_with(&format!(" {g}"))),
        "no /dev/vfio/{g} (240:{g}) in the container:\n{ls}"
    );
    assert!(
        ls.lines()
            .any(|line| line.contains("10, 196") && line.ends_with(" vfio")),
        "no /dev/vfio/vfio in the container:\n{ls}"
    );
    l
}

/// After the container: no lease, every VF back on igbvf (the driver the
/// claimed one's lease recorded).
fn check_released(host: &FakeHost, lease: &Value) {
    assert!(
        eventually(T, || host.leased().is_empty()),
        "lease left: {:?}\nlog:\n{}",
        host.leases(),
        host.log()
    );
    for i in 0..host.vfs {
        assert_eq!(
            host.driver(i).as_deref(),
            lease["original_driver"].as_str(),
            "VF {i} ({}) is not back on its driver",
            host.vf(i)
        );
    }
}

fn timed(what: &str, t: Instant) {
    eprintln!("{what}: {} ms", t.elapsed().as_millis());
}

#[test]
fn containerd_2_ctr_run_through_our_shim_gets_the_vf_and_gives_it_back() {
    let Some(engines) = Engines::forky("containerd 2.1 + our shim") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let bin = shim_dir(&host);
    let c = Containerd::start(
        &engines,
        &host.path().join("containerd"),
        Some(&bin),
        &[("KATA_SRIOV_CONFIG", &host.config)],
    );
    let version = ok("ctr version", &c.ctr(&["version"], T));
    let server = version.split("Server:").nth(1).unwrap_or_default();
    let v = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    eprintln!("containerd {v}");
    assert!(major(&v) >= 2, "forky's containerd is {v}");
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    // ctr makes the task's stdio fifos: in its own namespace's /run by
    // default, which containerd's namespace does not see.
    let fifo = host.path().join("fifo").display().to_string();
    let req = format!("{REQUEST}={POOL}");
    let id = "ks1";
    let t = Instant::now();
    ok(
        "ctr run",
        &c.ctr(
            &[
                "run",
                "-d",
                "--fifo-dir",
                &fifo,
                "--runtime",
                "io.containerd.kata-sriov.v2",
                "--annotation",
                &req,
                "--rootfs",
                rootfs.to_str().unwrap(),
                id,
                "/bin/sh",
                "-c",
                "ls -l /dev/vfio/ >/seen.tmp; mv /seen.tmp /seen; exec sleep 300",
            ],
            T,
        ),
    );
    let seen = rootfs.join("seen");
    assert!(
        eventually(T, || seen.exists()),
        "the container did not run; containerd:\n{}\nlog:\n{}",
        c.log(),
        host.log()
    );
    timed("ctr run -d (claim, start)", t);
    let ls = std::fs::read_to_string(&seen).unwrap();
    let lease = check_claim(&host, &format!("default/{id}"), &ls);
    // containerd recorded our binary as the shim to call for cleanup.
    let bundle = host.path().join(format!(
        "containerd/state/io.containerd.runtime.v2.task/default/{id}"
    ));
    let recorded = std::fs::read_to_string(bundle.join("shim-binary-path")).unwrap();
    assert!(
        recorded.ends_with("containerd-shim-kata-sriov-v2"),
        "{recorded}"
    );

    let t = Instant::now();
    ok(
        "ctr tasks kill",
        &c.ctr(&["tasks", "kill", "-s", "SIGKILL", id], T),
    );
    assert!(
        eventually(T, || c.ctr(&["tasks", "rm", id], T).status.success()),
        "ctr tasks rm {id}: {}",
        c.log()
    );
    ok("ctr containers rm", &c.ctr(&["containers", "rm", id], T));
    check_released(&host, &lease);
    timed("ctr tasks kill + rm, containers rm (release)", t);
    let log = host.log();
    assert!(log.contains("start: claimed"), "{log}");
    assert!(!bundle.exists(), "containerd left the bundle");
    timed("containerd 2 row", t0);
}

#[test]
fn docker_28_runtime_from_configure_docker_gets_the_vf_and_gives_it_back() {
    let Some(engines) = Engines::forky("Docker 28 runtimeType") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let bin = shim_dir(&host);
    // An admin's daemon.json; configure adds the runtime and keeps the rest.
    let daemon_json = host.path().join("daemon.json");
    std::fs::write(
        &daemon_json,
        r#"{
  "bridge": "none",
  "iptables": false,
  "ip-masq": false,
  "ip6tables": false,
  "storage-driver": "vfs"
}
"#,
    )
    .unwrap();
    kata_sriov(
        &host,
        &[
            "configure",
            "docker",
            "--file",
            daemon_json.to_str().unwrap(),
        ],
    );
    let cfg: Value = serde_json::from_slice(&std::fs::read(&daemon_json).unwrap()).unwrap();
    assert_eq!(
        cfg["runtimes"]["kata-sriov"]["runtimeType"],
        "io.containerd.kata-sriov.v2"
    );
    assert_eq!(cfg["storage-driver"], "vfs");
    let d = Dockerd::start(
        &engines,
        &host.path().join("docker"),
        &daemon_json,
        Some(&bin),
        &[("KATA_SRIOV_CONFIG", &host.config)],
    );
    let version = d.server_version();
    eprintln!("dockerd {version}");
    assert!(major(&version) >= 28, "forky's dockerd is {version}");
    let info = d.ok(&["info", "--format", "{{json .Runtimes}}"]);
    assert!(info.contains("kata-sriov"), "docker info runtimes: {info}");

    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    tar_of(&rootfs, &tar);
    d.ok(&["import", tar.to_str().unwrap(), "ks-bb:1"]);

    let req = format!("{REQUEST}={POOL}");
    let t = Instant::now();
    let id = d
        .ok(&[
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            "--runtime",
            "kata-sriov",
            "--annotation",
            &req,
            "ks-bb:1",
            "sh",
            "-c",
            "ls -l /dev/vfio/; echo READY; exec sleep 300",
        ])
        .trim()
        .to_owned();
    let mut logs = String::new();
    assert!(
        eventually(T, || {
            logs = d.ok(&["logs", &id]);
            logs.contains("READY")
        }),
        "container output: {logs}\ndockerd:\n{}\nlog:\n{}",
        d.log(),
        host.log()
    );
    timed("docker run -d --runtime kata-sriov (claim, start)", t);
    let lease = check_claim(&host, &format!("moby/{id}"), &logs);

    let t = Instant::now();
    d.ok(&["kill", &id]);
    // --rm: dockerd removes the container once it has exited.
    assert!(
        eventually(T, || !d.docker(&["inspect", &id]).status.success()),
        "container {id} still there"
    );
    check_released(&host, &lease);
    timed("docker kill, --rm (release)", t);
    assert!(host.log().contains("start: claimed"), "{}", host.log());
    timed("Docker 28 runtimeType row", t0);
}

/// podman with its state under `dir` (the image store, and the `/run` that
/// runc's and conmon's state live in, shared by the separate `podman`
/// invocations), cgroupfs, events to a file, the hooks from `hooks`, and the
/// kata-sriov config at its default path.
struct Podman {
    engines: Engines,
    dir: PathBuf,
    hooks: PathBuf,
}

impl Podman {
    fn new(engines: &Engines, dir: &Path, hooks: &Path, config: &Path) -> Podman {
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let engines = engines
            .clone()
            .with_bind(&format!("{}:/run", run.display()))
            .with_bind(&format!("{}:/etc/kata-sriov/config.toml", config.display()));
        Podman {
            engines,
            dir: dir.to_owned(),
            hooks: hooks.to_owned(),
        }
    }

    fn podman(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.engines.command("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .args([
                "--runroot",
                "/run/containers/storage",
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ])
            .arg("--hooks-dir")
            .arg(&self.hooks)
            .args(args);
        output_within(&mut c, Duration::from_secs(120))
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&format!("podman {args:?}"), &self.podman(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
    }
}

#[test]
fn podman_5_hooks_from_configure_podman_claim_in_precreate_and_give_the_vf_back() {
    let Some(engines) = Engines::forky("podman 5.8 hooks.d") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let hooks = host.path().join("hooks.d");
    kata_sriov(
        &host,
        &["configure", "podman", "--file", hooks.to_str().unwrap()],
    );
    for stage in ["precreate", "poststop"] {
        let f = hooks.join(format!("kata-sriov-{stage}.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["stages"][0], stage, "{v}");
        assert_eq!(
            v["hook"]["path"],
            workspace_bin("kata-sriov").display().to_string()
        );
    }
    let p = Podman::new(&engines, &host.path().join("podman"), &hooks, &host.config);
    let version = p.ok(&["version", "--format", "{{.Client.Version}}"]);
    eprintln!("podman {}", version.trim());
    assert!(major(version.trim()) >= 5, "forky's podman is {version}");
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    tar_of(&rootfs, &tar);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/ks-bb:1"]);

    // Without the annotation the hooks do not apply: no claim.
    let plain = p.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/ks-bb:1",
        "ls",
        "/dev",
    ]);
    assert!(!plain.lines().any(|l| l == "vfio"), "{plain}");
    assert!(host.leased().is_empty());

    let req = format!("{REQUEST}={POOL}");
    let t = Instant::now();
    let run = p.podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--annotation",
        &req,
        "localhost/ks-bb:1",
        "sh",
        "-c",
        "ls -l /dev/vfio/; echo READY; exec sleep 300",
    ]);
    let id = ok(
        &format!("podman run (kata-sriov log:\n{})", host.log()),
        &run,
    )
    .trim()
    .to_owned();
    let mut logs = String::new();
    assert!(
        eventually(T, || {
            logs = p.ok(&["logs", &id]);
            logs.contains("READY")
        }),
        "container output: {logs}\nlog:\n{}",
        host.log()
    );
    timed("podman run -d (precreate claim, start)", t);
    let leases = host.leases();
    let owner = leases
        .first()
        .and_then(|l| l["owner"].as_str())
        .unwrap_or_default()
        .to_owned();
    let lease = check_claim(&host, &owner, &logs);
    // The spec runc got is the one precreate returned: the owner token
    // (precreate sees no container id and makes one) and the VFIO node.
    let bundle_spec = host.path().join(format!(
        "podman/storage/vfs-containers/{id}/userdata/config.json"
    ));
    let spec: Value = serde_json::from_slice(
        &std::fs::read(&bundle_spec).unwrap_or_else(|e| panic!("{}: {e}", bundle_spec.display())),
    )
    .unwrap();
    assert_eq!(spec["annotations"]["io.kata-sriov.owner"], owner.as_str());
    let g = host.group_of(lease["vf"].as_str().unwrap().parse().unwrap());
    let node = format!("/dev/vfio/{g}");
    assert!(
        spec["linux"]["devices"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["path"] == node.as_str())),
        "{node} not in the spec's linux.devices: {}",
        spec["linux"]["devices"]
    );
    // The createRuntime hook precreate injected tied the claim to the
    // container's bundle: podman (the hook's caller) has exited, and gc
    // keeps the VF of the running container.
    let userdata = bundle_spec.parent().unwrap();
    assert_eq!(
        host.leases()[0]["owner_check"]["bundle"],
        userdata.to_str().unwrap(),
        "{}",
        host.leases()[0]
    );
    let gc = kata_sriov(&host, &["gc"]);
    assert!(gc.contains("0 released, 1 kept"), "{gc}");

    let t = Instant::now();
    p.ok(&["rm", "-f", "-t", "0", &id]);
    check_released(&host, &lease);
    timed("podman rm -f (poststop release)", t);
    timed("podman 5.8 row", t0);
}
