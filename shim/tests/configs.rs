//! The shipped configs under `configs/` load in the programs they are for:
//! the containerd 1.6/1.7 snippet through this machine's containerd
//! (`containerd config dump` of its default config with the snippet merged in); the
//! containerd 2.x snippet, Docker's daemon.json (Docker 20.10 here predates
//! `runtimeType` and has no `--validate`) and the Kata fragment are parsed and
//! checked for the structure those programs read.

// Test helpers: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::output_within;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// containerd's rule: runtime `io.containerd.<name>.<version>` runs the
/// binary `containerd-shim-<name>-<version>`.
fn shim_binary(runtime_type: &str) -> String {
    let parts: Vec<&str> = runtime_type.split('.').collect();
    assert_eq!(parts.len(), 4, "{runtime_type}");
    assert_eq!(&parts[..2], ["io", "containerd"]);
    format!("containerd-shim-{}-{}", parts[2], parts[3])
}

fn check_runtimes(runtimes: &toml::Value) {
    let ks = &runtimes["kata-sriov"];
    assert_eq!(
        ks["runtime_type"].as_str(),
        Some("io.containerd.kata-sriov.v2")
    );
    assert_eq!(
        shim_binary(ks["runtime_type"].as_str().unwrap()),
        "containerd-shim-kata-sriov-v2"
    );
    let pod: Vec<&str> = ks["pod_annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(pod.contains(&"io.kata-sriov.*"), "{pod:?}");
    assert!(ks["options"]["ConfigPath"]
        .as_str()
        .unwrap()
        .starts_with('/'));
    let q = &runtimes["kata-sriov-qemu"];
    assert_eq!(
        shim_binary(q["runtime_type"].as_str().unwrap()),
        "containerd-shim-kata-sriov-kata-qemu-v2"
    );
    // The twin of kata-deploy's runtime-rs handler: our shim under the
    // handler's binary name, by path, and the handler's ConfigPath.
    let rs = &runtimes["kata-sriov-qemu-runtime-rs"];
    let bin = shim_binary(rs["runtime_type"].as_str().unwrap());
    assert_eq!(bin, "containerd-shim-kata-sriov-qemu-runtime-rs-v2");
    assert_eq!(
        rs["runtime_path"].as_str(),
        Some(format!("/usr/local/bin/{bin}").as_str())
    );
    assert_eq!(
        rs["options"]["ConfigPath"].as_str(),
        Some("/opt/kata/share/defaults/kata-containers/runtime-rs/runtimes/qemu-runtime-rs/configuration-qemu-runtime-rs.toml")
    );
    let pod: Vec<&str> = rs["pod_annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(pod, ["io.katacontainers.*", "io.kata-sriov.*"]);
}

#[test]
fn containerd_16_snippet_loads_in_containerd() {
    let d = tempfile::Builder::new()
        .prefix("kssc")
        .tempdir_in("/tmp")
        .unwrap();
    // Merged as the snippet says: its tables appended to a config.toml made
    // by `containerd config default`.
    let default = output_within(
        Command::new("containerd").args(["config", "default"]),
        Duration::from_secs(60),
    );
    assert!(default.status.success());
    let base = String::from_utf8_lossy(&default.stdout)
        .replace(
            "\"/var/lib/containerd\"",
            &format!("\"{}/root\"", d.path().display()),
        )
        .replace(
            "\"/run/containerd\"",
            &format!("\"{}/state\"", d.path().display()),
        );
    let snippet = fs::read_to_string(configs().join("containerd/kata-sriov-1.6.toml")).unwrap();
    let main = d.path().join("config.toml");
    fs::write(
        &main,
        format!("{base}\n{}", snippet.replace("version = 2\n", "")),
    )
    .unwrap();
    let out = output_within(
        Command::new("containerd")
            .arg("--config")
            .arg(&main)
            .args(["config", "dump"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let cri = &dumped["plugins"]["io.containerd.grpc.v1.cri"];
    // Only keys containerd understood survive the dump.
    let runtimes = &cri["containerd"]["runtimes"];
    check_runtimes(runtimes);
    assert_eq!(
        runtimes["kata-sriov"]["privileged_without_host_devices"].as_bool(),
        Some(true)
    );
    assert_eq!(
        runtimes["kata-sriov"]["container_annotations"][0].as_str(),
        Some("io.kata-sriov.*")
    );
    // The stock runc runtime is still there: the snippet adds, not replaces.
    assert!(runtimes.get("runc").is_some(), "{runtimes:?}");
}

#[test]
fn containerd_2x_snippet_has_the_version_3_layout() {
    let text = fs::read_to_string(configs().join("containerd/kata-sriov-2.x.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["version"].as_integer(), Some(3));
    let plugins = v["plugins"].as_table().unwrap();
    assert_eq!(
        plugins.keys().collect::<Vec<_>>(),
        ["io.containerd.cri.v1.runtime"],
        "version 3 moved the CRI runtimes to io.containerd.cri.v1.runtime"
    );
    check_runtimes(&v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]);
}

#[test]
fn docker_daemon_json_names_the_shim() {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(configs().join("docker/daemon.json")).unwrap()).unwrap();
    let rt = &v["runtimes"]["kata-sriov"];
    assert_eq!(
        rt.as_object().unwrap().len(),
        1,
        "runtimeType excludes path/runtimeArgs"
    );
    assert_eq!(
        shim_binary(rt["runtimeType"].as_str().unwrap()),
        "containerd-shim-kata-sriov-v2"
    );
    assert_eq!(v.as_object().unwrap().len(), 1);
}

#[test]
fn kata_fragment_sets_cold_plug_and_the_guest_hook_path() {
    let text = fs::read_to_string(configs().join("kata/kata-sriov.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    let q = v["hypervisor"]["qemu"].as_table().unwrap();
    assert_eq!(q["cold_plug_vfio"].as_str(), Some("root-port"));
    // The Go runtime accepts only one of the two.
    assert_eq!(q["hot_plug_vfio"].as_str(), Some("no-port"));
    assert_eq!(q["machine_type"].as_str(), Some("q35"));
    assert_eq!(q["vfio_mode"].as_str(), Some("guest-kernel"));
    assert!(q["guest_hook_path"].as_str().unwrap().starts_with('/'));
    assert_eq!(v.as_table().unwrap().len(), 1, "only [hypervisor.qemu]");
}
