//! `kata-sriov configure` on realistic engine configs: the result keeps
//! every line of the original, loads in the real engine where this machine
//! has it (Debian's containerd 1.6 `config dump`), a second run changes
//! nothing, `--dry-run` writes nothing, and a backup is kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kata_sriov::admin::check::{self, Status};
use kata_sriov::admin::configure::{self, KataWant, Target, RUNTIME_TYPE};
use kata_sriov::policy::config::Config;

/// containerd 1.6/1.7 style (version 2), as an admin would have it.
const CONTAINERD_16: &str = r#"# /etc/containerd/config.toml: managed by hand, see containerd-config.toml(5)
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = -999   # keep containerd alive

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"  # pinned pause image
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      snapshotter = "overlayfs"
      # runc stays the default runtime
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"

# metrics for the node exporter
[metrics]
  address = "127.0.0.1:1338"
"#;

/// containerd 2.x style (version 3).
const CONTAINERD_2X: &str = r#"# containerd 2.0 configuration
version = 3
root = '/var/lib/containerd'

[plugins]
  # CRI image service
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = true
"#;

const DAEMON_JSON: &str = r#"{
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "storage-driver": "overlay2",
    "runtimes": {
        "crun": {"path": "/usr/bin/crun"}
    },
    "default-runtime": "runc"
}
"#;

/// An excerpt of Kata's Go-runtime configuration-qemu.toml (3.x).
const KATA_GO: &str = r#"# Copyright (c) 2017-2019 Intel Corporation
#
# SPDX-License-Identifier: Apache-2.0

[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinux.container"
machine_type = "q35"
default_vcpus = 1
default_memory = 2048

# Enable hot-plugging of VFIO devices to a bridge-port,
# root-port or switch-port.
# The default setting is "no-port"
hot_plug_vfio = "no-port"

# In a confidential compute environment hot-plugging can compromise
# security.
# Enable cold-plugging of VFIO devices to a bridge-port,
# root-port or switch-port.
# The default setting is "no-port", which means disabled.
cold_plug_vfio = "no-port"   # shipped default

# Path to OCI hook binaries in the *guest rootfs*.
#guest_hook_path = "/usr/share/oci/hooks"

pcie_root_port = 0

[agent.kata]
kernel_modules = []

[runtime]
internetworking_model = "tcfilter"
disable_guest_seccomp = true
#dan_conf = "/run/kata-containers/dans"
"#;

const KATA_RS: &str = r#"[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
machine_type = "q35"
#pcie_root_port = 2

[agent.kata]
kernel_modules = []

[runtime]
internetworking_model = "tcfilter"
name = "virt_container"
hypervisor_name = "qemu"
agent_name = "kata"
"#;

fn cfg(text: &str) -> Config {
    Config::parse(text, Path::new("test.toml")).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// Every line of `old` is in `new`, in order (nothing removed or changed).
fn keeps_every_line(old: &str, new: &str) {
    let mut rest = new.lines();
    for l in old.lines() {
        assert!(rest.any(|n| n == l), "line {l:?} lost or moved in:\n{new}");
    }
}

fn plan_apply(target: Target, file: &Path, cfg: &Config) -> configure::Plan {
    let plan = configure::plan(target, Some(file), cfg).unwrap();
    plan.apply().unwrap();
    plan
}

fn containerd_dump(file: &Path) -> String {
    let out = Command::new("containerd")
        .args(["--config"])
        .arg(file)
        .args(["config", "dump"])
        .output()
        .expect("containerd (Debian's containerd package) must be installed");
    assert!(
        out.status.success(),
        "containerd config dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn containerd_16_config_gets_the_runtime_and_loads_in_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "config.toml", CONTAINERD_16);
    let c = cfg("");
    let plan = plan_apply(Target::Containerd, &f, &c);
    assert!(plan.changed());
    let new = fs::read_to_string(&f).unwrap();
    keeps_every_line(CONTAINERD_16, &new);
    assert!(new.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-sriov]\nruntime_type = \"io.containerd.kata-sriov.v2\"\n"
    ), "{new}");
    assert_eq!(
        fs::read_to_string(configure::backup_path(&f)).unwrap(),
        CONTAINERD_16
    );

    let dump = containerd_dump(&f);
    let ks = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-sriov]")
        .nth(1)
        .expect("containerd sees the kata-sriov runtime");
    let ks = ks.split("\n\n").next().unwrap();
    assert!(
        ks.contains(&format!("runtime_type = \"{RUNTIME_TYPE}\"")),
        "{ks}"
    );
    assert!(
        ks.contains("pod_annotations = [\"io.kata-sriov.*\"]"),
        "{ks}"
    );
    // The admin's settings are still in effect.
    assert!(dump.contains("sandbox_image = \"registry.k8s.io/pause:3.6\""));
    assert!(dump.contains("SystemdCgroup = true"));
    assert!(dump.contains("address = \"127.0.0.1:1338\""));
    assert!(check::check_containerd(&f).status == Status::Ok);

    // Second run: no change, no write.
    let again = configure::plan(Target::Containerd, Some(&f), &c).unwrap();
    assert!(!again.changed());
    assert_eq!(again.diff(), "");
}

