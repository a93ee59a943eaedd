//! Support for the end-to-end tests: a fake host (a fake sysfs tree, VFIO
//! device nodes, a file-backed VF-settings fake, a state dir and a config
//! file, all in one temp dir on tmpfs), paths of the built binaries,
//! running commands with a time limit, and (in [`engines`]) private
//! containerd and dockerd instances from this host or the forky root.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kata_sriov::pci::PciAddress;
use kata_sriov::testing::{FakeSysfs, FileNetlink};

pub mod cri;
pub mod engines;

pub struct FakeHost {
    pub dir: tempfile::TempDir,
    /// Shared with a [`FakeKernel`], which moves its driver links.
    pub fake: Arc<FakeSysfs>,
    pub nl: FileNetlink,
    pub pf: PciAddress,
    pub config: PathBuf,
    pub vfs: u32,
}

impl FakeHost {
    /// A PF `ens1f0` with `vfs` VFs on `vf_driver`, and a config (CDI
    /// specs in `<dir>/cdi`) with `extra` appended (pools, `[hook]` ...).
    pub fn new(vfs: u32, vf_driver: &str, extra: &str) -> FakeHost {
        let dir = tempfile::Builder::new()
            .prefix("ks-e2e")
            .tempdir_in("/dev/shm")
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        let fake = Arc::new(FakeSysfs::new(&sys));
        let pf = fake.add_pf_with("0000:3b:00.0", "ens1f0", vfs, vfs.max(8), Some(vf_driver));
        fake.make_vfio_nodes(&dev)
            .unwrap_or_else(|e| panic!("mknod (needs root): {e}"));
        let nl = FileNetlink::new(&dir.path().join("nl"));
        nl.add_pf("ens1f0", vfs);
        let config = dir.path().join("config.toml");
        let text = format!(
            "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\ncdi.dir = {:?}\n{extra}",
            dir.path().join("state"),
            sys,
            dev,
            dir.path().join("cdi"),
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("config: {e}"));
        FakeHost {
            dir,
            fake,
            nl,
            pf,
            config,
            vfs,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn vf(&self, i: u32) -> PciAddress {
        self.fake
            .root()
            .vf_addr(self.pf, i)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn driver(&self, i: u32) -> Option<String> {
        self.fake
            .root()
            .driver(self.vf(i))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The IOMMU group of a VF (its node is `/dev/vfio/<group>`).
    pub fn group_of(&self, vf: PciAddress) -> u32 {
        self.fake
            .root()
            .iommu_group(vf)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{vf} has no IOMMU group"))
    }

    /// The lease files' contents.
    pub fn leases(&self) -> Vec<serde_json::Value> {
        self.leased()
            .iter()
            .map(|vf| {
                let p = self.path().join(format!("state/leases/{vf}.json"));
                let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            })
            .collect()
    }

    /// The kata-sriov log in the state dir (shim and hooks).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("state/kata-sriov.log")).unwrap_or_default()
    }

    /// VFs with a lease file.
    pub fn leased(&self) -> Vec<PciAddress> {
        let mut v: Vec<PciAddress> = std::fs::read_dir(self.path().join("state/leases"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A fake host whose `vfs` VFs are on vfio-pci, with one pool `fast` that
/// keeps the MAC (no kernel interface needed), and `[hook]` naming the
/// built `kata-sriov` plus `hook` (more `[hook]` keys).
pub fn vfio_host(vfs: u32, hook: &str) -> FakeHost {
    let bin = workspace_bin("kata-sriov");
    FakeHost::new(
        vfs,
        "vfio-pci",
        &format!(
            "[hook]\nbinary = {bin:?}\n{hook}\n[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nmac = \"keep\"\n"
        ),
    )
}

/// The kernel's half of PCI driver binding on a fake tree, for binaries
/// that bind through sysfs as on a real host (`driver_override`, the old
/// driver's `unbind`, `drivers_probe`): those files become FIFOs, and a
/// thread reads what is written to them and moves the device's `driver`
/// link as the kernel would. `drivers_probe` binds an unbound device to its
/// `driver_override`, or, with none, to `native` (the driver its ID
/// matches). The kernel does a write to `unbind` before the write returns;
/// here the thread keeps that order: it takes what `drivers_probe` holds
/// first, then applies every pending unbind (written before it), then the
/// probes. The binaries may run in another mount namespace (the forky
/// root): the tree only needs to be visible there.
pub struct FakeKernel {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// A FIFO read without blocking, with a write end kept open so that it
/// never reports end of file between writers.
struct Fifo {
    read: std::fs::File,
    _keep: std::fs::File,
    /// `Some(driver)` for `bus/pci/drivers/<driver>/unbind`.
    unbind_from: Option<String>,
}

impl Fifo {
    fn make(path: &Path, unbind_from: Option<&str>) -> Fifo {
        let _ = std::fs::remove_file(path);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let keep = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fifo {
            read,
            _keep: keep,
            unbind_from: unbind_from.map(str::to_owned),
        }
    }

    /// The addresses written since the last call (each write is one
    /// address, with or without a newline).
    fn take(&mut self) -> Vec<PciAddress> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match std::io::Read::read(&mut self.read, &mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&buf).replace(char::is_whitespace, "");
        // "0000:3b:10.0" is 12 characters; writes may arrive back to back.
        text.as_bytes()
            .chunks(12)
            .filter_map(|c| std::str::from_utf8(c).ok()?.parse().ok())
            .collect()
    }
}

impl FakeKernel {
    /// Serves the tree of `fake` for devices whose native driver is
    /// `native`; `drivers` are the drivers devices can be on (their
    /// directories are made).
    pub fn start(fake: &Arc<FakeSysfs>, native: &str, drivers: &[&str]) -> FakeKernel {
        let dir = fake.dir().to_owned();
        let mut probe = Fifo::make(&dir.join("bus/pci/drivers_probe"), None);
        let mut unbinds: Vec<Fifo> = drivers
            .iter()
            .map(|d| Fifo::make(&dir.join(format!("bus/pci/drivers/{d}/unbind")), Some(d)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (fake, native, stop2) = (fake.clone(), native.to_owned(), stop.clone());
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let probes = probe.take();
                for u in &mut unbinds {
                    for addr in u.take() {
                        let now = fake.root().driver(addr).ok().flatten();
                        if now.is_some() && now == u.unbind_from {
                            fake.set_driver(addr, None);
                        }
                    }
                }
                for addr in probes {
                    if fake.root().driver(addr).ok().flatten().is_some() {
                        continue;
                    }
                    let over = std::fs::read_to_string(
                        dir.join(format!("bus/pci/devices/{addr}/driver_override")),
                    )
                    .unwrap_or_default();
                    let over = over.trim();
                    let to = if over.is_empty() || over == "(null)" {
                        native.as_str()
                    } else {
                        over
                    };
                    fake.set_driver(addr, Some(to));
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        FakeKernel {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A binary built by this workspace (`target/<profile>/NAME`), found next
/// to the running test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/debug/deps/test-hash -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Runs `cmd` to completion, killing it after `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let status = wait_within(&mut child, limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"));
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `cmd` with `stdin` written to its standard input and collects its
/// output. A write error is ignored: a process that rejects its input may
/// close stdin early.
pub fn output_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        v
    })
}

/// Waits for `child`, killing it after `limit` (then None).
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
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

/// `ip args...` for the benchmarks: its stdout, or an error with its stderr.
pub fn try_ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running ip: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The median of `v` in milliseconds (0 for none), for the benchmarks.
pub fn median_ms(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// A tree for the benchmarks, on tmpfs: PF `ens1f0` at `0000:00:00.0` (a
/// domain of its own, so 64k VFs fit in the bus numbers) with `vfs` VFs on
/// iavf, group nodes with the null device's numbers (a group opens like a
/// free one on a real host), and a config with pool `fast` on it,
/// `pool_extra` appended to its table.
pub fn bench_tree(
    vfs: u32,
    pool_extra: &str,
) -> anyhow::Result<(
    tempfile::TempDir,
    FakeSysfs,
    kata_sriov::policy::config::Config,
)> {
    let dir = tempfile::Builder::new()
        .prefix("ks-bench")
        .tempdir_in("/dev/shm")?;
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    let fake = FakeSysfs::new(&sys);
    fake.add_pf("0000:00:00.0", "ens1f0", vfs, vfs);
    fake.make_vfio_nodes_as(&dev, Some((1, 3)))?;
    let text = format!(
        "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n\
         [[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\n{pool_extra}\n",
        dir.path().join("state"),
        sys,
        dev
    );
    let cfg = kata_sriov::policy::config::Config::parse(&text, Path::new("bench.toml"))?;
    Ok((dir, fake, cfg))
}

/// The value after `--name` in `args` (the benchmarks' flags).
pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}
