//! Benchmark: netdev mode against what a user would pick instead, the CNI
//! `host-device` plugin (Debian `containernetworking-plugins`), both as
//! processes, moving the same netdev into a network namespace (renamed
//! `net1`, static address and gateway) and back, alternated round by round.
//!
//! kata-sriov: `kata-sriov hook create-runtime` then `hook poststop` (the
//! OCI hook state on stdin, a fake sysfs tree whose one VF's netdev is a
//! real veth in this namespace, a netdev pool that keeps the MAC and sets
//! nothing on the PF). host-device: `CNI_COMMAND=ADD` then `DEL` with the
//! `static` IPAM plugin. Each ADD is checked against what the kernel then
//! reports (the address on `net1` in the namespace), each DEL by the netdev
//! being back under its name. Needs root.
//!
//! `cargo run --release -p kata-sriov-tests --bin bench-netdev -- [--rounds 20]`
//! on this machine (a veth stands in for the VF), or, with a real VF (the
//! lab's `netdev-bench` scenario), `bench-netdev --real CONFIG VF_NETDEV`:
//! CONFIG has a netdev pool `nd` whose first free VF has netdev VF_NETDEV.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use kata_sriov::testing::{add_vf_veths, del_vf_veths, FakeSysfs};
use kata_sriov_tests::{median_ms, try_ip};

const CNI_DIR: &str = "/usr/lib/cni";

/// Runs `cmd` with `input` on stdin; fails on a non-zero exit.
fn run(cmd: &mut Command, input: &[u8]) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    child.stdin.take().context("stdin")?.write_all(input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

struct Bench {
    _dir: tempfile::TempDir,
    tag: String,
    /// The VF's netdev on the host.
    host_name: String,
    /// A veth pair of ours to delete at the end (not with a real VF).
    veth: bool,
    ns: String,
    holder: Child,
    bundle: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = try_ip(&["netns", "del", &self.ns]);
        if self.veth {
            del_vf_veths(&self.tag, 1);
        }
    }
}

impl Bench {
    /// `real`: (config, VF netdev) of a real VF; else a fake tree whose
    /// VF netdev is a veth.
    fn new(real: Option<(PathBuf, String)>) -> anyhow::Result<Bench> {
        let tag = format!("kb{:x}", std::process::id() % 0xfff);
        let dir = tempfile::Builder::new()
            .prefix("ks-bench-netdev")
            .tempdir_in("/dev/shm")?;
        let veth = real.is_none();
        let (config, host_name) = match real {
            Some(r) => r,
            None => {
                let sys = dir.path().join("sys");
                let fake = FakeSysfs::new(&sys);
                fake.add_pf_with("0000:3b:00.0", &format!("{tag}p"), 1, 8, Some("igbvf"));
                del_vf_veths(&tag, 1);
                add_vf_veths(&tag, 1);
                let config = dir.path().join("config.toml");
                std::fs::write(
                    &config,
                    format!(
                        "state_dir = {:?}\nsysfs_root = {:?}\n[[pools]]\nname = \"nd\"\npfs = [\"0000:3b:00.0\"]\nmode = \"netdev\"\nmac = \"keep\"\n",
                        dir.path().join("state"),
                        sys
                    ),
                )?;
                (config, format!("{tag}pv0"))
            }
        };
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&json!({
                "ociVersion": "1.0.2",
                "process": {"args": ["sh"]},
                "root": {"path": "rootfs"},
                "annotations": {"io.kata-sriov.networks":
                    r#"[{"pool":"nd","name":"net1","ips":["10.79.1.5/24"],"gateway":"10.79.1.1"}]"#},
                "linux": {"namespaces": [{"type": "network"}]}
            }))?,
        )?;
        let ns = format!("{tag}ns");
        let _ = try_ip(&["netns", "del", &ns]);
        try_ip(&["netns", "add", &ns])?;
        // The container's process: `ip netns exec` execs sleep in place.
        let holder = Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()?;
        let mine = std::fs::read_link("/proc/self/ns/net")?;
        let theirs = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let start = Instant::now();
        while std::fs::read_link(&theirs).ok().is_none_or(|l| l == mine) {
            if start.elapsed() > Duration::from_secs(5) {
                bail!("the holder process never entered {ns}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Bench {
            log: dir.path().join("log"),
            _dir: dir,
            tag,
            host_name,
            veth,
            ns,
            holder,
            bundle,
            config,
        })
    }

    fn check_in(&self) -> anyhow::Result<()> {
        let a = try_ip(&["-n", &self.ns, "-j", "addr", "show", "dev", "net1"])?;
        if !a.contains("10.79.1.5") || !a.contains("\"UP\"") {
            bail!("net1 in {} is not configured: {a}", self.ns);
        }
        let r = try_ip(&["-n", &self.ns, "route", "show", "default"])?;
        if !r.contains("via 10.79.1.1") {
            bail!("no default route via 10.79.1.1 in {}: {r}", self.ns);
        }
        Ok(())
    }