#[test]
fn containerd_2x_config_gets_the_cri_v1_runtime_table() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "config.toml", CONTAINERD_2X);
    plan_apply(Target::Containerd, &f, &cfg(""));
    let new = fs::read_to_string(&f).unwrap();
    keeps_every_line(CONTAINERD_2X, &new);
    let v: toml::Value = toml::from_str(&new).unwrap();
    let rt = &v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kata-sriov"];
    assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(
        v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]["options"]
            ["SystemdCgroup"]
            .as_bool(),
        Some(true)
    );
    assert!(v["plugins"].get("io.containerd.grpc.v1.cri").is_none());
    // The file alone: bookworm's containerd 1.6 cannot load version 3
    // (engines_forky.rs checks it with containerd 2.1).
    assert_eq!(check::check_containerd_with(&f, None).status, Status::Ok);
    assert!(!configure::plan(Target::Containerd, Some(&f), &cfg(""))
        .unwrap()
        .changed());
}

#[test]
fn missing_containerd_config_is_created_and_loads_version_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("etc/containerd/config.toml");
    assert_eq!(check::check_containerd(&f).status, Status::Warn);
    let plan = plan_apply(Target::Containerd, &f, &cfg(""));
    assert!(plan.files[0].old.is_none());
    assert!(!configure::backup_path(&f).exists());
    let dump = containerd_dump(&f);
    assert!(dump.contains("runtimes.kata-sriov]"), "{dump}");

    let v1 = write(
        dir.path(),
        "v1.toml",
        "[plugins.cri]\n  sandbox_image = \"pause:3.6\"\n",
    );
    let e = configure::plan(Target::Containerd, Some(&v1), &cfg(""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("version = 2"), "{e}");
    assert_eq!(check::check_containerd(&v1).status, Status::Fail);
    let bad = write(dir.path(), "bad.toml", "version = 2\n[plugins\n");
    let e = configure::plan(Target::Containerd, Some(&bad), &cfg(""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("TOML"), "{e}");
}

#[test]
fn binary_dry_run_writes_nothing_and_prints_a_diff_then_writes_with_backup() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "config.toml", CONTAINERD_16);
    let conf = write(dir.path(), "kata-sriov.toml", "");
    let bin = env!("CARGO_BIN_EXE_kata-sriov");
    let run = |extra: &[&str]| {
        let out = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .args(["configure", "containerd", "--file"])
            .arg(&f)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&["--dry-run"]);
    assert_eq!(fs::read_to_string(&f).unwrap(), CONTAINERD_16);
    assert!(!configure::backup_path(&f).exists());
    assert!(
        out.contains(&format!("--- {}\n+++ {}\n@@ ", f.display(), f.display())),
        "{out}"
    );
    assert!(
        out.contains("+runtime_type = \"io.containerd.kata-sriov.v2\"\n"),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with('-') && !l.starts_with("---")),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");

    let out = run(&[]);
    assert!(out.contains("updated (backup"), "{out}");
    assert_eq!(
        fs::read_to_string(configure::backup_path(&f)).unwrap(),
        CONTAINERD_16
    );
    let written = fs::read_to_string(&f).unwrap();
    let out = run(&[]);
    assert!(out.contains("already configured, no change"), "{out}");
    assert_eq!(fs::read_to_string(&f).unwrap(), written);
    let out = run(&["--dry-run"]);
    assert!(out.contains("no change") && !out.contains("+++"), "{out}");
}

