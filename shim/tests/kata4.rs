//! Right by default on Kata 4 (issue 14), through a real containerd 1.6 and
//! runc: with the default config the shim adds no host hook to the spec
//! (under Kata's runtime-rs any host hook switches off the guest hooks) and
//! the VF comes back through our `delete` when the delegate shim exits,
//! normally or killed; each kata-sriov runtime handler hands over to its own
//! delegate by absolute path, as the twins `kata-sriov configure containerd`
//! writes do (containerd runs the handler's `runtime_path`; here `ctr run
//! --runtime /abs/path`, the same task option).
//!
//! Kata cannot run here. The delegates are stand-ins: small shell scripts
//! named `containerd-shim-kata-v2` (as both Kata runtimes' shims are) under
//! an `opt/kata/bin` and an `opt/kata/runtime-rs/bin`, which record that
//! they ran and exec runc's shim; the runtime-rs stand-in refuses `start`
//! when `config.json` has any host hook, which is what runtime-rs
//! effectively punishes (the guest helper would never run).

// Test helpers: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);
const ONE_SECOND: Duration = Duration::from_secs(1);
const SHOW_AND_WAIT: &str = "ls /dev/vfio/; echo READY; read x; echo BYE";
/// The OCI hook stages: none of these keys may be in a hook-free spec.
const HOOK_STAGES: &str =
    "prestart|createRuntime|createContainer|startContainer|poststart|poststop";

fn runc_shim() -> PathBuf {
    check_which("containerd-shim-runc-v2")
}

fn check_which(name: &str) -> PathBuf {
    kata_sriov::admin::check::which(name, std::env::var_os("PATH").as_deref())
        .unwrap_or_else(|| panic!("{name} is needed"))
}

/// A stand-in delegate at `path`: appends its action to `marks`, and with
/// `punish_hooks` fails `start` when the bundle's config.json has a host
/// hook; then execs runc's shim with the same arguments.
fn stand_in(path: &Path, marks: &Path, punish_hooks: bool) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let punish = if punish_hooks {
        format!(
            r#"if [ "$action" = start ] && grep -Eq '"({HOOK_STAGES})"' config.json; then
  echo "stand-in runtime-rs: config.json has a host hook; the guest hooks would never run" >&2
  exit 1
fi
"#
        )
    } else {
        String::new()
    };
    let script = format!(
        r#"#!/bin/sh
# Stand-in for a Kata shim (Kata cannot run here): records, then runc's shim.
for action; do :; done
echo "$action" >> "{marks}"
{punish}exec "{runc}" "$@"
"#,
        marks = marks.display(),
        runc = runc_shim().display(),
    );
    fs::write(path, script).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn spec_of(lab: &Lab, id: &str) -> (serde_json::Value, String) {
    let text = fs::read_to_string(lab.bundle(id).join("config.json")).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

fn assert_hook_free(text: &str) {
    for stage in HOOK_STAGES.split('|') {
        assert!(
            !text.contains(&format!("\"{stage}\"")),
            "config.json has a {stage} hook: {text}"
        );
    }
}

/// Waits at most a second for the last lease file to go; returns how long.
fn lease_gone_within_a_second(lab: &Lab) -> Duration {
    let t = Instant::now();
    let gone = eventually(ONE_SECOND, || lab.host.lease_files() == 0);
    let took = t.elapsed();
    assert!(
        gone && took <= ONE_SECOND,
        "the lease was still there {took:?} later; log:\n{}",
        lab.host.log()
    );
    took
}

#[test]
fn default_config_no_host_hook_and_the_vf_is_back_within_a_second_of_delete() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    let vf = lab.host.vf_addr(0);
    let before = lab.host.vf_binding(&vf);
    let mut run = lab.spawn(RUNTIME, "h1", Some(POOL), SHOW_AND_WAIT);
    run.line_with("READY", T);
    let leases = lab.host.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["vf"], vf.as_str());
    // The delegate's config.json: our device and annotations, no hook.
    let (spec, text) = spec_of(&lab, "h1");
    assert_eq!(
        spec["annotations"]["io.kata-sriov.owner"],
        format!("{}/h1", lab.ns)
    );
    assert!(spec["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["path"] == format!("/dev/vfio/{}", lab.host.group_of(&vf))));
    assert_hook_free(&text);
    assert!(spec.get("hooks").is_none(), "{}", spec["hooks"]);
    run.send("go");
    assert!(run.finish(T).success());
    assert!(run.seen.iter().any(|l| l == "BYE"));
    // `ctr run --rm` has deleted the task and the container.
    let took = lease_gone_within_a_second(&lab);
    eprintln!("lease gone {took:?} after ctr run --rm returned");
    assert_eq!(lab.host.vf_binding(&vf), before);
    let log = lab.host.log();
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    assert!(!log.contains("poststop"), "{log}");
}

#[test]
fn default_config_sigkill_of_the_delegate_gives_the_vf_back_within_a_second() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    let vf = lab.host.vf_addr(0);
    let before = lab.host.vf_binding(&vf);
    let mut run = lab.spawn(RUNTIME, "k2", Some(POOL), SHOW_AND_WAIT);
    run.line_with("READY", T);
    assert_eq!(lab.host.leases()[0]["vf"], vf.as_str());
    assert_hook_free(&spec_of(&lab, "k2").1);
    let pid = lab.shim_pid("k2").expect("the delegate shim's process");
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = eventually(ONE_SECOND, || lab.host.lease_files() == 0);
    let took = t.elapsed();
    assert!(
        gone && took <= ONE_SECOND,
        "lease still there {took:?} after SIGKILL; log:\n{}\ncontainerd:\n{}",
        lab.host.log(),
        lab.containerd_log()
    );
    eprintln!("lease gone {took:?} after SIGKILL of the delegate shim");
    assert_eq!(lab.host.vf_binding(&vf), before);
    let _ = run.finish(T);
    let log = lab.host.log();
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    assert!(!log.contains("poststop"), "{log}");
}

