//! End to end through a real containerd 1.6 and runc: our shim with the runc
//! shim as its delegate, VFs from a fake sysfs tree already on vfio-pci,
//! `/dev/vfio` character nodes made for the test. Needs root, `containerd`,
//! `ctr`, `runc`, `containerd-shim-runc-v2`, busybox-static, and the
//! `kata-sriov` binary built beside the shim.

// Test helpers: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// `ls -l /dev/vfio` inside, then wait for a line on stdin.
const SHOW_AND_WAIT: &str = "ls -l /dev/vfio/; echo READY; read x; echo BYE";

/// The `major, minor` of `/dev/vfio/<group>` in `ls -l` output lines.
fn node_line(lines: &[String], group: u32) -> Option<&String> {
    lines.iter().find(|l| {
        l.starts_with('c')
            && l.contains(&format!("240, {group:>3}"))
            && l.ends_with(&format!(" {group}"))
    })
}

#[test]
fn run_with_request_gets_the_vf_and_releases_it_after() {
    let lab = Lab::new(2, "containerd-shim-runc-v2");
    // The poststop hook is opt-in for the shim (default: delete releases).
    lab.host.set_poststop(true);
    let mut run = lab.spawn(RUNTIME, "c1", Some(POOL), SHOW_AND_WAIT);
    run.line_with("READY", T);
    let leases = lab.host.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["owner"], format!("{}/c1", lab.ns));
    assert_eq!(leases[0]["state"], "claimed");
    let vf = leases[0]["vf"].as_str().unwrap();
    let g = lab.host.group_of(vf);
    assert!(
        node_line(&run.seen, g).is_some(),
        "no /dev/vfio/{g} 240:{g} inside: {:?}",
        run.seen
    );
    assert!(
        run.seen
            .iter()
            .any(|l| l.contains("10, 196") && l.ends_with(" vfio")),
        "no /dev/vfio/vfio inside: {:?}",
        run.seen
    );
    // The bundle's config.json is the rewritten one.
    let spec: serde_json::Value =
        serde_json::from_slice(&fs::read(lab.bundle("c1").join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec["annotations"]["io.kata-sriov.owner"],
        format!("{}/c1", lab.ns)
    );
    let poststop = spec["hooks"]["poststop"].as_array().unwrap();
    assert!(poststop
        .iter()
        .any(|h| h["path"] == kata_sriov_bin().display().to_string()));
    run.send("go");
    let st = run.finish(T);
    assert!(st.success(), "ctr run: {st:?}");
    assert!(run.seen.iter().any(|l| l == "BYE"));
    // The poststop hook released it before `ctr run --rm` returned.
    assert_eq!(lab.host.leases().len(), 0);
    let log = lab.host.log();
    assert!(log.contains("start: claimed"), "{log}");
    assert!(log.contains("poststop released"), "{log}");
}

#[test]
fn killed_delegate_shim_is_cleaned_up_through_our_delete() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    let mut run = lab.spawn(RUNTIME, "k1", Some(POOL), SHOW_AND_WAIT);
    run.line_with("READY", T);
    assert_eq!(lab.host.owners(), vec![format!("{}/k1", lab.ns)]);
    let bundle = lab.bundle("k1");
    // containerd recorded our binary as the shim to call for cleanup.
    let recorded = fs::read_to_string(bundle.join("shim-binary-path")).unwrap();
    assert!(
        recorded.ends_with("containerd-shim-kata-sriov-v2"),
        "{recorded}"
    );
    let pid = lab.shim_pid("k1").expect("the delegate shim's process");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().ends_with("containerd-shim-runc-v2"),
        "the running shim is the delegate's binary, not ours: {exe:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(T, || lab.host.leases().is_empty()),
        "lease not released after the shim died; log:\n{}\ncontainerd:\n{}",
        lab.host.log(),
        lab.containerd_log()
    );
    let _ = run.finish(T);
    let log = lab.host.log();
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    assert!(log.contains("delete: handing over"), "{log}");
    assert!(
        eventually(T, || !bundle.exists()),
        "containerd did not finish its cleanup"
    );
}

