//! Claims in real, separate processes: 64 concurrent claimers against 8
//! VFs, and a SIGKILL after every step of claim and of release, followed by
//! gc. What is checked is the fake host's state (driver links, VF settings
//! in the file-backed fake, lease files), not what the engine reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};

use kata_sriov::kernel::netlink::VfSettings;
use kata_sriov_tests::FakeHost;

const POOL: &str =
    "[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nvlan = 100\nspoofchk = false\ntrust = true\n";

fn worker(host: &FakeHost, args: &[&str], kill_at: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_claim-worker"));
    c.arg(&host.config).args(args);
    if let Some(k) = kill_at {
        c.args(["--kill-at", k]);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

/// Every VF without a lease is on its original driver with its original
/// settings; every VF on vfio-pci has a lease.
fn assert_consistent(host: &FakeHost) {
    let leased: HashSet<_> = host.leased().into_iter().collect();
    for i in 0..host.vfs {
        let vf = host.vf(i);
        let drv = host.driver(i);
        if drv.as_deref() == Some("vfio-pci") {
            assert!(leased.contains(&vf), "{vf} is on vfio-pci without a lease");
        }
        if !leased.contains(&vf) {
            assert_eq!(drv.as_deref(), Some("iavf"), "{vf} not back on iavf");
            assert_eq!(
                host.nl.get("ens1f0", i).unwrap(),
                VfSettings::default(),
                "{vf} settings not restored"
            );
        }
    }
}

#[test]
fn sixty_four_claimers_eight_vfs() {
    let host = FakeHost::new(8, "iavf", POOL);
    let children: Vec<_> = (0..64)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_claim-worker"))
                .arg(&host.config)
                .args(["claim", &format!("c{i}"), "fast"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let exhausted = outs
        .iter()
        .filter(|o| o.status.code() == Some(3))
        .inspect(|o| {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("pool \"fast\" is exhausted"), "{e}");
        })
        .count();
    for o in &outs {
        assert!(
            o.status.success() || o.status.code() == Some(3),
            "unexpected failure: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(ok.len(), 8);
    assert_eq!(exhausted, 56);
    let got: HashSet<String> = ok
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .collect();
    assert_eq!(got.len(), 8, "two claimers got the same VF: {got:?}");
    assert_eq!(host.leased().len(), 8);
    for i in 0..8 {
        assert_eq!(host.driver(i).as_deref(), Some("vfio-pci"));
        let s = host.nl.get("ens1f0", i).unwrap();
        assert_eq!(
            (s.vlan.get(), s.spoofchk, s.trust),
            (100, Some(false), Some(true))
        );
    }
    // No temp files or other strays in the ledger.
    let names: Vec<_> = std::fs::read_dir(host.path().join("state/leases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
    assert_consistent(&host);
}

const CLAIM_STEPS: &[&str] = &[
    "LeaseWritten",
    "SettingApplied(0)",
    "SettingApplied(1)",
    "SettingApplied(2)",
    "SettingApplied(3)",
    "Bound",
    "Claimed",
];
const RELEASE_STEPS: &[&str] = &[
    "MarkedReleasing",
    "Unbound",
    "SettingRestored(3)",
    "SettingRestored(2)",
    "SettingRestored(1)",
    "SettingRestored(0)",
    "Rebound",
    "LeaseRemoved",
];

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(libc::SIGKILL)
}

#[test]
fn kill_after_every_claim_step_then_gc() {
    for step in CLAIM_STEPS {
        let host = FakeHost::new(2, "iavf", POOL);
        let o = worker(&host, &["claim", "victim", "fast"], Some(step));
        assert!(killed(&o), "{step}: not killed: {o:?}");
        let g = worker(&host, &["gc"], None);
        assert!(g.status.success(), "{step}: gc: {g:?}");
        // The claimer is dead, so gc returned everything.
        assert!(host.leased().is_empty(), "{step}: lease left");
        assert_consistent(&host);
        // And the VF can be claimed again.
        let o = worker(&host, &["claim", "next", "fast,fast"], None);
        assert!(o.status.success(), "{step}: {o:?}");
        assert_consistent(&host);
    }
}

#[test]
fn kill_after_every_release_step_then_gc() {
    for step in RELEASE_STEPS {
        let host = FakeHost::new(2, "iavf", POOL);
        let o = worker(&host, &["claim", "victim", "fast"], None);
        assert!(o.status.success(), "{o:?}");
        let o = worker(&host, &["release", "victim"], Some(step));
        assert!(killed(&o), "{step}: not killed: {o:?}");
        let g = worker(&host, &["gc"], None);
        assert!(g.status.success(), "{step}: gc: {g:?}");
        assert!(host.leased().is_empty(), "{step}: lease left");
        assert_consistent(&host);
    }
}
