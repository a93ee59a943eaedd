//! Shared by the netdev-mode and Docker-driver end-to-end tests: a fake
//! host whose VFs' netdevs are real veth ends in the host namespace (names
//! `<tag>pv<i>`, peers `<tag>q<i>`), a config with a netdev pool that keeps
//! the MAC and sets nothing on the PF (so no VF netlink call), a busybox
//! rootfs. Everything is named after a per-test tag and removed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use kata_sriov::pci::PciAddress;
use kata_sriov::testing::FakeSysfs;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn quiet_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct VethHost {
    pub tag: String,
    pub dir: tempfile::TempDir,
    pub fake: FakeSysfs,
    pub pf: PciAddress,
    pub config: PathBuf,
    pub vfs: u32,
}

impl VethHost {
    /// `vfs` VFs on igbvf whose netdevs are veth ends, pool `nd` (netdev,
    /// mac keep), plus `extra` config.
    pub fn new(prefix: &str, vfs: u32, extra: &str) -> VethHost {
        let tag = format!(
            "{prefix}{:x}{}",
            std::process::id() % 0xfff,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        assert!(tag.len() <= 10, "tag {tag} too long for interface names");
        let dir = tempfile::Builder::new()
            .prefix("ks-netdev")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let sys = dir.path().join("sys");
        let fake = FakeSysfs::new(&sys);
        let pf = fake.add_pf_with("0000:3b:00.0", &format!("{tag}p"), vfs, 8, Some("igbvf"));
        for i in 0..vfs {
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &format!("{tag}pv{i}"),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{tag}q{i}"),
                ],
            );
        }
        let config = dir.path().join("config.toml");
        let text = format!(
            "state_dir = {:?}\nsysfs_root = {:?}\n[[pools]]\nname = \"nd\"\npfs = [\"0000:3b:00.0\"]\nmode = \"netdev\"\nmac = \"keep\"\n{extra}",
            dir.path().join("state"),
            sys,
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("config: {e}"));
        VethHost {
            tag,
            dir,
            fake,
            pf,
            config,
            vfs,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn vf_netdev(&self, i: u32) -> String {
        format!("{}pv{i}", self.tag)
    }

    pub fn vf(&self, i: u32) -> PciAddress {
        self.fake
            .root()
            .vf_addr(self.pf, i)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The MAC of a host link.
    pub fn mac(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&run("ip", &["-j", "link", "show", "dev", name]))
                .unwrap_or_else(|e| panic!("{e}"));
        v[0]["address"].as_str().unwrap_or_default().to_owned()
    }

    pub fn host_has(&self, name: &str) -> bool {
        quiet_ok("ip", &["link", "show", "dev", name])
    }

    pub fn leases(&self) -> usize {
        std::fs::read_dir(self.path().join("state/leases"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for VethHost {
    fn drop(&mut self) {
        for i in 0..self.vfs {
            for n in [format!("{}pv{i}", self.tag), format!("{}q{i}", self.tag)] {
                let _ = Command::new("ip")
                    .args(["link", "del", &n])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A busybox rootfs under `dir` (a static busybox with its applets linked).
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap_or_else(|e| panic!("{e}"));
    for a in ["sh", "ip", "sleep", "cat", "ls", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap_or_else(|e| panic!("{e}"));
    }
}