/// Two kata-sriov handlers on one containerd, each with its own delegate
/// by absolute path (same file name, as kata-deploy's Go and runtime-rs
/// shims); the runtime-rs stand-in refuses any host hook.
#[test]
fn each_handler_hands_over_to_its_own_delegate_and_runtime_rs_sees_no_host_hook() {
    // The configured default delegate does not exist here: only the
    // per-handler table can make these runs work.
    let lab = Lab::new(2, "containerd-shim-kata-v2");
    let d = lab.dir.path();
    let go = d.join("opt/kata/bin/containerd-shim-kata-v2");
    let rs = d.join("opt/kata/runtime-rs/bin/containerd-shim-kata-v2");
    let (go_marks, rs_marks) = (d.join("go.marks"), d.join("rs.marks"));
    stand_in(&go, &go_marks, false);
    stand_in(&rs, &rs_marks, true);
    lab.host.set_delegates(&[
        ("kata-sriov-qemu", go.as_path()),
        ("kata-sriov-qemu-runtime-rs", rs.as_path()),
    ]);
    // What `configure containerd` installs beside the shim.
    lab.link_shim_as("containerd-shim-kata-sriov-qemu-v2");
    lab.link_shim_as("containerd-shim-kata-sriov-qemu-runtime-rs-v2");
    let rs_runtime = lab
        .bin
        .join("containerd-shim-kata-sriov-qemu-runtime-rs-v2")
        .display()
        .to_string();
    let marks = |p: &Path| fs::read_to_string(p).unwrap_or_default();

    // runtime-rs handler, by absolute path (CRI's runtime_path).
    let out = lab.run(&rs_runtime, "rs1", Some(POOL), "ls /dev/vfio; echo hi");
    assert!(out.status.success(), "{out:?}\nlog:\n{}", lab.host.log());
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(so.contains("vfio") && so.contains("hi"), "{so}");
    assert!(
        marks(&rs_marks).starts_with("start\n"),
        "{}",
        marks(&rs_marks)
    );
    assert_eq!(marks(&go_marks), "");
    assert!(eventually(T, || lab.host.lease_files() == 0));
    assert!(marks(&rs_marks).contains("delete"), "{}", marks(&rs_marks));

    // Go handler, by runtime type name.
    let out = lab.run(
        "io.containerd.kata-sriov-qemu.v2",
        "go1",
        Some(POOL),
        "ls /dev/vfio; echo hi",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(marks(&go_marks).starts_with("start\n"));
    assert_eq!(marks(&rs_marks).matches("start").count(), 1);
    assert!(eventually(T, || lab.host.lease_files() == 0));

    // Control: with the poststop hook opted in, the runtime-rs stand-in
    // refuses, so the runs above really had no host hook.
    lab.host.set_poststop(true);
    let out = lab.run(&rs_runtime, "rs2", Some(POOL), "echo SHOULD-NOT-RUN");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json has a host hook"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SHOULD-NOT-RUN"));
    // The delegate failed after our exec: gc takes the lease back (its
    // bundle is gone).
    let gc = output_within(
        Command::new(kata_sriov_bin())
            .arg("--config")
            .arg(&lab.host.config)
            .arg("gc"),
        T,
    );
    assert!(gc.status.success(), "{gc:?}");
    assert_eq!(lab.host.lease_files(), 0, "{}", lab.host.log());
}

#[test]
fn a_missing_handler_delegate_is_named_in_the_error() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    let missing = lab
        .dir
        .path()
        .join("opt/kata/runtime-rs/bin/containerd-shim-kata-v2");
    lab.host
        .set_delegates(&[("kata-sriov-qemu-runtime-rs", missing.as_path())]);
    lab.link_shim_as("containerd-shim-kata-sriov-qemu-runtime-rs-v2");
    let rt = lab
        .bin
        .join("containerd-shim-kata-sriov-qemu-runtime-rs-v2")
        .display()
        .to_string();
    let out = lab.run(&rt, "m1", Some(POOL), "true");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing.display().to_string())
            && err.contains("kata-sriov-qemu-runtime-rs")
            && err.contains("[shim.delegates]"),
        "{err}"
    );
    assert_eq!(lab.host.lease_files(), 0);
}