/// Without --validate (Docker 20.10): dockerd parses the file and checks
/// every directive before anything else; a flag that repeats one of the
/// file's keys then stops it with a "specified both" error, which it only
/// reaches for a file without JSON errors or unknown directives. Nothing
/// is started.
fn dockerd_loads(f: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dockerd")
        .arg("--config-file")
        .arg(f)
        .args(["--storage-driver", "overlay2"])
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--exec-root")
        .arg(dir.path().join("exec"))
        .arg("--pidfile")
        .arg(dir.path().join("pid"))
        .arg("-H")
        .arg(format!("unix://{}", dir.path().join("d.sock").display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("specified both as a flag and in the configuration file: storage-driver"),
        "{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "dockerd got past its config"
    );
}

#[test]
fn dockerd_config_check_catches_bad_files() {
    if Command::new("dockerd").arg("--version").output().is_err() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "daemon.json",
        "{\"storage-driver\": \"overlay2\", \"bogus-key\": 1}",
    );
    let r = std::panic::catch_unwind(|| dockerd_loads(&bad));
    assert!(r.is_err(), "an unknown directive must fail the check");
    let broken = write(
        dir.path(),
        "broken.json",
        "{\"storage-driver\": \"overlay2\",}",
    );
    let r = std::panic::catch_unwind(|| dockerd_loads(&broken));
    assert!(r.is_err(), "a JSON error must fail the check");
}

#[test]
fn docker_daemon_json_keeps_keys_in_order_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "daemon.json", DAEMON_JSON);
    let plan = plan_apply(Target::Docker, &f, &cfg(""));
    assert!(plan.notes.iter().any(|n| n.contains("Docker 23")));
    let new = fs::read_to_string(&f).unwrap();
    let v: serde_json::Value = serde_json::from_str(&new).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "log-driver",
            "log-opts",
            "storage-driver",
            "runtimes",
            "default-runtime"
        ]
    );
    assert_eq!(v["runtimes"]["crun"]["path"], "/usr/bin/crun");
    assert_eq!(v["runtimes"]["kata-sriov"]["runtimeType"], RUNTIME_TYPE);
    assert_eq!(v["log-opts"]["max-file"], "3");
    assert_eq!(
        fs::read_to_string(configure::backup_path(&f)).unwrap(),
        DAEMON_JSON
    );
    assert!(!configure::plan(Target::Docker, Some(&f), &cfg(""))
        .unwrap()
        .changed());

    // dockerd --validate (Docker 23+) where this dockerd has it; Debian
    // bookworm's 20.10 does not, and then the JSON check above stands.
    let help = Command::new("dockerd").arg("--help").output();
    if let Ok(h) = help {
        if String::from_utf8_lossy(&h.stdout).contains("--validate") {
            let out = Command::new("dockerd")
                .args(["--validate", "--config-file"])
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            dockerd_loads(&f);
        }
    }

    // An empty or missing daemon.json, and a broken one.
    let empty = dir.path().join("none/daemon.json");
    plan_apply(Target::Docker, &empty, &cfg(""));
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&empty).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"runtimes": {"kata-sriov": {"runtimeType": RUNTIME_TYPE}}})
    );
    let bad = write(dir.path(), "bad.json", "{\"runtimes\": [1]}");
    let e = configure::plan(Target::Docker, Some(&bad), &cfg("")).unwrap_err();
    assert!(
        e.to_string().contains("\"runtimes\" is not an object"),
        "{e}"
    );
}

