//! Test support for the shim: a fake VF host (fake sysfs tree with VFs on
//! vfio-pci, character nodes under a temp `dev_root`, a kata-sriov config),
//! a busybox root filesystem, and a private containerd (own root, state,
//! sockets, config) with our shim first on its PATH. Everything lives in one
//! temp directory per test; `Drop` kills what the test started (found by
//! that directory), so tests run in parallel and clean up on failure.

#![allow(dead_code)]
// Test support: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kata_sriov::testing::FakeSysfs;
pub use kata_sriov_tests::{eventually, output_within, wait_within};

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-kata-sriov-v2");
pub const RUNTIME: &str = "io.containerd.kata-sriov.v2";
pub const RUNC: &str = "io.containerd.runc.v2";
pub const PF: &str = "0000:3b:00.0";
pub const POOL: &str = "p";
pub const REQUEST: &str = "io.kata-sriov.networks";

/// `kata-sriov`, built beside the shim (`cargo build -p kata-sriov`).
pub fn kata_sriov_bin() -> PathBuf {
    let p = Path::new(SHIM).with_file_name("kata-sriov");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p kata-sriov --bin kata-sriov` (same CARGO_TARGET_DIR)",
        p.display()
    );
    p
}

/// A busybox root filesystem.
pub fn make_rootfs(dir: &Path) {
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is needed");
    for c in [
        "sh", "ls", "cat", "sleep", "echo", "id", "grep", "sed", "head", "stat", "true",
    ] {
        symlink("busybox", dir.join("bin").join(c)).unwrap();
    }
}

/// The fake VF host: a PF with `vfs` VFs already on vfio-pci, their
/// `/dev/vfio` nodes, and a kata-sriov config.
pub struct FakeHost {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub fake: FakeSysfs,
}

impl FakeHost {
    pub fn new(dir: &Path, vfs: u32, delegate: &str) -> FakeHost {
        let (sys, dev, state) = (dir.join("sys"), dir.join("dev"), dir.join("ks-state"));
        let fake = FakeSysfs::new(&sys);
        fake.add_pf_with(PF, "ens1f0", vfs, vfs, Some("vfio-pci"));
        fake.make_vfio_nodes(&dev).expect("mknod (needs root)");
        // So that the shim logs even before the first claim creates it.
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let config = dir.join("kata-sriov.toml");
        fs::write(
            &config,
            format!(
                r#"state_dir = "{state}"
sysfs_root = "{sys}"
dev_root = "{dev}"
[shim]
delegate = "{delegate}"
[hook]
binary = "{bin}"
release_wait = 5
[[pools]]
name = "{POOL}"
pfs = ["{PF}"]
mac = "keep"
"#,
                state = state.display(),
                sys = sys.display(),
                dev = dev.display(),
                bin = kata_sriov_bin().display(),
            ),
        )
        .unwrap();
        FakeHost {
            sys,
            dev,
            state,
            config,
            fake,
        }
    }

    /// Turns the poststop hook injection on or off (`[hook] poststop`).
    pub fn set_poststop(&self, on: bool) {
        let text = fs::read_to_string(&self.config).unwrap();
        let text = text.replace("[hook]\n", &format!("[hook]\npoststop = {on}\n"));
        fs::write(&self.config, text).unwrap();
    }

    /// Adds `[shim.delegates]` entries: runtime handler -> delegate path.
    pub fn set_delegates(&self, delegates: &[(&str, &Path)]) {
        let mut table = String::from("[shim.delegates]\n");
        for (h, p) in delegates {
            table.push_str(&format!("{h} = \"{}\"\n", p.display()));
        }
        let text = fs::read_to_string(&self.config).unwrap();
        let text = text.replace("[hook]\n", &format!("{table}[hook]\n"));
        fs::write(&self.config, text).unwrap();
    }

    /// The lease files in the state directory, read directly (no process).
    pub fn lease_files(&self) -> usize {
        fs::read_dir(self.state.join("leases"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The address of the PF's VF `n` in the fake tree.
    pub fn vf_addr(&self, n: u32) -> String {
        let l = fs::read_link(self.sys.join(format!("bus/pci/devices/{PF}/virtfn{n}"))).unwrap();
        l.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// A VF's driver and `driver_override` in the fake tree.
    pub fn vf_binding(&self, vf: &str) -> (Option<String>, String) {
        let d = self.sys.join(format!("bus/pci/devices/{vf}"));
        let drv = fs::read_link(d.join("driver"))
            .ok()
            .and_then(|l| Some(l.file_name()?.to_string_lossy().into_owned()));
        (
            drv,
            fs::read_to_string(d.join("driver_override")).unwrap_or_default(),
        )
    }

    /// Makes the pool a `guest = "dan"` pool writing DAN files to `dir`.
    pub fn set_dan(&self, dir: &Path) {
        let mut text = fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!(
            "guest = \"dan\"\n[dan]\ndir = \"{}\"\n",
            dir.display()
        ));
        fs::write(&self.config, text).unwrap();
    }

    /// `kata-sriov status --json`'s leases.
    pub fn leases(&self) -> Vec<serde_json::Value> {
        let out = output_within(
            Command::new(kata_sriov_bin())
                .arg("--config")
                .arg(&self.config)
                .args(["status", "--json"]),
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "kata-sriov status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["leases"].as_array().cloned().unwrap_or_default()
    }

    pub fn owners(&self) -> Vec<String> {
        let mut o: Vec<String> = self
            .leases()
            .iter()
            .map(|l| l["owner"].as_str().unwrap_or_default().to_owned())
            .collect();
        o.sort();
        o
    }

    /// The IOMMU group (= `/dev/vfio/N`) of a VF.
    pub fn group_of(&self, vf: &str) -> u32 {
        let link =
            fs::read_link(self.sys.join(format!("bus/pci/devices/{vf}/iommu_group"))).unwrap();
        link.file_name().unwrap().to_str().unwrap().parse().unwrap()
    }

    /// The shared log of the shim and the hooks.
    pub fn log(&self) -> String {
        fs::read_to_string(self.state.join("kata-sriov.log")).unwrap_or_default()
    }
}

/// A private containerd with our shim on its PATH.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub ns: String,
    pub sock: PathBuf,
    pub rootfs: PathBuf,
    pub bin: PathBuf,
    pub host: FakeHost,
    containerd: Option<Child>,
}

impl Lab {
    /// `vfs` VFs in pool `p`; `delegate` as `[shim] delegate`.
    pub fn new(vfs: u32, delegate: &str) -> Lab {
        // On tmpfs where there is one, as /run/containerd and /run/kata-sriov
        // are on a real host: fsync costs what it costs there.
        // (The container's busybox runs from there: it must allow exec.)
        let tmpfs_ok = nix::sys::statvfs::statvfs("/dev/shm")
            .is_ok_and(|v| !v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC));
        let base = if tmpfs_ok { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::Builder::new()
            .prefix("kss")
            .tempdir_in(base)
            .unwrap();
        let d = dir.path().to_owned();
        let ns = d.file_name().unwrap().to_str().unwrap().to_owned();
        let host = FakeHost::new(&d, vfs, delegate);
        let rootfs = d.join("rootfs");
        make_rootfs(&rootfs);
        let bin = d.join("bin");
        fs::create_dir(&bin).unwrap();
        symlink(SHIM, bin.join("containerd-shim-kata-sriov-v2")).unwrap();
        let sock = d.join("c.sock");
        fs::write(
            d.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  level = "debug"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("containerd.toml"))
            .env("PATH", path)
            .env("KATA_SRIOV_CONFIG", &host.config)
            .env_remove("KATA_SRIOV_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is needed");
        let lab = Lab {
            dir,
            ns,
            sock,
            rootfs,
            bin,
            host,
            containerd: Some(child),
        };
        let up = eventually(Duration::from_secs(30), || {
            lab.ctr(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "containerd did not come up:\n{}", lab.containerd_log());
        lab
    }

    pub fn containerd_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, in this lab's namespace.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(&self.ns)
            .args(args);
        c
    }

    /// `ctr run --rm` arguments for `script` in `id` under `runtime`.
    pub fn run_args(
        &self,
        runtime: &str,
        id: &str,
        request: Option<&str>,
        script: &str,
    ) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--runtime".into(),
            runtime.into(),
        ];
        if let Some(r) = request {
            a.push("--annotation".into());
            a.push(format!("{REQUEST}={r}"));
        }
        a.push("--rootfs".into());
        a.push(self.rootfs.display().to_string());
        a.push(id.into());
        a.extend(["/bin/sh".into(), "-c".into(), script.into()]);
        a
    }

    /// `ctr run --rm` to completion.
    pub fn run(&self, runtime: &str, id: &str, request: Option<&str>, script: &str) -> Output {
        let a = self.run_args(runtime, id, request, script);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        output_within(&mut self.ctr(&a), Duration::from_secs(60))
    }

    /// `ctr run --rm` in the background, stdin and stdout piped.
    pub fn spawn(&self, runtime: &str, id: &str, request: Option<&str>, script: &str) -> Running {
        let a = self.run_args(runtime, id, request, script);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut child = self
            .ctr(&a)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (e2, err) = (stderr.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            if let Ok(mut e) = e2.lock() {
                *e = s;
            }
        });
        Running {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The bundle directory containerd made for `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!(
            "state/io.containerd.runtime.v2.task/{}/{id}",
            self.ns
        ))
    }

    /// Puts a symlink to our shim on containerd's PATH under `name`.
    pub fn link_shim_as(&self, name: &str) {
        symlink(SHIM, self.bin.join(name)).unwrap();
    }

    /// The long-running shim serving task `id` (its command line names
    /// this lab's socket and `-id <id>`).
    pub fn shim_pid(&self, id: &str) -> Option<i32> {
        let sock = self.sock.display().to_string();
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let has = |flag: &str, v: &str| args.windows(2).any(|w| w[0] == flag && w[1] == v);
            (has("-address", &sock)
                && has("-id", id)
                && args.last().is_some_and(|a| a != "start" && a != "delete"))
            .then_some(pid)
        })
    }

    fn processes_in_dir(&self) -> Vec<i32> {
        let d = self.dir.path().to_string_lossy().into_owned();
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let cgroup = fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if cmd.contains(&d) || cgroup.contains(&format!("/{}/", self.ns)) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Tasks and containers through containerd, then whatever is left:
        // containerd, shims (their command line names this lab's socket)
        // and container processes (in this lab's namespace's cgroups).
        let alive = self
            .containerd
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        let list = |what: &str| -> Vec<String> {
            let out = output_within(&mut self.ctr(&[what, "ls", "-q"]), Duration::from_secs(10));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        };
        if alive {
            for t in list("tasks") {
                let _ = output_within(
                    &mut self.ctr(&["tasks", "rm", "-f", &t]),
                    Duration::from_secs(10),
                );
            }
            for c in list("containers") {
                let _ = output_within(
                    &mut self.ctr(&["containers", "rm", &c]),
                    Duration::from_secs(10),
                );
            }
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..3 {
            let pids = self.processes_in_dir();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        // What runc leaves per namespace: its state directory and the
        // namespace's (now empty) parent cgroups.
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.ns));
        for c in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(c.path().join(&self.ns));
        }
    }
}

/// A `ctr run` in the background.
pub struct Running {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Waits for a stdout line containing `needle`; returns it.
    pub fn line_with(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let t = Instant::now();
        loop {
            let left = limit.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {limit:?}; saw {:?}; stderr {:?}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Sends a line to the container.
    pub fn send(&mut self, s: &str) {
        if let Some(i) = self.stdin.as_mut() {
            let _ = writeln!(i, "{s}");
            let _ = i.flush();
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for `ctr` to exit; the rest of stdout is in `seen`.
    pub fn finish(&mut self, limit: Duration) -> ExitStatus {
        self.stdin.take();
        let s = wait_within(&mut self.child, limit)
            .unwrap_or_else(|| panic!("ctr did not exit within {limit:?}; saw {:?}", self.seen));
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
