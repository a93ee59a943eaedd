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
//! after the container is gone. The CRI row drives containerd 2.1's CRI
//! plugin with our own client (tests/src/cri.rs): a pod whose handler
//! `configure containerd` made gets the VF in its sandbox and gives it back
//! when it is removed. The CDI rows hand a VF claimed by `kata-sriov cdi
//! claim` to `docker run --device` and `podman run --device` and check the
//! node in the container, then the spec gone and the VF back after `cdi
//! release`. The Docker network driver on Docker 28 is in
//! docker_dockerd.rs. Each test skips (saying so) when the root is not built
//! and `CI` is unset; under CI a missing root fails. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use kata_sriov_tests::busybox_rootfs;
use kata_sriov_tests::cri::{v1 as cri, Cri};
use kata_sriov_tests::engines::{
    major, oci_image_tar, ok, podman_private_args, tar_of, Containerd, Dockerd, Engines,
};
use kata_sriov_tests::{eventually, output_within, workspace_bin, FakeHost, FakeKernel};

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

/// `path`'s spec (JSON), and that its `linux.devices` has the claimed VF's
/// VFIO group node.
fn spec_with_node(host: &FakeHost, lease: &Value, path: &Path) -> Value {
    let spec: Value = serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    let g = host.group_of(lease["vf"].as_str().unwrap().parse().unwrap());
    let node = format!("/dev/vfio/{g}");
    assert!(
        spec["linux"]["devices"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["path"] == node.as_str())),
        "{node} not in {}'s linux.devices: {}",
        path.display(),
        spec["linux"]["devices"]
    );
    spec
}

/// `run --rm --network none ARGS...` for docker and podman.
fn run_rm<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["run", "--rm", "--network", "none"][..], args].concat()
}

/// A busybox rootfs tarred for `docker import` / `podman import`.
fn busybox_tar(host: &FakeHost) -> PathBuf {
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    tar_of(&rootfs, &tar);
    tar
}

fn timed(what: &str, t: Instant) {
    eprintln!("{what}: {} ms", t.elapsed().as_millis());
}

/// containerd 2.1 with our shim on its PATH and the fake host's config.
fn containerd_with_our_shim(engines: &Engines, host: &FakeHost) -> Containerd {
    let bin = shim_dir(host);
    Containerd::start(
        engines,
        &host.path().join("containerd"),
        Some(&bin),
        &[("KATA_SRIOV_CONFIG", &host.config)],
    )
}

/// `ctr run -d` of container `id` through our shim with a request for
/// the pool; waits until it has listed its /dev/vfio and checks the claim.
fn ctr_run_with_a_vf(c: &Containerd, host: &FakeHost, id: &str) -> Value {
    let rootfs = host.path().join(format!("rootfs-{id}"));
    busybox_rootfs(&rootfs);
    // ctr makes the task's stdio fifos: in its own namespace's /run by
    // default, which containerd's namespace does not see.
    let fifo = host.path().join("fifo").display().to_string();
    let req = format!("{REQUEST}={POOL}");
    let run = [
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
    ];
    ok("ctr run", &c.ctr(&run, T));
    let seen = rootfs.join("seen");
    assert!(
        eventually(T, || seen.exists()),
        "the container did not run; containerd:\n{}\nlog:\n{}",
        c.log(),
        host.log()
    );
    let ls = std::fs::read_to_string(&seen).unwrap();
    check_claim(host, &format!("default/{id}"), &ls)
}

#[test]
fn containerd_2_ctr_run_through_our_shim_gets_the_vf_and_gives_it_back() {
    let Some(engines) = Engines::forky("containerd 2.1 + our shim") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let c = containerd_with_our_shim(&engines, &host);
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
    let id = "ks1";
    let t = Instant::now();
    let lease = ctr_run_with_a_vf(&c, &host, id);
    timed("ctr run -d (claim, start)", t);
    let bundle = bundle_of(&host, id);
    assert_hook_free(&bundle);
    // containerd recorded our binary as the shim to call for cleanup.
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
    // The task is deleted: no poststop hook, so the shim's delete released.
    lease_gone_within_a_second(&host, "ctr tasks rm returned");
    ok("ctr containers rm", &c.ctr(&["containers", "rm", id], T));
    check_released(&host, &lease);
    timed("ctr tasks kill + rm, containers rm (release)", t);
    let log = host.log();
    assert!(log.contains("start: claimed"), "{log}");
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    assert!(!log.contains("poststop"), "{log}");
    assert!(!bundle.exists(), "containerd left the bundle");
    timed("containerd 2 row", t0);
}