#[test]
fn podman_hooks_d_files_are_the_shipped_ones_with_our_binary() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks.d");
    let c = cfg("[hook]\nbinary = \"/opt/ks/bin/kata-sriov\"\n");
    let plan = plan_apply(Target::Podman, &hooks, &c);
    assert_eq!(plan.files.len(), 2);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/hooks.d");
    for name in ["kata-sriov-precreate.json", "kata-sriov-poststop.json"] {
        let got: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(hooks.join(name)).unwrap()).unwrap();
        let mut want: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(repo.join(name)).unwrap()).unwrap();
        want["hook"]["path"] = "/opt/ks/bin/kata-sriov".into();
        assert_eq!(got, want, "{name}");
    }
    assert!(!configure::plan(Target::Podman, Some(&hooks), &c)
        .unwrap()
        .changed());
    // The default binary gives the shipped files unchanged.
    let plain = dir.path().join("plain");
    plan_apply(Target::Podman, &plain, &cfg(""));
    let got: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(plain.join("kata-sriov-poststop.json")).unwrap())
            .unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo.join("kata-sriov-poststop.json")).unwrap())
            .unwrap();
    assert_eq!(got, want);
}

fn kata_env(dir: &Path, kata: &Path) -> check::CheckEnv {
    check::CheckEnv {
        cmdline: dir.join("cmdline"),
        modules_dir: dir.join("modules"),
        path: None,
        kata_configs: vec![dir.join("missing.toml"), kata.to_owned()],
        containerd_config: dir.join("containerd.toml"),
    }
}

fn kata_check<'a>(r: &'a check::Report, id: &str) -> &'a check::CheckResult {
    r.get(id).unwrap_or_else(|| panic!("no {id} in {r:#?}"))
}

#[test]
fn kata_go_config_gets_cold_plug_and_guest_hook_path_and_then_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "configuration.toml", KATA_GO);
    let c = cfg("");
    let env = kata_env(dir.path(), &f);
    let before = check::run(&c, &env);
    assert_eq!(kata_check(&before, "kata.plug").status, Status::Fail);
    assert_eq!(
        kata_check(&before, "kata.guest_hook_path").status,
        Status::Fail
    );

    let plan = plan_apply(Target::Kata, &f, &c);
    let new = fs::read_to_string(&f).unwrap();
    assert!(
        new.contains("cold_plug_vfio = \"root-port\"   # shipped default\n"),
        "{new}"
    );
    assert!(new.contains("hot_plug_vfio = \"no-port\"\n"), "{new}");
    assert!(
        new.contains("guest_hook_path = \"/usr/share/oci/hooks\""),
        "{new}"
    );
    // Every comment stays, and only the cold_plug line changed.
    let d = plan.diff();
    let removed: Vec<&str> = d
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    assert_eq!(
        removed,
        ["-cold_plug_vfio = \"no-port\"   # shipped default"],
        "{d}"
    );
    let v: toml::Value = toml::from_str(&new).unwrap();
    assert_eq!(
        v["hypervisor"]["qemu"]["guest_hook_path"].as_str(),
        Some("/usr/share/oci/hooks")
    );
    assert!(v["agent"]["kata"]["kernel_modules"].as_array().is_some());

    let after = check::run(&c, &env);
    assert_eq!(
        kata_check(&after, "kata.plug").status,
        Status::Ok,
        "{after:#?}"
    );
    assert_eq!(
        kata_check(&after, "kata.guest_hook_path").status,
        Status::Ok
    );
    assert!(!configure::plan(Target::Kata, Some(&f), &c)
        .unwrap()
        .changed());
}

