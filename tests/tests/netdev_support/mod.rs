//! Shared by the netdev-mode and Docker-driver end-to-end tests: a fake
//! host whose VFs' netdevs are real veth ends in the host namespace (names
//! `<tag>pv<i>`, peers `<tag>q<i>`), a config with a netdev pool that keeps
//! the MAC and sets nothing on the PF (so no VF netlink call), a busybox
//! rootfs. Everything is named after a per-test tag and removed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use kata_sriov::pci::PciAddress;
use kata_sriov::testing::{add_vf_veths, del_vf_veths, lease_files, FakeSysfs};
/// A network namespace made with `ip netns add`, deleted on drop.
pub use kata_sriov_guest::testing::Netns;
use kata_sriov_tests::workspace_bin;

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
        // Under /dev/shm, which the forky root's engines see too.
        let dir = tempfile::Builder::new()
            .prefix("ks-netdev")
            .tempdir_in("/dev/shm")
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let sys = dir.path().join("sys");
        let fake = FakeSysfs::new(&sys);
        let pf = fake.add_pf_with("0000:3b:00.0", &format!("{tag}p"), vfs, 8, Some("igbvf"));
        add_vf_veths(&tag, vfs);
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
        lease_files(&self.path().join("state"))
    }
}

impl Drop for VethHost {
    fn drop(&mut self) {
        del_vf_veths(&self.tag, self.vfs);
    }
}

/// Points the spec's network namespace at `ns` (joined by path) and gives
/// it kata-sriov's createRuntime and poststop hooks: `bin`, with `host`'s
/// config and `log` in their environment.
pub fn with_netdev_hooks(spec: &mut Value, ns: &Netns, bin: &Path, host: &VethHost, log: &Path) {
    for n in spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("no linux.namespaces"))
    {
        if n["type"] == "network" {
            n["path"] = json!(format!("/run/netns/{}", ns.name));
        }
    }
    let env = json!([
        format!("KATA_SRIOV_CONFIG={}", host.config.display()),
        format!("KATA_SRIOV_LOG={}", log.display()),
    ]);
    spec["hooks"] = json!({
        "createRuntime": [{ "path": bin, "args": ["kata-sriov", "hook", "create-runtime"], "env": env, "timeout": 30 }],
        "poststop": [{ "path": bin, "args": ["kata-sriov", "hook", "poststop"], "env": env, "timeout": 30 }],
    });
}

/// A running `kata-sriov docker-plugin` on its own socket.
pub struct Plugin {
    pub child: Option<std::process::Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    config: PathBuf,
}

impl Plugin {
    pub fn start(config: &Path, socket: &Path, log: &Path) -> Plugin {
        let mut p = Plugin {
            child: None,
            socket: socket.to_owned(),
            log: log.to_owned(),
            config: config.to_owned(),
        };
        p.restart();
        p
    }

    /// (Re)starts the process and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(workspace_bin("kata-sriov"))
            .arg("--config")
            .arg(&self.config)
            .arg("docker-plugin")
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("KATA_SRIOV_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the plugin: {e}"));
        self.child = Some(child);
        let start = std::time::Instant::now();
        loop {
            if let Ok((200, _)) = call_raw(&self.socket, "Plugin.Activate", b"{}") {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "plugin did not answer: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn call(&self, method: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let b = serde_json::to_vec(&body).unwrap_or_default();
        let (status, text) =
            call_raw(&self.socket, method, &b).unwrap_or_else(|e| panic!("{method}: {e}"));
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method}: reply is not JSON ({e}): {text:?}"));
        (status, v)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One HTTP/1.1 POST over a unix socket: (status, body).
pub fn call_raw(socket: &Path, method: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut req = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    send_raw(socket, &req)
}

/// Writes raw bytes, reads the whole reply: (status, body).
pub fn send_raw(socket: &Path, raw: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}
