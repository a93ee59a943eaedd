//! The systemd units in configs/systemd: `systemd-analyze verify` accepts
//! them (with ExecStart pointed at the built binary), their commands are
//! real subcommands, and setup runs before the container engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

const UNITS: [&str; 3] = [
    "kata-sriov-setup.service",
    "kata-sriov-gc.service",
    "kata-sriov-gc.timer",
];

fn unit(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/systemd")
            .join(name),
    )
    .unwrap()
}

fn key<'a>(text: &'a str, k: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(k)?.strip_prefix('='))
        .collect()
}

#[test]
fn setup_runs_before_the_engines_and_gc_on_a_timer() {
    let setup = unit("kata-sriov-setup.service");
    assert_eq!(key(&setup, "Type"), ["oneshot"]);
    assert_eq!(key(&setup, "RemainAfterExit"), ["yes"]);
    let before = key(&setup, "Before").join(" ");
    for e in ["containerd.service", "docker.service"] {
        assert!(before.split(' ').any(|u| u == e), "{before}");
    }
    assert!(key(&setup, "After")
        .join(" ")
        .contains("systemd-udev-settle.service"));
    let timer = unit("kata-sriov-gc.timer");
    assert!(!key(&timer, "OnUnitInactiveSec").is_empty());
    assert_eq!(key(&timer, "WantedBy"), ["timers.target"]);
    let gc = unit("kata-sriov-gc.service");
    assert_eq!(key(&gc, "Type"), ["oneshot"]);
    // Each ExecStart is a real subcommand of the binary.
    for text in [&setup, &gc] {
        let exec = key(text, "ExecStart");
        assert_eq!(exec.len(), 1);
        let mut words = exec[0].split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/kata-sriov"));
        let args: Vec<&str> = words.collect();
        let out = Command::new(env!("CARGO_BIN_EXE_kata-sriov"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_kata-sriov");
    let mut paths = Vec::new();
    for name in UNITS {
        let p = dir.path().join(name);
        fs::write(&p, unit(name).replace("/usr/local/bin/kata-sriov", bin)).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // verify only warns (exit 0) about some mistakes: any output is one.
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