#[test]
fn kata_go_with_both_plugs_is_a_failure_that_configure_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let text = KATA_GO
        .replace(
            "hot_plug_vfio = \"no-port\"",
            "hot_plug_vfio = \"root-port\"",
        )
        .replace(
            "cold_plug_vfio = \"no-port\"",
            "cold_plug_vfio = \"root-port\"",
        );
    let f = write(dir.path(), "configuration.toml", &text);
    let c = cfg("");
    let env = kata_env(dir.path(), &f);
    let r = check::run(&c, &env);
    let plug = kata_check(&r, "kata.plug");
    assert_eq!(plug.status, Status::Fail);
    assert!(plug.message.contains("refuses both"), "{plug:?}");
    let plan = plan_apply(Target::Kata, &f, &c);
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("hot_plug_vfio set to \"no-port\"")));
    assert_eq!(
        kata_check(&check::run(&c, &env), "kata.plug").status,
        Status::Ok
    );
    // Hot plug alone is a warning.
    let hot = KATA_GO.replace(
        "hot_plug_vfio = \"no-port\"",
        "hot_plug_vfio = \"root-port\"",
    );
    let f2 = write(dir.path(), "hot.toml", &hot);
    let r = check::run(&c, &kata_env(dir.path(), &f2));
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Warn);
}

#[test]
fn kata_dan_pools_get_hot_plug_root_ports_and_dan_conf() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "configuration.toml", KATA_GO);
    let dan = dir.path().join("dans");
    let c = cfg(&format!(
        "[dan]\ndir = \"{}\"\n[[pools]]\nname = \"d\"\npfs = [\"ens1f0\", \"ens1f1\"]\nguest = \"dan\"\nnum_vfs = 3\n",
        dan.display()
    ));
    assert_eq!(KataWant::from_config(&c).vf_count, 6);
    let env = kata_env(dir.path(), &f);
    let r = check::run(&c, &env);
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Fail);
    assert_eq!(kata_check(&r, "kata.dan_conf").status, Status::Fail);
    assert!(r.get("kata.guest_hook_path").is_none(), "no helper pool");
    plan_apply(Target::Kata, &f, &c);
    let v: toml::Value = toml::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
    let q = &v["hypervisor"]["qemu"];
    assert_eq!(q["hot_plug_vfio"].as_str(), Some("root-port"));
    assert_eq!(q["cold_plug_vfio"].as_str(), Some("no-port"));
    assert_eq!(q["pcie_root_port"].as_integer(), Some(6));
    assert_eq!(
        v["runtime"]["dan_conf"].as_str(),
        Some(dan.to_str().unwrap())
    );
    let r = check::run(&c, &env);
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Ok, "{r:#?}");
    // The directory is created by setup: until then a warning.
    assert_eq!(kata_check(&r, "kata.dan_conf").status, Status::Warn);
    fs::create_dir(&dan).unwrap();
    let r = check::run(&c, &env);
    assert_eq!(kata_check(&r, "kata.dan_conf").status, Status::Ok);
    // Too few root ports for the pools is a failure.
    let fewer = fs::read_to_string(&f)
        .unwrap()
        .replace("pcie_root_port = 6", "pcie_root_port = 2");
    let f2 = write(dir.path(), "few.toml", &fewer);
    let r = check::run(&c, &kata_env(dir.path(), &f2));
    let plug = kata_check(&r, "kata.plug");
    assert!(
        plug.status == Status::Fail && plug.message.contains("fewer than the 6"),
        "{plug:?}"
    );
}