/// containerd 2.1's bundle directory of task `id` (namespace `default`).
fn bundle_of(host: &FakeHost, id: &str) -> PathBuf {
    host.path().join(format!(
        "containerd/state/io.containerd.runtime.v2.task/default/{id}"
    ))
}

/// Under Kata 4's runtime-rs any host hook switches the guest hooks off:
/// the delegate's config.json must carry none (issue 14).
fn assert_hook_free(bundle: &Path) {
    let text = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    let spec: Value = serde_json::from_str(&text).unwrap();
    assert!(
        spec.get("hooks").is_none(),
        "hooks in the delegate's spec: {}",
        spec["hooks"]
    );
    assert!(
        !text.contains("kata-sriov hook") && !text.contains("\"poststop\""),
        "{text}"
    );
}

/// Waits at most a second for the lease to go (release in the shim's
/// delete, which containerd calls when the delegate disconnects).
fn lease_gone_within_a_second(host: &FakeHost, after: &str) {
    let t = Instant::now();
    let gone = eventually(Duration::from_secs(1), || host.leased().is_empty());
    let took = t.elapsed();
    assert!(
        gone && took <= Duration::from_secs(1),
        "the lease was still there {took:?} after {after}; log:\n{}",
        host.log()
    );
    eprintln!("lease gone {took:?} after {after}");
}

/// The pid of the delegate (runc's shim) serving task `id` on `c`.
fn delegate_pid(c: &Containerd, id: &str) -> Option<i32> {
    let sock = c.sock.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let has = |flag: &str, v: &str| args.windows(2).any(|w| w[0] == flag && w[1] == v);
        (args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
            && has("-address", &sock)
            && has("-id", id))
        .then_some(pid)
    })
}