#[test]
fn without_request_it_runs_exactly_as_runc() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    let script = "ls /dev; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; id; echo $PATH; cat /proc/self/cgroup | sed 's/[0-9]*://' | head -3; exit 3";
    let ours = lab.run(RUNTIME, "n1", None, script);
    let runc = lab.run(RUNC, "n1", None, script);
    assert_eq!(ours.status.code(), Some(3), "{ours:?}");
    assert_eq!(runc.status.code(), Some(3), "{runc:?}");
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&runc.stdout)
    );
    assert_eq!(ours.stderr, runc.stderr);
    assert!(lab.host.log().contains("start: no request"));
    assert!(lab.host.leases().is_empty());

    // The bundle's config.json is byte for byte what containerd wrote.
    let detached = |runtime: &str| -> Vec<u8> {
        let rootfs = lab.rootfs.display().to_string();
        let out = output_within(
            &mut lab.ctr(&[
                "run",
                "-d",
                "--runtime",
                runtime,
                "--rootfs",
                &rootfs,
                "n2",
                "/bin/sleep",
                "60",
            ]),
            T,
        );
        assert!(out.status.success(), "{out:?}");
        let spec = fs::read(lab.bundle("n2").join("config.json")).unwrap();
        let rm = output_within(&mut lab.ctr(&["tasks", "rm", "-f", "n2"]), T);
        assert!(rm.status.success(), "{rm:?}");
        let rm = output_within(&mut lab.ctr(&["containers", "rm", "n2"]), T);
        assert!(rm.status.success(), "{rm:?}");
        spec
    };
    assert_eq!(detached(RUNTIME), detached(RUNC));
}

#[test]
fn two_at_once_get_different_vfs_and_a_third_fails_cleanly() {
    let lab = Lab::new(2, "containerd-shim-runc-v2");
    let mut a = lab.spawn(RUNTIME, "a", Some(POOL), SHOW_AND_WAIT);
    let mut b = lab.spawn(RUNTIME, "b", Some(POOL), SHOW_AND_WAIT);
    a.line_with("READY", T);
    b.line_with("READY", T);
    let leases = lab.host.leases();
    assert_eq!(leases.len(), 2, "{leases:?}");
    let vf_of = |owner: &str| -> String {
        leases
            .iter()
            .find(|l| l["owner"] == format!("{}/{owner}", lab.ns))
            .unwrap()["vf"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (va, vb) = (vf_of("a"), vf_of("b"));
    assert_ne!(va, vb);
    let (ga, gb) = (lab.host.group_of(&va), lab.host.group_of(&vb));
    assert!(node_line(&a.seen, ga).is_some(), "{:?}", a.seen);
    assert!(node_line(&b.seen, gb).is_some(), "{:?}", b.seen);
    assert!(
        node_line(&a.seen, gb).is_none(),
        "a sees b's VF: {:?}",
        a.seen
    );

    let c = lab.run(RUNTIME, "c", Some(POOL), "echo SHOULD-NOT-RUN");
    assert!(!c.status.success());
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(
        err.contains(&format!(
            "kata-sriov: claiming a VF for {}/c: pool \"p\" is exhausted",
            lab.ns
        )),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&c.stdout).contains("SHOULD-NOT-RUN"));
    assert_eq!(
        lab.host.leases().len(),
        2,
        "the failed start leaked a lease"
    );
    assert!(!lab.bundle("c").exists());
    let cs = output_within(&mut lab.ctr(&["containers", "ls", "-q"]), T);
    let cs = String::from_utf8_lossy(&cs.stdout);
    assert!(!cs.lines().any(|l| l == "c"), "{cs}");

    a.send("go");
    b.send("go");
    assert!(a.finish(T).success());
    assert!(b.finish(T).success());
    assert!(lab.host.leases().is_empty());
}

#[test]
fn the_runtime_name_chooses_the_delegate() {
    // The config names a delegate this machine does not have...
    let lab = Lab::new(1, "containerd-shim-kata-v2");
    let out = lab.run(RUNTIME, "d1", None, "echo hi");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kata-sriov: delegate shim \"containerd-shim-kata-v2\": not found"),
        "{err}"
    );
    // ...but runtime io.containerd.kata-sriov-runc.v2 hands over to runc's.
    lab.link_shim_as("containerd-shim-kata-sriov-runc-v2");
    let out = lab.run(
        "io.containerd.kata-sriov-runc.v2",
        "d2",
        Some(POOL),
        "ls /dev/vfio; echo hi",
    );
    assert!(out.status.success(), "{out:?}");
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(so.contains("hi") && so.contains("vfio"), "{so}");
    assert!(lab.host.leases().is_empty());
}