#[test]
fn kata_runtime_rs_gets_root_ports_and_the_host_hook_warning() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "configuration.toml", KATA_RS);
    // The host hook is opt-in since Kata 4; opted in here.
    let c =
        cfg("[hook]\npoststop = true\n[[pools]]\nname = \"a\"\npfs = [\"ens1f0\"]\nnum_vfs = 2\n");
    let env = kata_env(dir.path(), &f);
    let r = check::run(&c, &env);
    assert!(kata_check(&r, "kata.config").message.contains("runtime-rs"));
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Fail);
    assert_eq!(kata_check(&r, "kata.host_hooks").status, Status::Fail);
    let plan = plan_apply(Target::Kata, &f, &c);
    assert!(plan.notes.iter().any(|n| n.contains("poststop = false")));
    let new = fs::read_to_string(&f).unwrap();
    assert!(new.contains("#pcie_root_port = 2\n"), "comment kept: {new}");
    let v: toml::Value = toml::from_str(&new).unwrap();
    assert_eq!(
        v["hypervisor"]["qemu"]["pcie_root_port"].as_integer(),
        Some(2)
    );
    // runtime-rs cold-plugs the sandbox's VF (issue 14).
    assert_eq!(
        v["hypervisor"]["qemu"]["cold_plug_vfio"].as_str(),
        Some("root-port")
    );
    let c2 =
        cfg("[hook]\npoststop = false\n[[pools]]\nname = \"a\"\npfs = [\"ens1f0\"]\nnum_vfs = 2\n");
    let r = check::run(&c2, &env);
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Ok);
    assert!(r.get("kata.host_hooks").is_none());
    // Cold plug without root ports: works for the first container only.
    let cold = write(
        dir.path(),
        "cold.toml",
        &KATA_RS.replace("#pcie_root_port = 2", "cold_plug_vfio = \"root-port\""),
    );
    let r = check::run(&c2, &kata_env(dir.path(), &cold));
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Warn);
}

#[test]
fn kata_config_is_found_at_the_first_existing_path() {
    let dir = tempfile::tempdir().unwrap();
    let second = write(dir.path(), "b.toml", KATA_GO);
    let first = dir.path().join("a.toml");
    assert_eq!(
        configure::find_kata_config(&[&first, &second]),
        Some(second.clone())
    );
    fs::write(&first, KATA_RS).unwrap();
    assert_eq!(configure::find_kata_config(&[&first, &second]), Some(first));
    let r = check::run(
        &cfg(""),
        &kata_env(dir.path(), &dir.path().join("none.toml")),
    );
    assert_eq!(kata_check(&r, "kata.config").status, Status::Warn);
    let broken = write(dir.path(), "broken.toml", "[hypervisor.qemu\n");
    let r = check::run(&cfg(""), &kata_env(dir.path(), &broken));
    assert_eq!(kata_check(&r, "kata.config").status, Status::Fail);
}