#[test]
fn containerd_2_sigkill_of_the_delegate_gives_the_vf_back_within_a_second() {
    let Some(engines) = Engines::forky("containerd 2.1: SIGKILL of the delegate") else {
        return;
    };
    let (host, _kernel) = fake_host();
    let c = containerd_with_our_shim(&engines, &host);
    let id = "ks9";
    let lease = ctr_run_with_a_vf(&c, &host, id);
    assert_hook_free(&bundle_of(&host, id));
    let pid = delegate_pid(&c, id).expect("the delegate shim's process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    lease_gone_within_a_second(&host, "SIGKILL of the delegate");
    check_released(&host, &lease);
    let log = host.log();
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    let _ = c.ctr(&["tasks", "rm", "-f", id], T);
    let _ = c.ctr(&["containers", "rm", id], T);
}

/// The image both the CRI sandbox (as the pinned sandbox image) and the
/// pod's container run.
const CRI_IMAGE: &str = "docker.io/library/ks-bb:1";

/// The CRI plugin's settings a node without a registry needs: the native
/// snapshotter (the test's state is on tmpfs), a local sandbox image, and
/// no oom_score_adj below containerd's own (the pause container's -998
/// needs CAP_SYS_RESOURCE, which a test machine in a container may lack).
fn cri_config(engines: &Engines, dir: &Path) -> String {
    format!(
        "{}[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n\
         [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{CRI_IMAGE}\"\n\
         [plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n",
        Containerd::base_config(engines, dir, true)
    )
}

/// `kata-sriov configure containerd` and `check` against the forky root's
/// own containerd 2.1 and its shipped `/etc/containerd/config.toml`
/// (`version = 2`), in one private instance of the root: a drop-in of the
/// same version, imported; a second run changes nothing; `containerd config
/// dump` loads the result; `check` reads it; an unparsable main config is
/// named and nothing is written.
#[test]
fn containerd_2_configure_writes_an_imported_dropin_that_containerd_loads_and_check_reads() {
    let Some(engines) = Engines::forky("configure containerd on containerd 2.1") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let out = host.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        r#"set -u
ks() {{ {ks} --config {cfg} "$@"; }}
O={out}
cp /etc/containerd/config.toml $O/shipped.toml
ks configure containerd --dry-run >$O/dry.txt 2>&1; echo $? >$O/dry.rc
test -e /etc/containerd/conf.d/kata-sriov.toml && echo written-by-dry-run >$O/dry.rc
ks configure containerd >$O/first.txt 2>&1; echo $? >$O/first.rc
ks configure containerd >$O/second.txt 2>&1; echo $? >$O/second.rc
cp /etc/containerd/config.toml $O/main.toml
cp /etc/containerd/conf.d/kata-sriov.toml $O/dropin.toml
containerd config dump >$O/dump.toml 2>$O/dump.err; echo $? >$O/dump.rc
ks check --json >$O/check.json 2>/dev/null
printf 'version = 2
[plugins
' >/etc/containerd/config.toml
rm /etc/containerd/conf.d/kata-sriov.toml
ks configure containerd >$O/bad.txt 2>&1; echo $? >$O/bad.rc
test -e /etc/containerd/conf.d/kata-sriov.toml && echo written >>$O/bad.rc
ks check --json >$O/check-bad.json 2>/dev/null
exit 0
"#,
        ks = workspace_bin("kata-sriov").display(),
        cfg = host.config.display(),
        out = out.display(),
    );
    let t = Instant::now();
    ok("the script", &engines.output("sh", &["-c", &script], T));
    timed(
        "configure twice, config dump, check, bad config (one forky run)",
        t,
    );
    let read =
        |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let shipped = read("shipped.toml");
    assert!(shipped.starts_with("version = 2"), "forky ships: {shipped}");
    let dropin_path = "/etc/containerd/conf.d/kata-sriov.toml";
    assert_eq!(read("dry.rc").trim(), "0", "{}", read("dry.txt"));
    assert!(
        read("dry.txt").contains(&format!("+++ {dropin_path}")),
        "{}",
        read("dry.txt")
    );
    assert_eq!(read("first.rc").trim(), "0", "{}", read("first.txt"));
    assert!(
        read("first.txt").contains("containerd 2.1"),
        "{}",
        read("first.txt")
    );
    assert_eq!(read("second.rc").trim(), "0");
    assert!(
        read("second.txt")
            .lines()
            .filter(|l| l.contains("already configured, no change"))
            .count()
            == 2,
        "{}",
        read("second.txt")
    );
    let dropin = read("dropin.toml");
    assert!(dropin.starts_with("version = 2\n"), "{dropin}");
    assert!(read("main.toml").contains(&format!("imports = [\"{dropin_path}\"]")));
    assert_eq!(read("dump.rc").trim(), "0", "{}", read("dump.err"));
    let dump = read("dump.toml");
    let ks = dump
        .split("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata-sriov]")
        .nth(1)
        .or_else(|| {
            dump.split("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-sriov]")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("containerd 2.1 does not see the runtime:\n{dump}"));
    let ks = ks.split("\n\n").next().unwrap();
    assert!(ks.contains("io.containerd.kata-sriov.v2"), "{ks}");
    assert!(ks.contains("io.kata-sriov.*"), "{ks}");
    let runtime_check = |f: &str| -> Value {
        let r: Value = serde_json::from_str(&read(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        r["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == "containerd.runtime"))
            .cloned()
            .unwrap_or_else(|| panic!("no containerd.runtime in {r}"))
    };
    let c = runtime_check("check.json");
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("config dump"),
        "{c}"
    );
    // An unparsable main config: named, nothing written, and check says
    // containerd cannot load it.
    assert_ne!(read("bad.rc").trim(), "0");
    assert!(
        !read("bad.rc").contains("written"),
        "configure wrote the drop-in"
    );
    assert!(
        read("bad.txt").contains("/etc/containerd/config.toml"),
        "{}",
        read("bad.txt")
    );
    let c = runtime_check("check-bad.json");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains("cannot load"),
        "{c}"
    );
    timed("configure containerd 2.1 row", t0);
}

/// A pod on the node's network (no CNI here) whose annotations ask for a
/// VF.
fn pod_config(annotations: &[(&str, &str)]) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "vf-pod".into(),
            uid: "6b1f6e62-0000-4000-8000-000000000001".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node.into(),
                    pid: cri::NamespaceMode::Pod.into(),
                    ipc: cri::NamespaceMode::Pod.into(),
                }),
            }),
        }),
        ..Default::default()
    }
}

