//! The shim's `start`, `delete` and pass-through run directly, the way
//! containerd runs them, with a recording script as the delegate: what the
//! delegate receives (argv, working directory, environment, stdin bytes),
//! what we print, what the bundle and the ledger hold afterwards. Needs root
//! (mknod) and the `kata-sriov` binary built beside the shim.

// Test helpers: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

struct Setup {
    dir: tempfile::TempDir,
    host: FakeHost,
    bundle: PathBuf,
    out: PathBuf,
}

const FAKE_SHIM: &str = r#"#!/bin/sh
printf '%s\n' "$0" "$@" > "$KSS_OUT/argv"
pwd -P > "$KSS_OUT/cwd"
cat > "$KSS_OUT/stdin"
printf '%s' "$KSS_MARK" > "$KSS_OUT/env"
grep '^SigIgn:' /proc/$$/status > "$KSS_OUT/sigign"
printf 'unix:///run/fake.sock'
"#;

fn setup(vfs: u32, annotations: serde_json::Value, delegate_exists: bool) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("kssd")
        .tempdir_in("/tmp")
        .unwrap();
    let delegate = dir.path().join("fake-shim");
    if delegate_exists {
        fs::write(&delegate, FAKE_SHIM).unwrap();
        fs::set_permissions(&delegate, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let host = FakeHost::new(dir.path(), vfs, delegate.to_str().unwrap());
    let bundle = dir.path().join("bundle");
    fs::create_dir(&bundle).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        "annotations": annotations,
    });
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    Setup {
        dir,
        host,
        bundle,
        out,
    }
}

const STDIN: &[u8] = b"\x0a\x2btypes.containerd.io/opts\x00\xff binary options";

fn shim(s: &Setup, argv0: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(argv0);
    c.args(args)
        .current_dir(&s.bundle)
        .env("KATA_SRIOV_CONFIG", &s.host.config)
        .env_remove("KATA_SRIOV_LOG")
        .env("KSS_OUT", &s.out)
        .env("KSS_MARK", "passed-through")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut i = child.stdin.take().unwrap();
    // A shim that fails early does not read it (EPIPE), as with containerd.
    let _ = i.write_all(STDIN);
    drop(i);
    let st = wait_within(&mut child, Duration::from_secs(30)).expect("shim hung");
    let mut o = Output {
        status: st,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut o.stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut o.stderr)
        .unwrap();
    o
}