    fn check_back(&self) -> anyhow::Result<()> {
        try_ip(&["link", "show", "dev", &self.host_name])
            .map(|_| ())
            .with_context(|| format!("{} is not back on the host", self.host_name))
    }

    /// One kata-sriov cycle: (attach, detach) times.
    fn kata_sriov(&self, bin: &Path) -> anyhow::Result<(Duration, Duration)> {
        let state = json!({
            "ociVersion": "1.0.2", "id": "bench", "status": "created",
            "pid": self.holder.id(), "bundle": self.bundle, "annotations": {}
        });
        let state = serde_json::to_vec(&state)?;
        let hook = |mode: &str| -> anyhow::Result<Duration> {
            let t = Instant::now();
            run(
                Command::new(bin)
                    .args(["hook", mode])
                    .env("KATA_SRIOV_CONFIG", &self.config)
                    .env("KATA_SRIOV_LOG", &self.log),
                &state,
            )?;
            Ok(t.elapsed())
        };
        let add = hook("create-runtime")?;
        self.check_in()?;
        let del = hook("poststop")?;
        self.check_back()?;
        Ok((add, del))
    }

    /// One host-device cycle: (ADD, DEL) times.
    fn host_device(&self) -> anyhow::Result<(Duration, Duration)> {
        let conf = serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "host-device",
            "device": self.host_name,
            "ipam": {"type": "static", "addresses": [{"address": "10.79.1.5/24", "gateway": "10.79.1.1"}],
                     "routes": [{"dst": "0.0.0.0/0", "gw": "10.79.1.1"}]}
        }))?;
        let cni = |cmd: &str| -> anyhow::Result<Duration> {
            let t = Instant::now();
            run(
                Command::new(Path::new(CNI_DIR).join("host-device"))
                    .env("CNI_COMMAND", cmd)
                    .env("CNI_CONTAINERID", "bench")
                    .env("CNI_NETNS", format!("/run/netns/{}", self.ns))
                    .env("CNI_IFNAME", "net1")
                    .env("CNI_PATH", CNI_DIR),
                &conf,
            )?;
            Ok(t.elapsed())
        };
        let add = cni("ADD")?;
        self.check_in()?;
        let del = cni("DEL")?;
        self.check_back()?;
        Ok((add, del))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).context("--rounds N")?.parse()?,
        None => 20,
    };
    if !Path::new(CNI_DIR).join("host-device").exists() {
        bail!("{CNI_DIR}/host-device not found: apt-get install containernetworking-plugins");
    }
    // Beside this binary: target/<profile>/kata-sriov.
    let bin = std::env::current_exe()?.with_file_name("kata-sriov");
    if !bin.exists() {
        bail!(
            "{} is not built: cargo build --release -p kata-sriov",
            bin.display()
        );
    }
    let real = match args.iter().position(|a| a == "--real") {
        Some(i) => Some((
            PathBuf::from(args.get(i + 1).context("--real CONFIG VF_NETDEV")?),
            args.get(i + 2).context("--real CONFIG VF_NETDEV")?.clone(),
        )),
        None => None,
    };
    let what = if real.is_some() {
        "a real VF"
    } else {
        "a veth"
    };
    let b = Bench::new(real)?;
    let (mut ks, mut hd) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ks.push(b.kata_sriov(&bin)?);
        hd.push(b.host_device()?);
    }
    let part = |v: &[(Duration, Duration)], f: fn(&(Duration, Duration)) -> Duration| {
        median_ms(&v.iter().map(f).collect::<Vec<_>>())
    };
    let whole =
        |v: &[(Duration, Duration)]| median_ms(&v.iter().map(|(a, d)| *a + *d).collect::<Vec<_>>());
    println!(
        "netdev into a fresh namespace and back ({what}, renamed net1, static address + gateway), median of {rounds} alternated rounds, both as processes:"
    );
    println!(
        "  kata-sriov hook create-runtime + poststop ({}): {:.1} ms ({:.1} + {:.1})",
        bin.display(),
        whole(&ks),
        part(&ks, |p| p.0),
        part(&ks, |p| p.1)
    );
    println!(
        "  CNI host-device ADD + DEL (static IPAM):        {:.1} ms ({:.1} + {:.1})",
        whole(&hd),
        part(&hd, |p| p.0),
        part(&hd, |p| p.1)
    );
    println!(
        "  ratio kata-sriov / host-device: {:.2}",
        whole(&ks) / whole(&hd)
    );
    Ok(())
}