#[test]
fn containerd_2_cri_runtime_handler_from_configure_gives_the_pod_its_vf_and_takes_it_back() {
    let Some(engines) = Engines::forky("containerd 2.1 CRI") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let bin = shim_dir(&host);
    let dir = host.path().join("containerd");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, cri_config(&engines, &dir)).unwrap();
    // The runtime handler, with our annotations in pod_annotations, as an
    // admin of this containerd 2.1 gets it: a drop-in, imported.
    let o = engines.output(
        workspace_bin("kata-sriov").to_str().unwrap(),
        &[
            "--config",
            host.config.to_str().unwrap(),
            "configure",
            "containerd",
            "--file",
            cfg.to_str().unwrap(),
        ],
        T,
    );
    ok("kata-sriov configure containerd (in the forky root)", &o);
    let dropin = dir.join("conf.d/kata-sriov.toml");
    let text = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        text.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.kata-sriov]"),
        "{text}"
    );
    let main = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        main.contains(&format!("imports = [{:?}]", dropin)),
        "{main}"
    );
    let c = Containerd::start_with(
        &engines,
        &dir,
        &cfg,
        Some(&bin),
        &[("KATA_SRIOV_CONFIG", &host.config)],
    );
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    oci_image_tar(&rootfs, CRI_IMAGE, &["sleep", "300"], &tar);
    let t = Instant::now();
    ok(
        "ctr images import",
        &c.ctr(
            &[
                "-n",
                "k8s.io",
                "images",
                "import",
                // Not through the transfer service, which unpacks only
                // for the snapshotters of its unpack_config.
                "--local",
                "--snapshotter",
                "native",
                tar.to_str().unwrap(),
            ],
            T,
        ),
    );
    timed("ctr -n k8s.io images import", t);
    let api = Cri::connect(&c.sock).unwrap();
    let v = api
        .call(|mut c| async move {
            c.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
        .unwrap();
    eprintln!(
        "CRI: {} {} ({})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    assert!(major(&v.runtime_version) >= 2, "{v:?}");

    // An unknown handler is refused and claims nothing.
    let pod = pod_config(&[(REQUEST, POOL)]);
    let p = pod.clone();
    let e = api
        .call(|mut c| async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p),
                runtime_handler: "no-such-handler".into(),
            })
            .await
        })
        .unwrap_err();
    assert!(e.message().contains("no-such-handler"), "{e}");
    assert!(host.leases().is_empty());

    let t = Instant::now();
    let p = pod.clone();
    let sandbox = api
        .call(|mut c| async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(p),
                runtime_handler: "kata-sriov".into(),
            })
            .await
        })
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox: {e}\ncontainerd:\n{}\nlog:\n{}",
                c.log(),
                host.log()
            )
        })
        .pod_sandbox_id;
    timed("RunPodSandbox (claim, start the sandbox)", t);
    // The sandbox holds the VF: its lease, the spec runc got, and the
    // sandbox's own /dev/vfio as the kernel shows it.
    let bundle = dir.join(format!(
        "state/io.containerd.runtime.v2.task/k8s.io/{sandbox}"
    ));
    let spec: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec["annotations"]["io.kubernetes.cri.container-type"], "sandbox",
        "{}",
        spec["annotations"]
    );
    assert_eq!(
        spec["annotations"][REQUEST], POOL,
        "pod_annotations did not pass it"
    );
    let pid = std::fs::read_to_string(bundle.join("init.pid")).unwrap();
    let ls = output_within(
        Command::new("ls")
            .arg("-ln")
            .arg(format!("/proc/{}/root/dev/vfio/", pid.trim())),
        T,
    );
    let ls = ok("ls the sandbox's /dev/vfio", &ls);
    let lease = check_claim(&host, &format!("k8s.io/{sandbox}"), &ls);
    spec_with_node(&host, &lease, &bundle.join("config.json"));

    // A container of the pod: it runs, and the sandbox keeps the one claim.
    let t = Instant::now();
    let (sb, p) = (sandbox.clone(), pod.clone());
    let ctr = api
        .call(|mut c| async move {
            c.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb,
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: CRI_IMAGE.into(),
                        ..Default::default()
                    }),
                    command: vec!["sleep".into(), "300".into()],
                    ..Default::default()
                }),
                sandbox_config: Some(p),
            })
            .await
        })
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\ncontainerd:\n{}", c.log()))
        .container_id;
    let id = ctr.clone();
    api.call(|mut c| async move {
        c.start_container(cri::StartContainerRequest { container_id: id })
            .await
    })
    .unwrap_or_else(|e| {
        panic!(
            "StartContainer: {e}\ncontainerd:\n{}\nlog:\n{}",
            c.log(),
            host.log()
        )
    });
    timed("CreateContainer + StartContainer", t);
    let id = ctr.clone();
    let st = api
        .call(|mut c| async move {
            c.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
        })
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.state(), cri::ContainerState::ContainerRunning, "{st:?}");
    let id = ctr.clone();
    let exec = api
        .call(|mut c| async move {
            c.exec_sync(cri::ExecSyncRequest {
                container_id: id,
                cmd: vec!["cat".into(), "/proc/self/cgroup".into()],
                timeout: 30,
            })
            .await
        })
        .unwrap();
    assert_eq!(exec.exit_code, 0, "{exec:?}");
    // containerd 2.x hands a pod's containers to the sandbox's shim (no
    // second `start`): still the sandbox's one claim, and the container's
    // spec names that sandbox.
    assert_eq!(host.leases().len(), 1, "{:?}", host.leases());
    assert_eq!(
        host.log().matches("start: claimed").count(),
        1,
        "{}",
        host.log()
    );
    let cspec: Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!(
            "state/io.containerd.runtime.v2.task/k8s.io/{ctr}/config.json"
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        cspec["annotations"]["io.kubernetes.cri.sandbox-id"],
        sandbox.as_str()
    );

    let t = Instant::now();
    let sb = sandbox.clone();
    api.call(|mut c| async move {
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sb })
            .await
    })
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\ncontainerd:\n{}", c.log()));
    let sb = sandbox.clone();
    api.call(|mut c| async move {
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
            .await
    })
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\ncontainerd:\n{}", c.log()));
    check_released(&host, &lease);
    timed("StopPodSandbox + RemovePodSandbox (release)", t);
    let list = api
        .call(|mut c| async move {
            c.list_containers(cri::ListContainersRequest { filter: None })
                .await
        })
        .unwrap();
    assert!(list.containers.is_empty(), "{list:?}");
    assert!(!bundle.exists(), "containerd left the sandbox bundle");
    timed("containerd 2 CRI row", t0);
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

    let tar = busybox_tar(&host);
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