fn start_args(id: &str) -> Vec<&str> {
    vec![
        "-namespace",
        "k8s.io",
        "-address",
        "/run/containerd/containerd.sock",
        "-publish-binary",
        "/usr/bin/containerd",
        "-id",
        id,
        "-debug",
        "start",
    ]
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn start_claims_rewrites_and_hands_over_everything_untouched() {
    let s = setup(
        1,
        serde_json::json!({REQUEST: POOL, "io.kubernetes.cri.container-type": "sandbox"}),
        true,
    );
    // The poststop hook is opt-in for the shim.
    s.host.set_poststop(true);
    let args = start_args("sb1");
    let o = shim(&s, Path::new(SHIM), &args);
    assert!(o.status.success(), "{o:?}");
    // Only the delegate's output: ours would corrupt the address.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "unix:///run/fake.sock");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let delegate = s.dir.path().join("fake-shim");
    let mut want = vec![delegate.display().to_string()];
    want.extend(args.iter().map(|a| a.to_string()));
    assert_eq!(read(&s.out.join("argv")), want.join("\n") + "\n");
    assert_eq!(
        read(&s.out.join("cwd")).trim_end(),
        fs::canonicalize(&s.bundle).unwrap().to_str().unwrap()
    );
    assert_eq!(fs::read(s.out.join("stdin")).unwrap(), STDIN);
    assert_eq!(read(&s.out.join("env")), "passed-through");
    // SIGPIPE is not left ignored (the Rust runtime ignores it for itself).
    let ign = read(&s.out.join("sigign"));
    let mask = u64::from_str_radix(ign.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{ign}");

    assert_eq!(s.host.owners(), vec!["k8s.io/sb1".to_owned()]);
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["annotations"]["io.kata-sriov.owner"], "k8s.io/sb1");
    let vf = s.host.leases()[0]["vf"].as_str().unwrap().to_owned();
    let g = s.host.group_of(&vf);
    let devs = spec["linux"]["devices"].as_array().unwrap();
    assert!(devs
        .iter()
        .any(|d| d["path"] == format!("/dev/vfio/{g}") && d["major"] == 240 && d["minor"] == g));
    assert!(spec["hooks"]["poststop"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "poststop"));
    // No temp file left beside it.
    let names: Vec<String> = fs::read_dir(&s.bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["config.json".to_owned()]);
}

#[test]
fn start_of_a_pod_container_claims_nothing_and_changes_nothing() {
    let s = setup(
        1,
        serde_json::json!({REQUEST: POOL, "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "sb1"}),
        true,
    );
    let before = fs::read(s.bundle.join("config.json")).unwrap();
    let o = shim(&s, Path::new(SHIM), &start_args("ctr1"));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "unix:///run/fake.sock");
    assert!(o.stderr.is_empty());
    assert_eq!(fs::read(s.bundle.join("config.json")).unwrap(), before);
    assert!(s.host.leases().is_empty());
    assert!(s.host.log().contains("CRI container of a pod"));
}

#[test]
fn failed_claim_fails_start_with_one_line_and_leaves_nothing() {
    for (annotation, needle) in [
        ("nope", "no pool named \"nope\""),
        ("p,p", "pool \"p\" is exhausted: 2 VF(s) asked, 1 free"),
        ("[{\"pool\":", "io.kata-sriov.networks"),
    ] {
        let s = setup(1, serde_json::json!({ REQUEST: annotation }), true);
        let before = fs::read(s.bundle.join("config.json")).unwrap();
        let o = shim(&s, Path::new(SHIM), &start_args("x"));
        assert_eq!(o.status.code(), Some(1), "{annotation}: {o:?}");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("kata-sriov: ") && err.contains(needle),
            "{annotation}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!s.out.join("argv").exists(), "the delegate ran");
        assert_eq!(fs::read(s.bundle.join("config.json")).unwrap(), before);
        assert!(s.host.leases().is_empty(), "{annotation}");
    }
}

#[test]
fn delete_releases_then_hands_over() {
    let s = setup(1, serde_json::json!({ REQUEST: POOL }), true);
    assert!(shim(&s, Path::new(SHIM), &start_args("d1"))
        .status
        .success());
    assert_eq!(s.host.owners(), vec!["k8s.io/d1".to_owned()]);
    let bundle = s.bundle.display().to_string();
    let args = [
        "-namespace",
        "k8s.io",
        "-address",
        "/a",
        "-publish-binary",
        "/usr/bin/containerd",
        "-id",
        "d1",
        "-bundle",
        &bundle,
        "delete",
    ];
    let o = shim(&s, Path::new(SHIM), &args);
    assert!(o.status.success(), "{o:?}");
    assert!(s.host.leases().is_empty());
    let mut want = vec![s.dir.path().join("fake-shim").display().to_string()];
    want.extend(args.iter().map(|a| a.to_string()));
    assert_eq!(read(&s.out.join("argv")), want.join("\n") + "\n");
    assert!(s.host.log().contains("delete: released"));
}

#[test]
fn delete_without_a_delegate_still_answers_containerd() {
    let s = setup(1, serde_json::json!({ REQUEST: POOL }), true);
    assert!(shim(&s, Path::new(SHIM), &start_args("d2"))
        .status
        .success());
    fs::remove_file(s.dir.path().join("fake-shim")).unwrap();
    let bundle = s.bundle.display().to_string();
    let o = shim(
        &s,
        Path::new(SHIM),
        &[
            "-namespace",
            "k8s.io",
            "-id",
            "d2",
            "-bundle",
            &bundle,
            "delete",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    use containerd_shim_protos::protobuf::Message;
    let r = containerd_shim_protos::api::DeleteResponse::parse_from_bytes(&o.stdout).unwrap();
    assert_eq!(r.exit_status, 137);
    assert!(r.exited_at.seconds > 0);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fake-shim") && err.contains("No such file"),
        "{err}"
    );
    assert!(s.host.leases().is_empty());
}

#[test]
fn other_calls_are_handed_over_unchanged() {
    let s = setup(1, serde_json::json!({ REQUEST: POOL }), true);
    let o = shim(&s, Path::new(SHIM), &["-namespace", "n", "-id", "x", "-v"]);
    assert!(o.status.success(), "{o:?}");
    assert!(read(&s.out.join("argv")).ends_with("\n-v\n"));
    assert!(s.host.leases().is_empty());
}

#[test]
fn invoked_name_overrides_the_configured_delegate() {
    let s = setup(1, serde_json::json!({}), true);
    // containerd-shim-kata-sriov-fake-v2 hands over to containerd-shim-fake-v2,
    // found beside containerd (the -publish-binary).
    let d = s.dir.path();
    std::os::unix::fs::symlink(SHIM, d.join("containerd-shim-kata-sriov-fake-v2")).unwrap();
    fs::copy(d.join("fake-shim"), d.join("containerd-shim-fake-v2")).unwrap();
    let containerd = d.join("containerd").display().to_string();
    let o = shim(
        &s,
        &d.join("containerd-shim-kata-sriov-fake-v2"),
        &[
            "-namespace",
            "n",
            "-id",
            "x",
            "-publish-binary",
            &containerd,
            "start",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(read(&s.out.join("argv")).starts_with(&format!(
        "{}\n",
        d.join("containerd-shim-fake-v2").display()
    )));
}

#[test]
fn delegate_that_cannot_be_executed_fails_start_and_undoes_the_claim() {
    let s = setup(1, serde_json::json!({ REQUEST: POOL }), true);
    // Executable bits, but no format the kernel can run: exec fails after
    // the claim and the rewrite.
    fs::write(s.dir.path().join("fake-shim"), b"\x7fELF not really").unwrap();
    let before: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    let o = shim(&s, Path::new(SHIM), &start_args("e1"));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("kata-sriov: delegate shim ") && err.contains("exec failed"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    assert!(s.host.leases().is_empty());
    let after: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(after, before);
}

/// A device plugin lease of VF `n` for pod `ns/p1`, as the node agent
/// leaves it after Allocate and a PodResources List.
fn device_plugin_lease(s: &Setup, n: u32) -> String {
    let vf = s.host.vf_addr(n);
    let mut l = kata_sriov::testing::sample_lease(&vf, &format!("k8s-dp/{POOL}/{vf}"));
    l.pool = POOL.into();
    l.state = kata_sriov::state::ledger::LeaseState::Claimed;
    l.mac = Some("02:00:00:00:00:01".parse().unwrap());
    l.pod = Some("ns/p1".into());
    kata_sriov::state::ledger::Ledger::open(&s.host.state)
        .unwrap()
        .create(&l)
        .unwrap();
    vf
}

fn pod_sandbox(request: &str) -> serde_json::Value {
    serde_json::json!({REQUEST: request, "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-namespace": "ns", "io.kubernetes.cri.sandbox-name": "p1"})
}

#[test]
fn start_of_a_device_plugin_pod_writes_only_the_guest_annotation() {
    let s = setup(
        2,
        pod_sandbox(r#"[{"pool":"p","name":"net1","ips":["10.0.0.5/24"],"gateway":"10.0.0.1"}]"#),
        true,
    );
    let vf = device_plugin_lease(&s, 1);
    let before: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    let o = shim(&s, Path::new(SHIM), &start_args("sb1"));
    assert!(o.status.success(), "{o:?}\n{}", s.host.log());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "unix:///run/fake.sock");
    // Nothing claimed: the device plugin's lease is the only one.
    assert_eq!(s.host.owners(), vec![format!("k8s-dp/{POOL}/{vf}")]);
    // The spec: exactly the guest annotation added (no owner annotation, no
    // /dev/vfio node: Kata cold-plugs the VF from PodResources + CDI).
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    let guest = spec["annotations"]["io.kata-sriov.guest-networks"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut want = before.clone();
    want["annotations"]["io.kata-sriov.guest-networks"] = guest.clone().into();
    assert_eq!(spec, want);
    let g: serde_json::Value = serde_json::from_str(&guest).unwrap();
    assert_eq!(
        g,
        serde_json::json!([{"mac":"02:00:00:00:00:01","pci_id":"8086:154c","name":"net1",
            "ips":["10.0.0.5/24"],"gateway":"10.0.0.1"}])
    );
    assert!(s.host.log().contains("the device plugin's VFs of the pod"));
}

#[test]
fn a_device_plugin_pod_asking_more_than_it_holds_fails_start_and_changes_nothing() {
    let s = setup(2, pod_sandbox("p,p"), true);
    device_plugin_lease(&s, 0);
    let before = fs::read(s.bundle.join("config.json")).unwrap();
    let o = shim(&s, Path::new(SHIM), &start_args("sb1"));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pod ns/p1: 2 network(s) asked from pool \"p\"") && err.contains("1 VF(s)"),
        "{err}"
    );
    assert!(!s.out.join("argv").exists(), "the delegate ran");
    assert_eq!(fs::read(s.bundle.join("config.json")).unwrap(), before);
    assert_eq!(s.host.leases().len(), 1);
}

/// Issue 19, attack 7: a FIFO as `config.json` is refused at once (it used
/// to hang `start` forever): no claim, no delegate, one clear error.
#[test]
fn start_refuses_a_fifo_config_at_once() {
    let s = setup(1, serde_json::json!({REQUEST: POOL}), true);
    let config = s.bundle.join("config.json");
    fs::remove_file(&config).unwrap();
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let o = shim(&s, Path::new(SHIM), &start_args("sb-fifo"));
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.json") && err.contains("FIFO"), "{err}");
    assert_eq!(s.host.lease_files(), 0);
    assert!(!s.out.join("argv").exists(), "the delegate ran");
}