#[test]
fn failed_create_is_released_by_our_delete_even_without_the_poststop_hook() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    // As under Kata's runtime-rs: no host hook in the spec.
    lab.host.set_poststop(false);
    let rootfs = lab.rootfs.display().to_string();
    let req = format!("{REQUEST}={POOL}");
    let out = output_within(
        &mut lab.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &req,
            "--rootfs",
            &rootfs,
            "f1",
            "/bin/no-such-program",
        ]),
        T,
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-program"));
    // containerd 1.6 runs the shim binary's delete after a failed Create.
    assert!(lab.host.leases().is_empty(), "{}", lab.host.log());
    let log = lab.host.log();
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    assert!(!log.contains("poststop released"), "{log}");
    // The VF is free for the next container.
    let ok = lab.run(RUNTIME, "f2", Some(POOL), "ls /dev/vfio");
    assert!(ok.status.success(), "{ok:?}");
}

#[test]
fn without_the_poststop_hook_our_delete_releases_at_the_end_of_every_task() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    lab.host.set_poststop(false);
    let out = lab.run(RUNTIME, "g1", Some(POOL), "ls /dev/vfio");
    assert!(out.status.success(), "{out:?}");
    // containerd 1.6 runs the shim binary's delete whenever a shim goes
    // away ("cleaning up after shim disconnected"), a normal exit included.
    assert!(
        eventually(T, || lab.host.leases().is_empty()),
        "{}",
        lab.host.log()
    );
    let log = lab.host.log();
    assert!(log.contains("delete: released, vfs: 1"), "{log}");
    assert!(!log.contains("poststop released"), "{log}");
}

/// `ctr run --rm` with the request and extra annotations.
fn run_annotated(lab: &Lab, id: &str, extra: &[(&str, &str)]) -> std::process::Output {
    let mut a = lab.run_args(RUNTIME, id, Some(POOL), "true");
    for (k, v) in extra {
        a.insert(4, format!("{k}={v}"));
        a.insert(4, "--annotation".into());
    }
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    output_within(&mut lab.ctr(&a), Duration::from_secs(60))
}

#[test]
fn dan_request_from_a_pod_container_is_refused() {
    let lab = Lab::new(2, "containerd-shim-runc-v2");
    let dans = lab.dir.path().join("dans");
    lab.host.set_dan(&dans);
    let out = run_annotated(
        &lab,
        "late",
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", "nosuchsandbox"),
        ],
    );
    assert!(!out.status.success(), "a late DAN request ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sandbox"), "{err}");
    assert!(lab.host.leases().is_empty());
    assert!(!dans.exists() || fs::read_dir(&dans).unwrap().count() == 0);
}

#[test]
fn a_foreign_dan_file_is_left_untouched() {
    let lab = Lab::new(2, "containerd-shim-runc-v2");
    let dans = lab.dir.path().join("dans");
    lab.host.set_dan(&dans);
    fs::create_dir_all(&dans).unwrap();
    let theirs = dans.join("sbx.json");
    fs::write(&theirs, "{\"devices\":[]}").unwrap();
    let out = run_annotated(
        &lab,
        "sbx",
        &[
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-id", "sbx"),
        ],
    );
    assert!(!out.status.success(), "ran over a foreign DAN file");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not written by kata-sriov"), "{err}");
    assert_eq!(fs::read_to_string(&theirs).unwrap(), "{\"devices\":[]}");
    assert!(lab.host.leases().is_empty());
}