/// `kata-sriov cdi claim --pool fast --name NAME`: the qualified name it
/// printed, the spec it wrote (checked against the lease) and the lease.
fn cdi_claim(host: &FakeHost, name: &str) -> (String, Value) {
    let qualified = kata_sriov(host, &["cdi", "claim", "--pool", POOL, "--name", name])
        .trim()
        .to_owned();
    assert_eq!(qualified, format!("kata-sriov.io/vf={name}"));
    let spec_path = cdi_spec(host, name);
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(spec["kind"], "kata-sriov.io/vf", "{spec}");
    assert_eq!(spec["devices"][0]["name"], name, "{spec}");
    let leases = host.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["owner"], format!("cdi/{name}"));
    (qualified, leases[0].clone())
}

fn cdi_spec(host: &FakeHost, name: &str) -> PathBuf {
    host.path().join(format!("cdi/kata-sriov-cdi-{name}.json"))
}

/// `kata-sriov cdi release NAME`: the spec gone, the VF back.
fn cdi_release(host: &FakeHost, name: &str, lease: &Value) {
    let out = kata_sriov(host, &["cdi", "release", name]);
    assert!(
        out.contains(&format!("released {}", lease["vf"].as_str().unwrap())),
        "{out}"
    );
    assert!(!cdi_spec(host, name).exists(), "spec left after release");
    check_released(host, lease);
}