#[test]
fn dry_run_diff_applies_with_patch_to_the_written_result() {
    let Ok(st) = Command::new("patch").arg("--version").output() else {
        eprintln!("patch(1) not installed: skipped");
        return;
    };
    assert!(st.status.success());
    let dir = tempfile::tempdir().unwrap();
    let c = cfg("[[pools]]\nname = \"d\"\npfs = [\"x\"]\nguest = \"dan\"\n[[pools]]\nname = \"h\"\npfs = [\"y\"]\n");
    for (target, name, text) in [
        (Target::Kata, "configuration.toml", KATA_GO),
        (Target::Containerd, "config.toml", CONTAINERD_16),
        (Target::Docker, "daemon.json", DAEMON_JSON),
    ] {
        let f = write(dir.path(), name, text);
        let plan = configure::plan(target, Some(&f), &c).unwrap();
        let copy = write(dir.path(), &format!("{name}.copy"), text);
        let diff = write(dir.path(), &format!("{name}.diff"), &plan.diff());
        let out = Command::new("patch")
            .arg(&copy)
            .arg(&diff)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        plan.apply().unwrap();
        assert_eq!(
            fs::read_to_string(&copy).unwrap(),
            fs::read_to_string(&f).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn symlinked_config_is_edited_in_place_and_disabled_cri_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Docker's containerd.io package ships this file.
    let text = "#   Copyright 2018-2022 Docker Inc.\n\ndisabled_plugins = [\"cri\"]\n\n#root = \"/var/lib/containerd\"\n";
    let real = write(dir.path(), "real.toml", &format!("version = 2\n{text}"));
    let link = dir.path().join("config.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let plan = plan_apply(Target::Containerd, &link, &cfg(""));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("disables the CRI plugin")),
        "{:?}",
        plan.notes
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let new = fs::read_to_string(&real).unwrap();
    assert!(new.contains("runtimes.kata-sriov]"), "{new}");
    assert!(configure::backup_path(&real).exists());
    let c = check::check_containerd_with(&link, None);
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.fix.unwrap().contains("disabled_plugins"));
    // containerd itself (bookworm's 1.6) refuses the short name "cri" in a
    // version 2 file: the effective-config check says so.
    let c = check::check_containerd(&link);
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert!(
        c.message.contains("cannot load") && c.message.contains("cri"),
        "{c:?}"
    );
}

#[test]
fn kata_shipped_defaults_are_copied_to_the_admin_path_not_edited() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc/kata-containers/configuration.toml");
    let usr = dir.path().join("usr/share/defaults/kata-containers");
    fs::create_dir_all(&usr).unwrap();
    let shipped = write(&usr, "configuration-qemu.toml", KATA_GO);
    let default = usr.join("configuration.toml");
    std::os::unix::fs::symlink("configuration-qemu.toml", &default).unwrap();
    let candidates = vec![etc.clone(), default.clone()];
    let c = cfg("");
    let plan = configure::plan_kata(&candidates, None, &c).unwrap();
    assert_eq!(plan.files[0].path, etc);
    let d = plan.diff();
    assert!(
        d.starts_with(&format!(
            "--- {}\n+++ {}\n",
            default.display(),
            etc.display()
        )),
        "{d}"
    );
    assert!(d.contains("+cold_plug_vfio = \"root-port\""), "{d}");
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("created from the shipped")));
    plan.apply().unwrap();
    assert_eq!(
        fs::read_to_string(&shipped).unwrap(),
        KATA_GO,
        "defaults untouched"
    );
    assert!(!configure::backup_path(&etc).exists());
    let made = fs::read_to_string(&etc).unwrap();
    keeps_every_line(
        &KATA_GO.replace(
            "cold_plug_vfio = \"no-port\"",
            "cold_plug_vfio = \"root-port\"",
        ),
        &made,
    );
    // Kata now reads /etc: the next run edits it in place and has nothing to do.
    let again = configure::plan_kata(&candidates, None, &c).unwrap();
    assert_eq!(again.files[0].path, etc);
    assert!(again.files[0].base.is_none() && !again.changed());
    let r = check::run(&c, &kata_env_list(dir.path(), candidates.clone()));
    assert_eq!(kata_check(&r, "kata.plug").status, Status::Ok);

    // Defaults that already have everything: no copy is made.
    fs::remove_file(&etc).unwrap();
    fs::write(&shipped, &made).unwrap();
    let p = configure::plan_kata(&candidates, None, &c).unwrap();
    assert!(!p.changed());
    p.apply().unwrap();
    assert!(!etc.exists());
    let none = configure::plan_kata(&[dir.path().join("x.toml")], None, &c).unwrap_err();
    assert!(none.to_string().contains("x.toml"), "{none}");
}

fn kata_env_list(dir: &Path, kata: Vec<PathBuf>) -> check::CheckEnv {
    check::CheckEnv {
        kata_configs: kata,
        ..kata_env(dir, &dir.join("unused"))
    }
}

/// `configure containerd` as on a host with containerd `release`.
fn setup_with(dir: &Path, release: (u32, u32)) -> configure::ContainerdSetup {
    configure::ContainerdSetup {
        shim: dir.join("bin/containerd-shim-kata-sriov-v2"),
        kata_sriov_config: dir.join("kata-sriov.toml"),
        path: None,
        containerd: Some(release),
    }
}

#[test]
fn containerd_version_output_is_parsed() {
    for (out, want) in [
        (
            "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n",
            Some((2, 1)),
        ),
        (
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
            Some((1, 6)),
        ),
        ("containerd containerd.io v2.2.0 1c4457e\n", Some((2, 2))),
        ("containerd\n", None),
        ("", None),
    ] {
        assert_eq!(configure::containerd_release(out), want, "{out:?}");
    }
}

