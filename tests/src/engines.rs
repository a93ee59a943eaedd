//! The container engines the end-to-end tests run, and private instances
//! of them: this host's (Debian bookworm: containerd 1.6, dockerd 20.10), or
//! the ones of the Debian forky root that `scripts/forky-root.sh` builds
//! (containerd 2.1, runc, Docker 28, podman 5.8), entered through its `run`
//! command (a private mount namespace over an overlay of the cached root;
//! this checkout, `/dev` and so `/dev/shm` are visible there at the same
//! paths, which is why the tests keep what an engine reads under /dev/shm).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{eventually, output_within};

/// Where an engine's programs come from.
#[derive(Clone, Debug)]
pub enum Engines {
    /// This host's packages.
    Host,
    /// The forky root, through `scripts/forky-root.sh run`, with these
    /// extra `--bind` arguments.
    Forky { script: PathBuf, binds: Vec<String> },
}

/// `scripts/forky-root.sh` of this checkout.
pub fn forky_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/forky-root.sh")
}

/// Whether this run is CI's (`CI` set to anything but empty or `false`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

impl Engines {
    /// The forky root's engines. None when the root is not built and `CI`
    /// is unset: the caller skips, and this says so on stderr. Under CI a
    /// missing root fails the test (scripts/test.sh builds it first).
    pub fn forky(test: &str) -> Option<Engines> {
        let script = forky_script();
        let out = Command::new(&script)
            .arg("path")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} path: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !root.join(".kata-sriov-root").is_file() {
            let why = format!(
                "no forky root at {} (build it with `scripts/forky-root.sh build`; scripts/test.sh does)",
                root.display()
            );
            assert!(!under_ci(), "{test}: CI is set and there is {why}");
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        Some(Engines::Forky {
            script,
            binds: Vec::new(),
        })
    }

    /// Makes `spec` (`PATH`, or `SRC:DST`) visible in the forky root too.
    pub fn with_bind(mut self, spec: &str) -> Engines {
        if let Engines::Forky { binds, .. } = &mut self {
            binds.push(spec.to_owned());
        }
        self
    }

    pub fn is_forky(&self) -> bool {
        matches!(self, Engines::Forky { .. })
    }

    /// A command running `program` from these engines.
    pub fn command(&self, program: &str) -> Command {
        match self {
            Engines::Host => Command::new(program),
            Engines::Forky { script, binds } => {
                let mut c = Command::new(script);
                c.arg("run");
                for b in binds {
                    c.arg("--bind").arg(b);
                }
                c.arg("--").arg(program);
                c
            }
        }
    }

    /// `program args` to completion (at most `limit`), its output.
    pub fn output(&self, program: &str, args: &[&str], limit: Duration) -> Output {
        output_within(self.command(program).args(args), limit)
    }
}

/// podman's global flags for a private instance: its image store under
/// `storage`, its run state under `/run/containers/storage` (bind a private
/// directory on `/run`: runc's and conmon's state live there too), vfs,
/// cgroupfs, events to a file, runc.
pub fn podman_private_args(storage: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["--root".into(), storage.into()];
    for a in [
        "--runroot",
        "/run/containers/storage",
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
        "--runtime",
        "runc",
    ] {
        out.push(a.into());
    }
    out
}

/// Asserts success; stdout as text.
pub fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A daemon started by a test, with its log in a file; stopped on drop
/// (SIGTERM, then SIGKILL after `grace`).
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    grace: Duration,
}