#[test]
fn docker_28_cdi_device_from_cdi_claim_sees_the_vf() {
    let Some(engines) = Engines::forky("Docker 28 CDI") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let cdi_dir = host.path().join("cdi");
    let daemon_json = host.path().join("daemon.json");
    std::fs::write(
        &daemon_json,
        serde_json::json!({
            "bridge": "none", "iptables": false, "ip-masq": false, "ip6tables": false,
            "storage-driver": "vfs", "cdi-spec-dirs": [cdi_dir],
        })
        .to_string(),
    )
    .unwrap();
    let d = Dockerd::start(
        &engines,
        &host.path().join("docker"),
        &daemon_json,
        None,
        &[],
    );
    let dirs = d.ok(&["info", "--format", "{{json .CDISpecDirs}}"]);
    assert!(
        dirs.contains(cdi_dir.to_str().unwrap()),
        "docker info CDISpecDirs: {dirs}"
    );
    let tar = busybox_tar(&host);
    d.ok(&["import", tar.to_str().unwrap(), "ks-bb:1"]);

    // An unknown device is the engine's error; nothing is claimed.
    let bad = d.docker(&run_rm(&[
        "--device",
        "kata-sriov.io/vf=nope",
        "ks-bb:1",
        "true",
    ]));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("kata-sriov.io/vf=nope"),
        "{bad:?}"
    );

    let t = Instant::now();
    let (qualified, lease) = cdi_claim(&host, "web1");
    timed("kata-sriov cdi claim", t);
    let t = Instant::now();
    let ls = d.ok(&run_rm(&[
        "--device",
        &qualified,
        "ks-bb:1",
        "ls",
        "-l",
        "/dev/vfio/",
    ]));
    timed("docker run --device (CDI)", t);
    check_claim(&host, "cdi/web1", &ls);
    let t = Instant::now();
    cdi_release(&host, "web1", &lease);
    timed("kata-sriov cdi release", t);
    timed("Docker 28 CDI row", t0);
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
        c.args(podman_private_args(&self.dir.join("storage")))
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
    let tar = busybox_tar(&host);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/ks-bb:1"]);

    // Without the annotation the hooks do not apply: no claim.
    let plain = p.ok(&run_rm(&["localhost/ks-bb:1", "ls", "/dev"]));
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
    let spec = spec_with_node(&host, &lease, &bundle_spec);
    assert_eq!(spec["annotations"]["io.kata-sriov.owner"], owner.as_str());
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

#[test]
fn podman_5_cdi_device_from_cdi_claim_sees_the_vf() {
    let Some(engines) = Engines::forky("podman 5.8 CDI") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let hooks = host.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let p = Podman::new(&engines, &host.path().join("podman"), &hooks, &host.config);
    let tar = busybox_tar(&host);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/ks-bb:1"]);
    let cdi_dir = host.path().join("cdi");
    let cdi_dir = cdi_dir.to_str().unwrap();

    let t = Instant::now();
    let (qualified, lease) = cdi_claim(&host, "db1");
    timed("kata-sriov cdi claim", t);
    let run_cdi = |cmd: &[&str]| {
        let head = ["--device", &qualified, "localhost/ks-bb:1"];
        let run = run_rm(&[&head[..], cmd].concat());
        p.podman(&[&["--cdi-spec-dir", cdi_dir][..], &run].concat())
    };
    let t = Instant::now();
    let ls = ok("podman run --device", &run_cdi(&["ls", "-l", "/dev/vfio/"]));
    timed("podman run --device (CDI)", t);
    check_claim(&host, "cdi/db1", &ls);
    // The guest description reaches the container's environment.
    let env = ok(
        "podman run --device",
        &run_cdi(&["sh", "-c", "echo $KATA_SRIOV_GUEST_NETWORKS_0000_3b_10_0"]),
    );
    let spec: Value =
        serde_json::from_slice(&std::fs::read(cdi_spec(&host, "db1")).unwrap()).unwrap();
    let want = &spec["devices"][0]["annotations"]["io.kata-sriov.guest-networks"];
    assert!(
        want.as_str().is_some_and(|w| w.contains("pci_id")),
        "{spec}"
    );
    assert_eq!(env.trim(), want.as_str().unwrap(), "{spec}");
    let t = Instant::now();
    cdi_release(&host, "db1", &lease);
    timed("kata-sriov cdi release", t);
    // Released: the engine no longer resolves the name.
    let gone = run_cdi(&["true"]);
    assert!(!gone.status.success(), "{gone:?}");
    timed("podman 5.8 CDI row", t0);
}