#[test]
fn containerd_2x_gets_a_dropin_with_the_main_version_imported_before_2_2() {
    let dir = tempfile::tempdir().unwrap();
    let dropin = dir.path().join("conf.d/kata-sriov.toml");
    // containerd 2.1 with a version 2 main config (Debian forky ships one):
    // a version 2 drop-in and an imports line for it.
    let main = write(dir.path(), "config.toml", CONTAINERD_16);
    let s21 = setup_with(dir.path(), (2, 1));
    let plan = configure::plan_containerd(&main, &s21).unwrap();
    let diff = plan.diff();
    assert!(
        diff.contains(&format!("+++ {}", dropin.display())),
        "{diff}"
    );
    assert!(diff.contains(&format!("+++ {}", main.display())), "{diff}");
    assert!(!dropin.exists(), "planning wrote the drop-in");
    plan.apply().unwrap();
    let d: toml::Value = toml::from_str(&fs::read_to_string(&dropin).unwrap()).unwrap();
    assert_eq!(d["version"].as_integer(), Some(2));
    let rt = &d["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["kata-sriov"];
    assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE), "{d}");
    let new = fs::read_to_string(&main).unwrap();
    keeps_every_line(CONTAINERD_16, &new);
    let m: toml::Value = toml::from_str(&new).unwrap();
    assert_eq!(
        m["imports"].as_array().unwrap()[0].as_str(),
        Some(dropin.to_str().unwrap())
    );
    assert!(!new.contains("runtimes.kata-sriov"), "{new}");
    assert_eq!(check::check_containerd_with(&main, None).status, Status::Ok);
    // Twice: nothing changes.
    assert!(!configure::plan_containerd(&main, &s21).unwrap().changed());

    // containerd 2.2 imports conf.d by default: the main file stays as it
    // is, the drop-in gets the main file's version 3.
    let dir = tempfile::tempdir().unwrap();
    let dropin = dir.path().join("conf.d/kata-sriov.toml");
    let main = write(dir.path(), "config.toml", CONTAINERD_2X);
    let plan = configure::plan_containerd(&main, &setup_with(dir.path(), (2, 2))).unwrap();
    plan.apply().unwrap();
    assert_eq!(fs::read_to_string(&main).unwrap(), CONTAINERD_2X);
    let d: toml::Value = toml::from_str(&fs::read_to_string(&dropin).unwrap()).unwrap();
    assert_eq!(d["version"].as_integer(), Some(3));
    assert!(
        d["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kata-sriov"]
            ["pod_annotations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("io.kata-sriov.*"))),
        "{d}"
    );

    // An imports glob that covers the drop-in already: no second entry.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("imports = [\"conf.d/*.toml\"]\n{CONTAINERD_2X}");
    let main = write(dir.path(), "config.toml", &text);
    configure::plan_containerd(&main, &setup_with(dir.path(), (2, 0)))
        .unwrap()
        .apply()
        .unwrap();
    assert_eq!(fs::read_to_string(&main).unwrap(), text);
}

#[test]
fn containerd_2x_unparsable_main_or_dropin_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup_with(dir.path(), (2, 1));
    let dropin = dir.path().join("conf.d/kata-sriov.toml");
    let bad = write(dir.path(), "config.toml", "version = 3\n[plugins\n");
    let e = configure::plan_containerd(&bad, &s)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(bad.to_str().unwrap()) && e.contains("TOML"),
        "{e}"
    );
    assert!(!dropin.exists());

    let main = write(dir.path(), "config.toml", CONTAINERD_2X);
    fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    fs::write(&dropin, "version = 3\nplugins = [\n").unwrap();
    let e = configure::plan_containerd(&main, &s)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(dropin.to_str().unwrap()) && e.contains("TOML"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&main).unwrap(), CONTAINERD_2X);
    assert_eq!(
        fs::read_to_string(&dropin).unwrap(),
        "version = 3\nplugins = [\n"
    );
}
