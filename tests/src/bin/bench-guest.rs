//! Benchmark of the guest helper: time from its start to the NIC
//! configured (name, addresses, routes, MTU, up), in a fresh network
//! namespace with a veth standing in for the VF, median of 20 runs. Each
//! run is checked against what the kernel then reports (`ip -j`), and the
//! same spawn of `/bin/true` into the namespace is measured as the floor
//! (fork + setns + exec). Needs root.
//!
//! `cargo run --release -p kata-sriov-tests --bin bench-guest -- [GUEST_BINARY] [--runs 20]`
//! (default binary: the static build,
//! `target/x86_64-unknown-linux-gnu/release/kata-sriov-guest`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use kata_sriov_tests::{median_ms, try_ip};

const MAC: &str = "02:5a:11:22:33:44";
const CONFIG: &str = r#"[{"mac":"02:5a:11:22:33:44","pci_id":"8086:10ca","name":"net1","ips":["10.9.0.5/24","fd00:9::5/64"],"gateway":"10.9.0.1","routes":[{"dst":"10.10.0.0/16","via":"10.9.0.1"}],"mtu":1400}]"#;

/// A namespace with a veth carrying the VF's MAC (its peer up, so the
/// link gets a carrier), deleted on drop.
struct Ns(String);

impl Ns {
    fn new(i: usize) -> anyhow::Result<Ns> {
        let name = format!("ksbench{}-{i}", std::process::id());
        let _ = try_ip(&["netns", "del", &name]);
        try_ip(&["netns", "add", &name])?;
        let ns = Ns(name);
        try_ip(&[
            "-n", &ns.0, "link", "add", "eth1", "address", MAC, "type", "veth", "peer", "name",
            "eth1p",
        ])?;
        try_ip(&["-n", &ns.0, "link", "set", "eth1p", "up"])?;
        try_ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `cmd` in the namespace: wall time from spawn to exit.
    fn time(&self, cmd: &mut Command) -> anyhow::Result<Duration> {
        let fd = File::open(Path::new("/run/netns").join(&self.0))?;
        let raw = fd.as_raw_fd();
        // SAFETY: setns(2) on a file descriptor this process owns, in the
        // forked child before exec; no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let t = Instant::now();
        let out = cmd.stdin(Stdio::null()).output()?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(took)
    }

    /// What the kernel reports matches the config.
    fn check(&self) -> anyhow::Result<()> {
        let link = try_ip(&["-n", &self.0, "-j", "addr", "show", "dev", "net1"])?;
        for want in ["10.9.0.5", "fd00:9::5", "\"mtu\":1400", MAC] {
            if !link.contains(want) {
                bail!("net1 lacks {want}: {link}");
            }
        }
        if !link.contains("\"UP\"") {
            bail!("net1 is not up: {link}");
        }
        let routes = try_ip(&["-n", &self.0, "route", "show"])?;
        for want in ["default via 10.9.0.1", "10.10.0.0/16 via 10.9.0.1"] {
            if !routes.contains(want) {
                bail!("no route {want:?}: {routes}");
            }
        }
        Ok(())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = try_ip(&["netns", "del", &self.0]);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs N")?.parse()?,
        None => 20,
    };
    let bin = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--runs"))
        .map(|(_, a)| PathBuf::from(a))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-gnu/release/kata-sriov-guest")
        });
    if !bin.exists() {
        bail!(
            "{} not found: build it with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p kata-sriov-guest --target x86_64-unknown-linux-gnu",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("networks.json");
    std::fs::write(&config, CONFIG)?;
    let (mut helper, mut floor) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let ns = Ns::new(i)?;
        floor.push(ns.time(&mut Command::new("/bin/true"))?);
        helper.push(
            ns.time(Command::new(&bin).arg("--config").arg(&config).args([
                "--no-kmsg",
                "--wait",
                "5",
            ]))?,
        );
        ns.check()?;
    }
    let size = std::fs::metadata(&bin)?.len();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let (h, f) = (median_ms(&helper), median_ms(&floor));
    println!(
        "guest helper, start to NIC configured (rename, 2 addresses, default + 1 route, MTU, up), fresh netns, {runs} runs:"
    );
    println!(
        "  median {h:.1} ms (min {:.1}, max {:.1}); spawning /bin/true the same way: median {f:.1} ms",
        helper.iter().min().map_or(0.0, ms),
        helper.iter().max().map_or(0.0, ms),
    );
    println!(
        "  binary {} : {:.2} MB",
        bin.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