impl Daemon {
    fn spawn(mut cmd: Command, log: PathBuf, grace: Duration) -> Daemon {
        let f = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = f.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Daemon {
            child: Some(child),
            log,
            grace,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let t = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t.elapsed() < self.grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `PATH` with `dir` first.
fn path_with(dir: Option<&Path>) -> OsString {
    let base = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    match dir {
        None => base,
        Some(d) => {
            let mut p = d.as_os_str().to_owned();
            p.push(":");
            p.push(base);
            p
        }
    }
}

/// A private containerd: its own root, state and sockets under `dir`, the
/// CRI plugin off (or a config of the caller's: [`Containerd::start_with`]). Config `version = 2` for the host's 1.6, `version = 3`
/// for the forky root's 2.x.
pub struct Containerd {
    daemon: Daemon,
    pub engines: Engines,
    pub dir: PathBuf,
    pub sock: PathBuf,
}

impl Containerd {
    /// `bin`, when given, goes first on containerd's `PATH` (where it finds
    /// shims by name); `env` is added to its environment (shims inherit it).
    pub fn start(
        engines: &Engines,
        dir: &Path,
        bin: Option<&Path>,
        env: &[(&str, &Path)],
    ) -> Containerd {
        let cfg = dir.join("config.toml");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(&cfg, Containerd::base_config(engines, dir, false))
            .unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
        Containerd::start_with(engines, dir, &cfg, bin, env)
    }

    /// The config [`Containerd::start`] uses: root, state and sockets under
    /// `dir`, the CRI plugin off unless `cri` (forky's 2.x only, which this
    /// `version = 3` text is for when `cri`).
    pub fn base_config(engines: &Engines, dir: &Path, cri: bool) -> String {
        let (version, disabled) = match (engines.is_forky(), cri) {
            (true, true) => (3, r#"["io.containerd.snapshotter.v1.btrfs"]"#),
            (true, false) => (
                3,
                r#"["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs"]"#,
            ),
            (false, _) => (2, r#"["io.containerd.grpc.v1.cri"]"#),
        };
        format!(
            "version = {version}\nroot = {:?}\nstate = {:?}\ndisabled_plugins = {disabled}\n[grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n",
            dir.join("root"),
            dir.join("state"),
            dir.join("c.sock"),
            dir.join("c.sock.ttrpc"),
        )
    }

    /// containerd with the config file `cfg` (whose `[grpc]` address must
    /// be `dir/c.sock`, as [`Containerd::base_config`] says).
    pub fn start_with(
        engines: &Engines,
        dir: &Path,
        cfg: &Path,
        bin: Option<&Path>,
        env: &[(&str, &Path)],
    ) -> Containerd {
        let sock = dir.join("c.sock");
        let mut cmd = engines.command("containerd");
        cmd.arg("--config").arg(cfg).env("PATH", path_with(bin));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let daemon = Daemon::spawn(cmd, dir.join("containerd.log"), Duration::from_secs(10));
        let mut c = Containerd {
            daemon,
            engines: engines.clone(),
            dir: dir.to_owned(),
            sock,
        };
        let up = eventually(Duration::from_secs(60), || {
            c.ctr(&["version"], Duration::from_secs(20))
                .status
                .success()
        });
        assert!(
            up && c.daemon.alive(),
            "containerd did not come up:\n{}",
            c.log()
        );
        c
    }

    /// `ctr --address SOCK args` (from the same engines).
    pub fn ctr(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = self.engines.command("ctr");
        cmd.arg("--address").arg(&self.sock).args(args);
        output_within(&mut cmd, limit)
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// A private dockerd: data root, exec root, pid file and API socket under
/// `dir`, configured by `daemon_json` (which must say `"bridge": "none"`,
/// `"iptables": false`, ... as the caller needs). Its own containerd
/// (started by dockerd) finds shims on `PATH`, with `bin` first.
pub struct Dockerd {
    daemon: Daemon,
    pub engines: Engines,
    pub sock: PathBuf,
}

impl Dockerd {
    pub fn start(
        engines: &Engines,
        dir: &Path,
        daemon_json: &Path,
        bin: Option<&Path>,
        env: &[(&str, &Path)],
    ) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let sock = dir.join("docker.sock");
        let mut cmd = engines.command("dockerd");
        cmd.arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .env("PATH", path_with(bin));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SIGTERM: dockerd stops its containers and unmounts.
        let daemon = Daemon::spawn(cmd, dir.join("dockerd.log"), Duration::from_secs(30));
        let mut d = Dockerd {
            daemon,
            engines: engines.clone(),
            sock,
        };
        let up = eventually(Duration::from_secs(120), || {
            !d.daemon.alive() || d.docker(&["version"]).status.success()
        });
        assert!(
            up && d.daemon.alive(),
            "dockerd did not come up:\n{}",
            d.log()
        );
        d
    }

    /// `docker -H SOCK args`, at most two minutes.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = self.engines.command("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args);
        output_within(&mut cmd, Duration::from_secs(120))
    }

    /// `docker args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&format!("docker {args:?}"), &self.docker(args))
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The server's version (`28.5.2+dfsg4`).
    pub fn server_version(&self) -> String {
        self.ok(&["version", "--format", "{{.Server.Version}}"])
            .trim()
            .to_owned()
    }
}

/// The major version in `28.5.2+dfsg4` or `v2.1.9`.
pub fn major(version: &str) -> u32 {
    version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no major version in {version:?}"))
}

/// `tar -cf TAR -C DIR .`: an image for `docker import` / `podman import`.
pub fn tar_of(dir: &Path, tar: &Path) {
    let o = output_within(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(tar)
            .arg("."),
        Duration::from_secs(60),
    );
    ok("tar", &o);
}

/// `sha256sum FILE`: its digest and size.
fn digest_of(file: &Path) -> (String, u64) {
    let o = output_within(Command::new("sha256sum").arg(file), Duration::from_secs(60));
    let out = ok("sha256sum", &o);
    let hex = out.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(hex.len(), 64, "sha256sum {}: {out}", file.display());
    let len = std::fs::metadata(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .len();
    (format!("sha256:{hex}"), len)
}

/// Writes `json` as the blob it is in the OCI layout `dir`; its descriptor.
fn blob(dir: &Path, media_type: &str, json: &serde_json::Value) -> serde_json::Value {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, json.to_string()).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    descriptor(dir, media_type, &tmp)
}

/// Moves `file` into the OCI layout `dir` under its digest; its descriptor.
fn descriptor(dir: &Path, media_type: &str, file: &Path) -> serde_json::Value {
    let (digest, size) = digest_of(file);
    let to = dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::rename(file, &to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// An OCI image archive (an image layout, tarred) of one uncompressed
/// layer holding `rootfs`, named `name` (a full reference such as
/// `docker.io/library/ks-bb:1`) for `ctr images import`, whose command is
/// `cmd`; for this machine's architecture.
pub fn oci_image_tar(rootfs: &Path, name: &str, cmd: &[&str], tar: &Path) {
    let layout = tar.with_extension("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("{}: {e}", blobs.display()));
    let layer_tar = layout.join("layer.tar");
    tar_of(rootfs, &layer_tar);
    let layer = descriptor(
        &layout,
        "application/vnd.oci.image.layer.v1.tar",
        &layer_tar,
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        }),
    );
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let mut manifest = blob(
        &layout,
        manifest_type,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config,
            "layers": [layer],
        }),
    );
    manifest["annotations"] = serde_json::json!({"io.containerd.image.name": name});
    manifest["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest]});
    for (f, text) in [
        ("index.json", index.to_string()),
        ("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#.to_owned()),
    ] {
        let p = layout.join(f);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    tar_of(&layout, tar);
}
