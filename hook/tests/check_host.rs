//! `kata-sriov check` on fake sysfs trees and temp files: ok, warn and
//! fail of each host check, the JSON layout and the exit status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kata_sriov::admin::check::{self, CheckEnv, Report, Status};
use kata_sriov::policy::config::Config;
use kata_sriov::testing::{FakeDevice, FakeSysfs};

struct Lab {
    dir: tempfile::TempDir,
    fake: FakeSysfs,
}

fn lab(iommu: bool) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let fake = if iommu {
        FakeSysfs::new(&sys)
    } else {
        FakeSysfs::without_iommu(&sys)
    };
    Lab { dir, fake }
}

impl Lab {
    fn cfg(&self, rest: &str) -> Config {
        let text = format!(
            "state_dir = \"{}\"\nsysfs_root = \"{}\"\n{rest}",
            self.dir.path().join("state").display(),
            self.fake.dir().display(),
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }
    fn env(&self, cmdline: &str) -> CheckEnv {
        let d = self.dir.path();
        fs::write(d.join("cmdline"), cmdline).unwrap();
        CheckEnv {
            cmdline: d.join("cmdline"),
            modules_dir: d.join("modules"),
            path: Some(d.join("bin").into_os_string()),
            kata_configs: vec![d.join("kata.toml")],
            containerd_config: d.join("containerd.toml"),
        }
    }
    fn run(&self, cfg: &str, cmdline: &str) -> Report {
        check::run(&self.cfg(cfg), &self.env(cmdline))
    }
}

fn st(r: &Report, id: &str) -> Status {
    r.get(id)
        .unwrap_or_else(|| panic!("no {id}: {r:#?}"))
        .status
}

const CMDLINE: &str = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt\n";
const POOL: &str = "[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nnum_vfs = 2\n";

#[test]
fn iommu_command_line_and_groups() {
    let on = lab(true);
    on.fake.add_device(FakeDevice::endpoint("0000:5e:00.0"));
    let r = on.run("", CMDLINE);
    assert_eq!(st(&r, "iommu.cmdline"), Status::Ok);
    assert!(r
        .get("iommu.cmdline")
        .unwrap()
        .message
        .contains("intel_iommu=on"));
    assert_eq!(st(&r, "iommu.groups"), Status::Ok);
    let r = on.run("", "ro amd_iommu=on\n");
    assert_eq!(st(&r, "iommu.cmdline"), Status::Ok);
    // On without the parameter (AMD default): a warning.
    let r = on.run("", "ro quiet\n");
    assert_eq!(st(&r, "iommu.cmdline"), Status::Warn);

    let off = lab(false);
    off.fake.add_device(FakeDevice::endpoint("0000:5e:00.0"));
    let r = off.run("", "ro quiet\n");
    assert_eq!(st(&r, "iommu.cmdline"), Status::Fail);
    assert_eq!(st(&r, "iommu.groups"), Status::Fail);
    let fix = r.get("iommu.cmdline").unwrap().fix.clone().unwrap();
    assert!(
        fix.contains("GRUB_CMDLINE_LINUX") && fix.contains("intel_iommu=on"),
        "{fix}"
    );
    let r = off.run("", "ro intel_iommu=off\n");
    assert_eq!(st(&r, "iommu.cmdline"), Status::Fail);
    assert!(r
        .get("iommu.cmdline")
        .unwrap()
        .message
        .contains("intel_iommu=off"));
    // The last occurrence wins, as in the kernel.
    let r = off.run("", "intel_iommu=off intel_iommu=on\n");
    assert_eq!(st(&r, "iommu.cmdline"), Status::Ok);
}

#[test]
fn vfio_pci_loaded_available_or_missing() {
    let l = lab(true);
    let r = l.run(POOL, CMDLINE);
    assert_eq!(st(&r, "vfio.driver"), Status::Fail);
    let r = l.run("", CMDLINE);
    assert_eq!(
        st(&r, "vfio.driver"),
        Status::Warn,
        "no vfio pool: only a warning"
    );
    let m = l.dir.path().join("modules/kernel/drivers/vfio/pci");
    fs::create_dir_all(&m).unwrap();
    fs::write(m.join("vfio-pci.ko.xz"), "").unwrap();
    let r = l.run(POOL, CMDLINE);
    assert_eq!(st(&r, "vfio.driver"), Status::Warn);
    assert!(r
        .get("vfio.driver")
        .unwrap()
        .fix
        .as_ref()
        .unwrap()
        .contains("kata-sriov setup"));
    fs::remove_file(m.join("vfio-pci.ko.xz")).unwrap();
    fs::write(
        l.dir.path().join("modules/modules.builtin"),
        "kernel/drivers/vfio/pci/vfio-pci.ko\n",
    )
    .unwrap();
    assert_eq!(st(&l.run(POOL, CMDLINE), "vfio.driver"), Status::Warn);
    l.fake.write("bus/pci/drivers/vfio-pci/bind", "");
    assert_eq!(st(&l.run(POOL, CMDLINE), "vfio.driver"), Status::Ok);
}

#[test]
fn pf_exists_supports_sriov_and_has_the_configured_vfs() {
    let l = lab(true);
    let pf = l.fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    l.fake.add_device(FakeDevice::endpoint("0000:5e:00.0"));
    let r = l.run(POOL, CMDLINE);
    assert_eq!(st(&r, "pool.fast.pf.ens1f0"), Status::Ok);
    assert!(r
        .get("pool.fast.pf.ens1f0")
        .unwrap()
        .message
        .contains("supports 8 VFs"));
    assert_eq!(st(&r, "pool.fast.vfs.ens1f0"), Status::Ok);
    assert_eq!(st(&r, "pool.fast.iommu.ens1f0"), Status::Ok);

    let r = l.run(&POOL.replace("num_vfs = 2", "num_vfs = 4"), CMDLINE);
    assert_eq!(st(&r, "pool.fast.vfs.ens1f0"), Status::Warn);
    let r = l.run(&POOL.replace("num_vfs = 2", "num_vfs = 9"), CMDLINE);
    assert_eq!(st(&r, "pool.fast.vfs.ens1f0"), Status::Fail);
    let r = l.run(&POOL.replace("num_vfs = 2\n", ""), CMDLINE);
    assert_eq!(st(&r, "pool.fast.vfs.ens1f0"), Status::Ok);
    l.fake
        .write(&format!("bus/pci/devices/{pf}/sriov_numvfs"), "0\n");
    let r = l.run(POOL, CMDLINE);
    let v = r.get("pool.fast.vfs.ens1f0").unwrap();
    assert_eq!(v.status, Status::Fail);
    assert!(v.fix.as_ref().unwrap().contains("kata-sriov setup"));
    assert!(r.get("pool.fast.iommu.ens1f0").is_none(), "no VFs to check");

    let r = l.run(&POOL.replace("ens1f0", "eth9"), CMDLINE);
    let p = r.get("pool.fast.pf.eth9").unwrap();
    assert_eq!(p.status, Status::Fail);
    assert!(p.message.contains("0000:3b:00.0 (ens1f0)"), "{p:?}");
    let r = l.run(&POOL.replace("ens1f0", "0000:5e:00.0"), CMDLINE);
    let p = r.get("pool.fast.pf.0000:5e:00.0").unwrap();
    assert_eq!(p.status, Status::Fail);
    assert!(p.fix.as_ref().unwrap().contains("SR-IOV"), "{p:?}");
}

#[test]
fn pf_without_netdev_fails_only_when_the_pool_needs_netlink() {
    let l = lab(true);
    let pf = l.fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    fs::remove_dir_all(l.fake.dir().join(format!("bus/pci/devices/{pf}/net"))).unwrap();
    let by_addr = POOL.replace("ens1f0", "0000:3b:00.0");
    let r = l.run(&by_addr, CMDLINE);
    assert_eq!(st(&r, "pool.fast.pf.0000:3b:00.0"), Status::Fail);
    let r = l.run(&format!("{by_addr}mac = \"keep\"\n"), CMDLINE);
    assert_eq!(st(&r, "pool.fast.pf.0000:3b:00.0"), Status::Ok);
}

#[test]
fn iommu_isolation_of_each_vf() {
    let l = lab(true);
    let pf = l.fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    let root = l.fake.root();
    let vf0 = root.vf_addr(pf, 0).unwrap();
    let vf1 = root.vf_addr(pf, 1).unwrap();
    let g0 = root.iommu_group(vf0).unwrap().unwrap();
    l.fake
        .add_device(FakeDevice::endpoint("0000:5e:00.0").in_group(g0));
    let r = l.run(POOL, CMDLINE);
    let c = r.get("pool.fast.iommu.ens1f0").unwrap();
    assert_eq!(c.status, Status::Warn);
    assert!(
        c.message.contains("1 of 2") && c.message.contains("0000:5e:00.0"),
        "{c:?}"
    );
    l.fake.set_group(vf1, g0);
    let r = l.run(POOL, CMDLINE);
    assert_eq!(st(&r, "pool.fast.iommu.ens1f0"), Status::Fail);
    // netdev pools do not pass the VF through: no isolation check.
    let r = l.run(&format!("{POOL}mode = \"netdev\"\n"), CMDLINE);
    assert!(r.get("pool.fast.iommu.ens1f0").is_none());

    let off = lab(false);
    off.fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    let r = off.run(POOL, CMDLINE);
    let c = r.get("pool.fast.iommu.ens1f0").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(c.message.contains("intel_iommu=on"), "{c:?}");
}

#[test]
fn state_dir_owner_and_mode() {
    let l = lab(true);
    let sd = l.dir.path().join("state");
    assert_eq!(
        st(&l.run("", CMDLINE), "state_dir"),
        Status::Ok,
        "missing: created later"
    );
    fs::create_dir(&sd).unwrap();
    fs::set_permissions(&sd, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(st(&l.run("", CMDLINE), "state_dir"), Status::Ok);
    fs::set_permissions(&sd, fs::Permissions::from_mode(0o755)).unwrap();
    let r = l.run("", CMDLINE);
    let c = r.get("state_dir").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.as_ref().unwrap().contains("chmod 700"), "{c:?}");
    fs::remove_dir(&sd).unwrap();
    std::os::unix::fs::symlink("/tmp", &sd).unwrap();
    assert_eq!(st(&l.run("", CMDLINE), "state_dir"), Status::Fail);
    fs::remove_file(&sd).unwrap();
    fs::write(&sd, "").unwrap();
    assert_eq!(st(&l.run("", CMDLINE), "state_dir"), Status::Fail);
    // Another owner (the test runs as root; skip otherwise).
    if nix::unistd::geteuid().is_root() {
        fs::remove_file(&sd).unwrap();
        fs::create_dir(&sd).unwrap();
        fs::set_permissions(&sd, fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&sd, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let r = l.run("", CMDLINE);
        let c = r.get("state_dir").unwrap();
        assert!(
            c.status == Status::Fail && c.message.contains("uid 65534"),
            "{c:?}"
        );
    }
}

fn exe(dir: &Path, name: &str, mode: u32) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    fs::write(&p, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn shims_on_path() {
    let l = lab(true);
    let bin = l.dir.path().join("bin");
    let r = l.run("", CMDLINE);
    assert_eq!(st(&r, "shim.delegate"), Status::Fail);
    assert_eq!(st(&r, "shim.binary"), Status::Fail);
    exe(&bin, "containerd-shim-kata-v2", 0o644);
    assert_eq!(
        st(&l.run("", CMDLINE), "shim.delegate"),
        Status::Fail,
        "not executable"
    );
    exe(&bin, "containerd-shim-kata-v2", 0o755);
    exe(&bin, "containerd-shim-kata-sriov-v2", 0o755);
    let r = l.run("", CMDLINE);
    assert_eq!(st(&r, "shim.delegate"), Status::Ok);
    assert_eq!(st(&r, "shim.binary"), Status::Ok);
    // An absolute delegate is checked as a path.
    let abs = exe(&l.dir.path().join("opt"), "my-shim", 0o755);
    let r = l.run(
        &format!("[shim]\ndelegate = \"{}\"\n", abs.display()),
        CMDLINE,
    );
    assert_eq!(st(&r, "shim.delegate"), Status::Ok);
}

#[test]
fn containerd_runtime_entry() {
    let l = lab(true);
    let f = l.dir.path().join("containerd.toml");
    assert_eq!(st(&l.run("", CMDLINE), "containerd.runtime"), Status::Warn);
    fs::write(&f, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n").unwrap();
    let r = l.run("", CMDLINE);
    let c = r.get("containerd.runtime").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.fix.as_ref().unwrap().contains("configure containerd"),
        "{c:?}"
    );
    // A wrong runtime type; no annotations passed (a pod's request lost).
    for (text, needle) in [
        ("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-sriov]\nruntime_type = \"io.containerd.kata.v2\"\n", "io.containerd.kata.v2"),
        ("version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata-sriov]\nruntime_type = 'io.containerd.kata-sriov.v2'\n", "pod_annotations"),
    ] {
        fs::write(&f, text).unwrap();
        let c = l
            .run("", CMDLINE)
            .get("containerd.runtime")
            .cloned()
            .unwrap();
        assert!(c.status == Status::Fail && c.message.contains(needle), "{c:?}");
    }
    fs::write(&f, "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata-sriov]\nruntime_type = 'io.containerd.kata-sriov.v2'\npod_annotations = ['io.kata-sriov.*']\n").unwrap();
    assert_eq!(st(&l.run("", CMDLINE), "containerd.runtime"), Status::Ok);
}

#[test]
fn report_counts_text_and_json_layout() {
    let l = lab(true);
    l.fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    let r = l.run(POOL, CMDLINE);
    assert_eq!(r.ok + r.warn + r.fail, r.checks.len());
    assert!(r.failed());
    let text = r.render();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("fail  ")).count(),
        r.fail
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("      fix: "))
            .count(),
        r.fail + r.warn
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["version"], 1);
    for c in v["checks"].as_array().unwrap() {
        let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "status", "message", "fix"]);
        let s = c["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&s));
        assert_eq!(c["fix"].is_null(), s == "ok", "{c}");
    }
}

#[test]
fn binary_exits_non_zero_on_failure_and_prints_json() {
    let l = lab(true);
    l.fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    let conf = l.dir.path().join("ks.toml");
    fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\nsysfs_root = \"{}\"\n[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nnum_vfs = 9\n",
            l.dir.path().join("state").display(),
            l.fake.dir().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kata-sriov"))
        .arg("--config")
        .arg(&conf)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vfs = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "pool.fast.vfs.ens1f0")
        .unwrap();
    // More VFs than the PF supports: a failure on any host.
    assert_eq!(vfs["status"], "fail", "{vfs}");
    assert!(vfs["fix"].as_str().unwrap().contains("at most 8"), "{vfs}");
    assert!(v["fail"].as_u64().unwrap() > 0);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check(s) failed"), "{err}");
}