/// The CDI spec the DRA agent's prepare writes (`--plug hot`, the way a
/// runc pod or Kata hot plug gets its VF), resolved by podman 5.8's CDI
/// support (`--device kata-sriov.io/vf=<name>`) into a runc container that
/// sees the VF's `/dev/vfio/<group>` and `/dev/vfio/vfio` (real character
/// nodes, made with mknod under the fake tree's `dev_root`, with the
/// numbers the spec names). Prepare runs in this process (the library
/// call the gRPC service makes; the kubelet side is in kubernetes/tests).
#[test]
fn podman_5_resolves_the_cdi_spec_of_a_dra_prepare_into_the_vfio_nodes() {
    use std::sync::Arc;

    use k8s_openapi::api::resource::v1::{
        AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult, ResourceClaim,
        ResourceClaimStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kata_sriov::kernel::sysfs::SysfsRoot;
    use kata_sriov::kernel::vfio::SysfsBinder;
    use kata_sriov::policy::config::Config;
    use kata_sriov_k8s::host::{Host, Plug, Settings};
    use kata_sriov_k8s::{names, prepare};

    let Some(engines) = Engines::forky("podman 5.8 CDI from a DRA prepare") else {
        return;
    };
    let t0 = Instant::now();
    let (host, _kernel) = fake_host();
    let cfg = Config::load(Some(&host.config)).unwrap();
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let agent = Host::new(
        cfg,
        Arc::new(kata_sriov::testing::FileNetlink::new(
            &host.path().join("nl"),
        )),
        Arc::new(binder),
    );
    let cdi_dir = host.path().join("cdi");
    let settings = Settings {
        driver: "kata-sriov.io".into(),
        node: "node-1".into(),
        cdi_dir: cdi_dir.clone(),
        plugins_registry: host.path().join("registry"),
        plugins_dir: host.path().join("plugins"),
        rescan: Duration::from_secs(10),
        plug: Plug::Hot,
    };
    const UID: &str = "0c4a5f8e-1d2b-4c3a-9f00-123456789abc";
    let device = names::device_name(host.vf(1));
    let claim = ResourceClaim {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some("c1".into()),
            uid: Some(UID.into()),
            ..ObjectMeta::default()
        },
        spec: Default::default(),
        status: Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    config: None,
                    results: Some(vec![DeviceRequestAllocationResult {
                        request: "vf".into(),
                        driver: "kata-sriov.io".into(),
                        pool: names::dra_pool("node-1", POOL),
                        device: device.clone(),
                        ..DeviceRequestAllocationResult::default()
                    }]),
                }),
                ..AllocationResult::default()
            }),
            ..ResourceClaimStatus::default()
        }),
    };
    let prepared = prepare::prepare(&agent, &settings, UID, &claim).unwrap();
    assert_eq!(prepared.len(), 1);
    let cdi_name = prepared[0].cdi_id.clone();
    assert!(cdi_name.starts_with("kata-sriov.io/vf="), "{cdi_name}");

    let hooks = host.path().join("no-hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let p = Podman::new(&engines, &host.path().join("podman"), &hooks, &host.config);
    let rootfs = host.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let tar = host.path().join("bb.tar");
    tar_of(&rootfs, &tar);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/ks-bb:1"]);
    // podman with our CDI spec directory, a container given CDI device `name`.
    let run_with = |name: &str, script: &str| {
        p.podman(&[
            "--cdi-spec-dir",
            cdi_dir.to_str().unwrap(),
            "run",
            "--rm",
            "--network",
            "none",
            "--device",
            name,
            "localhost/ks-bb:1",
            "sh",
            "-c",
            script,
        ])
    };
    let t = Instant::now();
    let ls = ok(
        "podman run --device <CDI name>",
        &run_with(&cdi_name, "ls -l /dev/vfio/; env"),
    );
    timed("podman run --device <CDI name>", t);
    // The VF's group node and the container node, with the host's numbers;
    // the guest description in the environment.
    let lease = check_claim(&host, UID, &ls);
    assert_eq!(lease["vf"], host.vf(1).to_string());
    let env_name = kata_sriov::oci::cdi::guest_env_name(host.vf(1));
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&format!("{env_name}=[{{"))),
        "{ls}"
    );
    // An unknown CDI name is refused by the engine, not ignored.
    assert!(!run_with("kata-sriov.io/vf=no-such-device", "true")
        .status
        .success());

    prepare::unprepare(&agent, &settings, UID).unwrap();
    check_released(&host, &lease);
    assert!(!prepare::spec_path(&settings, UID).unwrap().exists());
    timed("podman 5.8 CDI row", t0);
}
