//! `kata-sriov configure containerd|docker|podman|kata`: adds kata-sriov to
//! a container engine's configuration, leaving everything else in the file
//! as it was.
//!
//! Files read and written (each path overridable):
//! - containerd: `/etc/containerd/config.toml`, or, where containerd 2.x is
//!   installed, the drop-in `/etc/containerd/conf.d/kata-sriov.toml` with the
//!   main file's `version` and, before 2.2 (or when the main file has its
//!   own `imports`), an `imports` entry for it in the main file. A
//!   `version = 2` file
//!   (containerd 1.6/1.7; also the format of an empty or missing file) gets
//!   `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-sriov]`,
//!   a `version = 3` file (containerd 2.x) gets
//!   `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.kata-sriov]`,
//!   with `runtime_type = "io.containerd.kata-sriov.v2"`, the
//!   `io.kata-sriov.*` annotations passed through CRI, and
//!   `privileged_without_host_devices = true` (as Kata recommends).
//! - docker: `/etc/docker/daemon.json`, `runtimes.kata-sriov =
//!   {"runtimeType": "io.containerd.kata-sriov.v2"}` (needs Docker 23 or
//!   later, which knows `runtimeType`); every other key keeps its place.
//! - podman (and CRI-O): `kata-sriov-precreate.json` and
//!   `kata-sriov-poststop.json` (oci-hooks(5)) in
//!   `/usr/share/containers/oci/hooks.d`, the directory both read.
//! - kata: Kata's `configuration.toml` (the first of
//!   [`KATA_CONFIG_PATHS`] that exists): in `[hypervisor.qemu]` (or the
//!   first `[hypervisor.*]` table) `cold_plug_vfio = "root-port"` without
//!   hot plug for guest-helper pools under the Go runtime,
//!   `cold_plug_vfio = "root-port"` and `pcie_root_port` >= the VF count
//!   under runtime-rs (which has no `hot_plug_vfio`), `guest_hook_path`
//!   when unset; for `guest = "dan"` pools `hot_plug_vfio = "root-port"`,
//!   `cold_plug_vfio = "no-port"`, `pcie_root_port` >= the VF count, and
//!   `[runtime] dan_conf` when kata-sriov's DAN directory is not Kata's
//!   default.
//!
//! TOML is edited with `toml_edit` (comments, order and formatting kept),
//! JSON with `serde_json` (key order kept; the file is re-indented only when
//! it changes). A change is written atomically (temp file and rename, the
//! old file's mode kept) after the old content was copied to
//! `<file>.kata-sriov.bak`. A file that already has everything is not
//! touched, so running this twice is harmless. [`Plan::diff`] renders the
//! change as a unified diff for `--dry-run`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use crate::error::IoError;
use crate::policy::config::{Config, GuestMode};

/// The runtime name every engine gets.
pub const RUNTIME_NAME: &str = "kata-sriov";
/// containerd's runtime type for `containerd-shim-kata-sriov-v2`.
pub const RUNTIME_TYPE: &str = "io.containerd.kata-sriov.v2";
/// The annotations CRI must pass to the runtime.
pub const ANNOTATIONS: &str = "io.kata-sriov.*";
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const DOCKER_CONFIG: &str = "/etc/docker/daemon.json";
pub const HOOKS_DIR: &str = "/usr/share/containers/oci/hooks.d";
/// Where Kata looks for its configuration, in order.
pub const KATA_CONFIG_PATHS: [&str; 2] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];
/// Kata's conventional guest hook directory (the guest image installs
/// `kata-sriov-guest` under its `prestart/`).
pub const GUEST_HOOK_PATH: &str = "/usr/share/oci/hooks";
/// Kata's default `dan_conf`.
pub const KATA_DAN_DIR: &str = "/run/kata-containers/dans";
/// Suffix of the backup kept beside an edited file.
pub const BACKUP_SUFFIX: &str = ".kata-sriov.bak";

const PRECREATE_HOOK: &str = include_str!("../../../configs/hooks.d/kata-sriov-precreate.json");
const POSTSTOP_HOOK: &str = include_str!("../../../configs/hooks.d/kata-sriov-poststop.json");

/// Largest file this edits.
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("unknown target {0:?}: use containerd, docker, podman or kata")]
    UnknownTarget(String),
    #[error("no Kata configuration found (looked at {0}); pass --file PATH")]
    NoKataConfig(String),
}

/// What to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Containerd,
    Docker,
    Podman,
    Kata,
}

impl FromStr for Target {
    type Err = ConfigureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "containerd" => Target::Containerd,
            "docker" => Target::Docker,
            "podman" | "crio" | "cri-o" => Target::Podman,
            "kata" => Target::Kata,
            _ => return Err(ConfigureError::UnknownTarget(s.chars().take(32).collect())),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Containerd => "containerd",
            Target::Docker => "docker",
            Target::Podman => "podman",
            Target::Kata => "kata",
        })
    }
}

/// One file's change: its content before (None: the file does not exist)
/// and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    /// The content the change starts from: `path`'s, or `base`'s.
    pub old: Option<String>,
    pub new: String,
    /// When `path` does not exist yet and is created from another file
    /// (Kata's shipped defaults copied to /etc): that file.
    pub base: Option<PathBuf>,
}

impl FileChange {
    pub fn changed(&self) -> bool {
        self.old.as_deref() != Some(self.new.as_str())
    }
}

/// A symlink to create: `path` -> `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkChange {
    pub path: PathBuf,
    pub target: PathBuf,
    /// It is already there.
    pub exists: bool,
}

/// What `configure` would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub files: Vec<FileChange>,
    /// Symlinks to our shim (a twin runtime handler's binary name).
    pub links: Vec<LinkChange>,
    /// Things the admin should know (printed, not errors).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn changed(&self) -> bool {
        self.files.iter().any(FileChange::changed) || self.links.iter().any(|l| !l.exists)
    }

    /// A unified diff of every changed file, after one line per symlink
    /// to create (which patch(1) skips).
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for l in self.links.iter().filter(|l| !l.exists) {
            out.push_str(&format!(
                "symlink {} -> {}\n",
                l.path.display(),
                l.target.display()
            ));
        }
        for f in self.files.iter().filter(|f| f.changed()) {
            let p = f.path.display().to_string();
            let old_name = if let Some(b) = &f.base {
                b.display().to_string()
            } else if f.old.is_some() {
                p.clone()
            } else {
                "/dev/null".to_owned()
            };
            out.push_str(&unified_diff(
                &old_name,
                &p,
                f.old.as_deref().unwrap_or(""),
                &f.new,
            ));
        }
        out
    }

    /// Writes every changed file (backup first, then an atomic replace; a
    /// file made from a `base` is created). Returns the files written.
    pub fn apply(&self) -> Result<Vec<PathBuf>, ConfigureError> {
        let mut done = Vec::new();
        for l in self.links.iter().filter(|l| !l.exists) {
            make_link(l)?;
            done.push(l.path.clone());
        }
        for f in self.files.iter().filter(|f| f.changed()) {
            write_with_backup(f)?;
            done.push(f.path.clone());
        }
        Ok(done)
    }
}

/// Creates the symlink under a temp name, then renames it into place.
fn make_link(l: &LinkChange) -> Result<(), ConfigureError> {
    if let Some(parent) = l.path.parent() {
        fs::create_dir_all(parent).map_err(IoError::at("creating", parent))?;
    }
    let name = l.path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = l.path.with_file_name(format!(
        ".{}.kata-sriov.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&l.target, &tmp)
        .and_then(|()| fs::rename(&tmp, &l.path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ConfigureError::from(IoError::at("creating the symlink", &l.path)(e))
        })
}

/// The backup path of `path`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

fn write_with_backup(f: &FileChange) -> Result<(), ConfigureError> {
    // A symlinked config (/etc/containerd/config.toml -> ...) is edited
    // where it points, and stays a symlink.
    let resolved;
    let path = match fs::symlink_metadata(&f.path) {
        Ok(md) if md.file_type().is_symlink() => {
            resolved = fs::canonicalize(&f.path).map_err(IoError::at("resolving", &f.path))?;
            &resolved
        }
        _ => &f.path,
    };
    let mut mode = 0o644;
    if f.old.is_some() && f.base.is_none() {
        let md = fs::metadata(path).map_err(IoError::at("inspecting", path))?;
        mode = md.permissions().mode() & 0o7777;
        let bak = backup_path(path);
        fs::copy(path, &bak).map_err(IoError::at("backing up to", &bak))?;
    } else if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(IoError::at("creating", parent))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.kata-sriov.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut t = fs::File::create(&tmp)?;
        t.write_all(f.new.as_bytes())?;
        t.set_permissions(fs::Permissions::from_mode(mode))?;
        t.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ConfigureError::from(IoError::at("writing", path)(e))
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, ConfigureError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoError::at("inspecting", path)(e).into()),
        Ok(md) if md.len() > MAX_FILE => Err(ConfigureError::Unsupported {
            path: path.to_owned(),
            message: format!("{} bytes is too large for a config file", md.len()),
        }),
        Ok(_) => Ok(Some(
            fs::read_to_string(path).map_err(IoError::at("reading", path))?,
        )),
    }
}

/// The first existing Kata configuration among `candidates`.
pub fn find_kata_config<P: AsRef<Path>>(candidates: &[P]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(|p| p.as_ref().to_owned())
        .find(|p| p.is_file())
}

/// Plans the change for `target`. `file` overrides the default path (for
/// podman: the hooks directory).
pub fn plan(target: Target, file: Option<&Path>, cfg: &Config) -> Result<Plan, ConfigureError> {
    let mut plan = Plan::default();
    match target {
        Target::Containerd => {
            let path = file.unwrap_or(Path::new(CONTAINERD_CONFIG));
            return plan_containerd(path, &ContainerdSetup::host(cfg));
        }
        Target::Docker => {
            let path = file.unwrap_or(Path::new(DOCKER_CONFIG)).to_owned();
            let old = read_optional(&path)?;
            let new = docker_edit(old.as_deref().unwrap_or(""), &path)?;
            plan.notes.push(
                "runtimeType in daemon.json needs Docker 23 or later; reload dockerd (systemctl reload docker)"
                    .into(),
            );
            plan.files.push(FileChange {
                path,
                old,
                new,
                base: None,
            });
        }
        Target::Podman => {
            let dir = file.unwrap_or(Path::new(HOOKS_DIR)).to_owned();
            for (name, text) in [
                ("kata-sriov-precreate.json", PRECREATE_HOOK),
                ("kata-sriov-poststop.json", POSTSTOP_HOOK),
            ] {
                let path = dir.join(name);
                let old = read_optional(&path)?;
                let new = hook_file(text, &cfg.hook.binary, &path)?;
                // Same JSON, other formatting: leave the admin's file alone.
                let same = old.as_deref().is_some_and(|o| {
                    serde_json::from_str::<serde_json::Value>(o).ok()
                        == serde_json::from_str::<serde_json::Value>(&new).ok()
                });
                let new = if same {
                    old.clone().unwrap_or(new)
                } else {
                    new
                };
                plan.files.push(FileChange {
                    path,
                    old,
                    new,
                    base: None,
                });
            }
            if cfg.hook.poststop == Some(false) {
                plan.notes.push(
                    "[hook] poststop = false in the kata-sriov config: the poststop hook file still releases VFs under podman"
                        .into(),
                );
            }
        }
        Target::Kata => {
            let paths: Vec<PathBuf> = KATA_CONFIG_PATHS.iter().map(PathBuf::from).collect();
            return plan_kata(&paths, file, cfg);
        }
    }
    Ok(plan)
}

/// Plans the Kata change. `candidates` are Kata's configuration paths in
/// its own order, the admin's (`/etc`) first. When only a shipped default
/// exists, the edited copy goes to the admin's path (as Kata's docs
/// advise: package upgrades replace the defaults), so the defaults stay
/// untouched. `file` names the file to edit instead.
pub fn plan_kata(
    candidates: &[PathBuf],
    file: Option<&Path>,
    cfg: &Config,
) -> Result<Plan, ConfigureError> {
    let mut plan = Plan::default();
    let not_found = |path: &Path| {
        ConfigureError::Io(IoError::new(
            "reading",
            path.to_owned(),
            io::Error::from(io::ErrorKind::NotFound),
        ))
    };
    let (path, base) = match file {
        Some(f) => (f.to_owned(), None),
        None => {
            let found = find_kata_config(candidates).ok_or_else(|| {
                let names: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                ConfigureError::NoKataConfig(names.join(", "))
            })?;
            match candidates.first() {
                Some(admin) if *admin != found => (admin.clone(), Some(found)),
                _ => (found, None),
            }
        }
    };
    let src = base.as_deref().unwrap_or(&path);
    let old = read_optional(src)?.ok_or_else(|| not_found(src))?;
    let want = KataWant::from_config(cfg);
    let (new, notes) = kata_edit(&old, &want, src)?;
    if let Some(b) = &base {
        if old != new {
            plan.notes.push(format!(
                "{} is created from the shipped {} (Kata reads it first; upgrades keep it)",
                path.display(),
                b.display()
            ));
        }
    }
    plan.notes.extend(notes);
    plan.files.push(FileChange {
        path,
        old: Some(old),
        new,
        base,
    });
    Ok(plan)
}

// ---------------------------------------------------------------- TOML

fn parse_toml(text: &str, path: &Path) -> Result<DocumentMut, ConfigureError> {
    text.parse::<DocumentMut>()
        .map_err(|e| ConfigureError::Parse {
            path: path.to_owned(),
            format: "TOML",
            message: e.to_string().trim_end().replace('\n', " "),
        })
}

/// The child table `key` of `parent`, created (implicit, so that only the
/// innermost header is written) when missing.
fn child<'a>(
    parent: &'a mut dyn TableLike,
    key: &str,
    path: &Path,
    at: &str,
) -> Result<&'a mut dyn TableLike, ConfigureError> {
    if parent.get(key).is_none() {
        let mut t = Table::new();
        t.set_implicit(true);
        parent.insert(key, Item::Table(t));
    }
    parent
        .get_mut(key)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| ConfigureError::Unsupported {
            path: path.to_owned(),
            message: format!("{at}.{key} is not a table"),
        })
}

/// Sets `key` to `v` unless it already has that value; keeps the old
/// value's comments. Returns whether it changed.
fn set_value(t: &mut dyn TableLike, key: &str, v: impl Into<Value>) -> bool {
    let mut v: Value = v.into();
    match t.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) if same_value(old, &v) => false,
        Some(old) => {
            *v.decor_mut() = old.decor().clone();
            *old = v;
            true
        }
        None => {
            t.insert(key, Item::Value(v));
            true
        }
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.value() == y.value(),
        (Value::Integer(x), Value::Integer(y)) => x.value() == y.value(),
        (Value::Boolean(x), Value::Boolean(y)) => x.value() == y.value(),
        _ => false,
    }
}

fn get_str<'a>(t: &'a dyn TableLike, key: &str) -> Option<&'a str> {
    t.get(key).and_then(Item::as_str)
}

fn get_int(t: &dyn TableLike, key: &str) -> Option<i64> {
    t.get(key).and_then(Item::as_integer)
}

/// Adds `item` to the string array `key` unless present. Returns whether
/// it changed; an existing non-array value is an error.
fn add_to_array(
    t: &mut dyn TableLike,
    key: &str,
    item: &str,
    path: &Path,
) -> Result<bool, ConfigureError> {
    match t.get_mut(key) {
        None => {
            let mut a = toml_edit::Array::new();
            a.push(item);
            t.insert(key, Item::Value(Value::Array(a)));
            Ok(true)
        }
        Some(i) => {
            let a = i
                .as_array_mut()
                .ok_or_else(|| ConfigureError::Unsupported {
                    path: path.to_owned(),
                    message: format!("{key} is not an array"),
                })?;
            if a.iter().any(|v| v.as_str() == Some(item)) {
                Ok(false)
            } else {
                a.push(item);
                Ok(true)
            }
        }
    }
}

/// The CRI plugin of a containerd config of this version.
pub fn containerd_cri_plugin(version: i64) -> Option<&'static str> {
    match version {
        2 => Some("io.containerd.grpc.v1.cri"),
        3 => Some("io.containerd.cri.v1.runtime"),
        _ => None,
    }
}

/// The `version` of a containerd config: 2 for an empty document.
fn containerd_version(doc: &DocumentMut, path: &Path) -> Result<i64, ConfigureError> {
    match doc.get("version") {
        Some(v) => v.as_integer().ok_or_else(|| ConfigureError::Unsupported {
            path: path.to_owned(),
            message: "version is not an integer".into(),
        }),
        None if doc.as_table().is_empty() => Ok(2),
        None => Err(ConfigureError::Unsupported {
            path: path.to_owned(),
            message: "no `version` key: a version 1 config (containerd 1.x). Add `version = 2` \
                      (see `containerd config migrate`) and run this again"
                .into(),
        }),
    }
}

/// The name of the config's CRI plugin table, from its version.
fn containerd_cri_of(doc: &DocumentMut, path: &Path) -> Result<&'static str, ConfigureError> {
    let version = containerd_version(doc, path)?;
    let plugin = containerd_cri_plugin(version).ok_or_else(|| ConfigureError::Unsupported {
        path: path.to_owned(),
        message: format!("containerd config version {version} is not supported (2 or 3)"),
    })?;
    Ok(plugin)
}

/// Adds the kata-sriov runtime to containerd config text.
pub fn containerd_edit(text: &str, path: &Path) -> Result<String, ConfigureError> {
    let mut doc = parse_toml(text, path)?;
    let plugin = containerd_cri_of(&doc, path)?;
    if doc.get("version").is_none() {
        doc.insert("version", toml_edit::value(2));
    }
    let mut at = String::from("plugins");
    let mut t = child(doc.as_table_mut(), "plugins", path, "")?;
    for key in [plugin, "containerd", "runtimes"] {
        t = child(t, key, path, &at)?;
        at = format!("{at}.{key}");
    }
    if t.get(RUNTIME_NAME).is_none() {
        t.insert(RUNTIME_NAME, Item::Table(Table::new()));
    }
    let rt = child(t, RUNTIME_NAME, path, &at)?;
    set_value(rt, "runtime_type", RUNTIME_TYPE);
    if rt.get("privileged_without_host_devices").is_none() {
        rt.insert("privileged_without_host_devices", toml_edit::value(true));
    }
    add_to_array(rt, "pod_annotations", ANNOTATIONS, path)?;
    add_to_array(rt, "container_annotations", ANNOTATIONS, path)?;
    Ok(doc.to_string())
}

// ------------------------------------------------- containerd: Kata twins

/// What `configure containerd` needs besides containerd's config: where
/// our shim is and which kata-sriov config gets `[shim.delegates]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdSetup {
    /// Our shim binary; the twins' symlinks go beside it.
    pub shim: PathBuf,
    /// The kata-sriov config the shim reads.
    pub kata_sriov_config: PathBuf,
    /// `$PATH`, to find a Kata shim named only by its runtime type.
    pub path: Option<std::ffi::OsString>,
    /// The installed containerd's (major, minor), when known: 2.x gets a
    /// drop-in (see [`plan_containerd`]); unknown or 1.x, the main file
    /// is edited.
    pub containerd: Option<(u32, u32)>,
}

/// Finds an executable on `path` (or an absolute path).
pub fn which(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let exec = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return exec(&p).then_some(p);
    }
    std::env::split_paths(path?)
        .map(|d| d.join(name))
        .find(|p| exec(p))
}

/// Where our shim is installed when it is not on `PATH`.
pub const SHIM_INSTALL_PATH: &str = "/usr/local/bin/containerd-shim-kata-sriov-v2";
/// Our shim's file name.
pub const SHIM_NAME: &str = "containerd-shim-kata-sriov-v2";

impl ContainerdSetup {
    /// This host: our shim on `$PATH` (else [`SHIM_INSTALL_PATH`]), the
    /// config `cfg` was read from (else where the shim looks for it).
    pub fn host(cfg: &Config) -> ContainerdSetup {
        let path = std::env::var_os("PATH");
        let shim =
            which(SHIM_NAME, path.as_deref()).unwrap_or_else(|| PathBuf::from(SHIM_INSTALL_PATH));
        let kata_sriov_config = cfg.source.clone().unwrap_or_else(|| Config::locate(None).0);
        let containerd = which("containerd", path.as_deref()).and_then(|c| {
            let out = std::process::Command::new(c)
                .arg("--version")
                .output()
                .ok()?;
            containerd_release(&String::from_utf8_lossy(&out.stdout))
        });
        ContainerdSetup {
            shim,
            kata_sriov_config,
            path,
            containerd,
        }
    }
}

/// (major, minor) from `containerd --version` output
/// (`containerd github.com/containerd/containerd/v2 2.1.9+unknown`,
/// `containerd containerd.io v1.7.27 05044ec...`).
pub fn containerd_release(version_output: &str) -> Option<(u32, u32)> {
    version_output.split_whitespace().skip(1).find_map(|tok| {
        let mut parts = tok.trim_start_matches('v').split('.');
        let major = parts.next()?.parse().ok()?;
        let minor_part = parts.next()?;
        let digits: String = minor_part
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((major, digits.parse().ok()?))
    })
}

/// The drop-in `configure containerd` writes for containerd 2.x, beside
/// the main config: `<dir>/conf.d/kata-sriov.toml`.
pub fn containerd_dropin(main: &Path) -> PathBuf {
    main.parent()
        .unwrap_or(Path::new("/"))
        .join("conf.d")
        .join("kata-sriov.toml")
}

/// A Kata runtime handler in containerd's config.
#[derive(Debug, Clone)]
pub struct KataHandler {
    /// The CRI runtime handler name (`kata-qemu-runtime-rs`).
    pub name: String,
    /// Its shim, absolute (its `runtime_path`, else its runtime type's
    /// binary found on `PATH`).
    pub shim: PathBuf,
    /// `options.ConfigPath`.
    pub config_path: Option<PathBuf>,
    /// Which Kata runtime, from the shim path and the ConfigPath's content.
    pub flavor: KataFlavor,
    /// Its table, without comments (the twin starts from a copy).
    pub table: Table,
    /// The file it is in.
    pub file: PathBuf,
}

/// Our twin of Kata handler `name`: `kata-sriov-<name without "kata-">`.
pub fn twin_name(name: &str) -> String {
    format!(
        "{RUNTIME_NAME}-{}",
        name.strip_prefix("kata-").unwrap_or(name)
    )
}

/// containerd's binary for a runtime type: `io.containerd.<x>.<v>` runs
/// `containerd-shim-<x>-<v>`.
fn shim_binary_name(runtime_type: &str) -> Option<String> {
    let parts: Vec<&str> = runtime_type.split('.').collect();
    match parts.as_slice() {
        [.., name, version] if parts.len() >= 3 && !name.is_empty() => {
            Some(format!("containerd-shim-{name}-{version}"))
        }
        _ => None,
    }
}

/// Which Kata runtime a handler runs: runtime-rs when its shim lives under
/// a `runtime-rs` directory (kata-deploy's `/opt/kata/runtime-rs/bin`) or
/// its configuration has `[runtime] name`; else the Go runtime.
pub fn handler_flavor(shim: &Path, config_path: Option<&Path>) -> KataFlavor {
    let by_path = shim.components().any(|c| c.as_os_str() == "runtime-rs");
    let by_config = config_path
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|t| t.parse::<DocumentMut>().ok())
        .map(|d| kata_flavor(&d));
    if by_path || by_config == Some(KataFlavor::RuntimeRs) {
        KataFlavor::RuntimeRs
    } else {
        KataFlavor::Go
    }
}

/// The CRI runtimes table of a containerd config, if any.
fn cri_runtimes<'a>(doc: &'a DocumentMut, plugin: &str) -> Option<&'a dyn TableLike> {
    doc.get("plugins")?
        .get(plugin)?
        .get("containerd")?
        .get("runtimes")?
        .as_table_like()
}

/// Kata's handlers in containerd config text (every runtime whose shim is
/// `containerd-shim-kata*`, ours excepted), and notes on those that cannot
/// be fronted (shim not found).
pub fn kata_handlers(
    text: &str,
    path: &Path,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<(Vec<KataHandler>, Vec<String>), ConfigureError> {
    let doc = parse_toml(text, path)?;
    let version = containerd_version(&doc, path)?;
    let mut found = Vec::new();
    let mut notes = Vec::new();
    let Some(plugin) = containerd_cri_plugin(version) else {
        return Ok((found, notes));
    };
    let Some(runtimes) = cri_runtimes(&doc, plugin) else {
        return Ok((found, notes));
    };
    for (name, rt) in runtimes.iter() {
        let Some(rt) = rt.as_table_like() else {
            continue;
        };
        let runtime_type = get_str(rt, "runtime_type").unwrap_or("");
        let runtime_path = get_str(rt, "runtime_path").filter(|p| !p.is_empty());
        let binary = match runtime_path {
            Some(p) => Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            None => shim_binary_name(runtime_type),
        };
        let Some(binary) = binary else { continue };
        let ours = name == RUNTIME_NAME
            || name.starts_with(&format!("{RUNTIME_NAME}-"))
            || binary.starts_with("containerd-shim-kata-sriov");
        if ours || !binary.starts_with("containerd-shim-kata") {
            continue;
        }
        let shim = match runtime_path {
            Some(p) if Path::new(p).is_absolute() => Some(PathBuf::from(p)),
            Some(_) => None,
            None => which(&binary, path_var),
        };
        let Some(shim) = shim else {
            notes.push(format!(
                "runtime {name}: its shim {binary} is neither an absolute runtime_path nor on PATH; no kata-sriov twin for it"
            ));
            continue;
        };
        let config_path = rt
            .get("options")
            .and_then(|o| o.get("ConfigPath"))
            .and_then(Item::as_str)
            .map(PathBuf::from);
        let flavor = handler_flavor(&shim, config_path.as_deref());
        found.push(KataHandler {
            name: name.to_owned(),
            shim,
            config_path,
            flavor,
            table: fresh_copy(rt),
            file: path.to_owned(),
        });
    }
    Ok((found, notes))
}

/// One of our runtime handlers in containerd's config (`kata-sriov` or a
/// twin `kata-sriov-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurHandler {
    pub name: String,
    /// `options.ConfigPath`: the Kata configuration its delegate reads.
    pub config_path: Option<PathBuf>,
}

/// Our runtime handlers in containerd config text.
pub fn our_handlers(text: &str, path: &Path) -> Result<Vec<OurHandler>, ConfigureError> {
    let doc = parse_toml(text, path)?;
    let version = containerd_version(&doc, path)?;
    let Some(runtimes) = containerd_cri_plugin(version).and_then(|p| cri_runtimes(&doc, p)) else {
        return Ok(Vec::new());
    };
    Ok(runtimes
        .iter()
        .filter(|(name, _)| *name == RUNTIME_NAME || name.starts_with(&format!("{RUNTIME_NAME}-")))
        .map(|(name, rt)| OurHandler {
            name: name.to_owned(),
            config_path: rt
                .get("options")
                .and_then(|o| o.get("ConfigPath"))
                .and_then(Item::as_str)
                .map(PathBuf::from),
        })
        .collect())
}

/// A copy of a runtime table without its comments and layout.
fn fresh_copy(t: &dyn TableLike) -> Table {
    let mut out = Table::new();
    for (k, item) in t.iter() {
        match item {
            Item::Value(v) => {
                let mut v = v.clone();
                v.decor_mut().clear();
                out.insert(k, Item::Value(v));
            }
            Item::Table(sub) => {
                out.insert(k, Item::Table(fresh_copy(sub)));
            }
            Item::ArrayOfTables(a) => {
                out.insert(k, Item::ArrayOfTables(a.clone()));
            }
            Item::None => {}
        }
    }
    out
}

/// The twin's binary: a symlink to our shim beside it.
fn twin_binary(setup: &ContainerdSetup, twin: &str) -> PathBuf {
    setup
        .shim
        .with_file_name(format!("containerd-shim-{twin}-v2"))
}

/// Adds to containerd config text a twin of each Kata handler in front of
/// it: the handler's table (snapshotter, options...), then
/// `runtime_type = "io.containerd.<twin>.v2"`, `runtime_path` our shim's
/// symlink for the twin, the handler's `ConfigPath`, our annotations.
fn containerd_twins(
    text: &str,
    path: &Path,
    handlers: &[KataHandler],
    setup: &ContainerdSetup,
) -> Result<String, ConfigureError> {
    if handlers.is_empty() {
        return Ok(text.to_owned());
    }
    let mut doc = parse_toml(text, path)?;
    let plugin = containerd_cri_of(&doc, path)?;
    let mut at = String::from("plugins");
    let mut t = child(doc.as_table_mut(), "plugins", path, "")?;
    for key in [plugin, "containerd", "runtimes"] {
        t = child(t, key, path, &at)?;
        at = format!("{at}.{key}");
    }
    for h in handlers {
        let twin = twin_name(&h.name);
        if t.get(&twin).is_none() {
            t.insert(&twin, Item::Table(h.table.clone()));
        }
        let rt = child(t, &twin, path, &at)?;
        set_value(rt, "runtime_type", format!("io.containerd.{twin}.v2"));
        let bin = twin_binary(setup, &twin);
        set_value(rt, "runtime_path", bin.display().to_string());
        if rt.get("privileged_without_host_devices").is_none() {
            rt.insert("privileged_without_host_devices", toml_edit::value(true));
        }
        add_to_array(rt, "pod_annotations", ANNOTATIONS, path)?;
        add_to_array(rt, "container_annotations", ANNOTATIONS, path)?;
        if let Some(c) = &h.config_path {
            let opts = child(rt, "options", path, &format!("{at}.{twin}"))?;
            set_value(opts, "ConfigPath", c.display().to_string());
        }
    }
    Ok(doc.to_string())
}

/// Adds `[shim.delegates] <twin> = "<Kata shim>"` to kata-sriov config text.
fn delegates_edit(
    text: &str,
    path: &Path,
    handlers: &[KataHandler],
) -> Result<String, ConfigureError> {
    let mut doc = parse_toml(text, path)?;
    {
        let shim = child(doc.as_table_mut(), "shim", path, "")?;
        let delegates = child(shim, "delegates", path, "shim")?;
        for h in handlers {
            set_value(delegates, &twin_name(&h.name), h.shim.display().to_string());
        }
    }
    let new = doc.to_string();
    Config::parse(&new, path).map_err(|e| ConfigureError::Unsupported {
        path: path.to_owned(),
        message: format!("the edited kata-sriov config does not load: {e}"),
    })?;
    Ok(new)
}

/// The symlink for `twin`, refused when something else is at its path.
fn twin_link(setup: &ContainerdSetup, twin: &str) -> Result<LinkChange, ConfigureError> {
    let path = twin_binary(setup, twin);
    let target = PathBuf::from(setup.shim.file_name().unwrap_or(SHIM_NAME.as_ref()));
    let exists = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(IoError::at("inspecting", &path)(e).into()),
        Ok(md) => {
            let same = md.file_type().is_symlink()
                && (fs::read_link(&path).ok().as_deref() == Some(target.as_path())
                    || matches!(
                        (fs::canonicalize(&path), fs::canonicalize(&setup.shim)),
                        (Ok(a), Ok(b)) if a == b
                    ));
            if !same {
                return Err(ConfigureError::Unsupported {
                    path,
                    message: format!(
                        "exists and is not a symlink to {}; remove it, or move it away, and run this again",
                        setup.shim.display()
                    ),
                });
            }
            true
        }
    };
    Ok(LinkChange {
        path,
        target,
        exists,
    })
}

/// The files containerd config text imports (`imports`, relative to the
/// file's directory, `*` patterns in the last component matched here).
fn imported_files(text: &str, path: &Path) -> Result<Vec<PathBuf>, ConfigureError> {
    let doc = parse_toml(text, path)?;
    let Some(list) = doc.get("imports").and_then(Item::as_array) else {
        return Ok(Vec::new());
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for entry in list.iter().filter_map(|v| v.as_str()) {
        let p = dir.join(entry);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.split_once('*') {
            None => out.push(p),
            Some((pre, suf)) => {
                let parent = p.parent().unwrap_or(dir);
                let mut matched: Vec<PathBuf> = fs::read_dir(parent)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|c| {
                        c.file_name().is_some_and(|n| {
                            let n = n.to_string_lossy();
                            n.len() >= pre.len() + suf.len()
                                && n.starts_with(pre)
                                && n.ends_with(suf)
                        })
                    })
                    .collect();
                matched.sort();
                out.extend(matched);
            }
        }
    }
    Ok(out)
}

/// Whether an `imports` entry of a containerd config names `file` (itself,
/// or a `*` pattern in the last component matching it), existing or not.
fn imports_cover(doc: &DocumentMut, path: &Path, file: &Path) -> bool {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let Some(list) = doc.get("imports").and_then(Item::as_array) else {
        return false;
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    list.iter().filter_map(|v| v.as_str()).any(|entry| {
        let p = dir.join(entry);
        let pattern = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match pattern.split_once('*') {
            None => p == file,
            Some((pre, suf)) => {
                p.parent() == file.parent()
                    && name.len() >= pre.len() + suf.len()
                    && name.starts_with(pre)
                    && name.ends_with(suf)
            }
        }
    })
}

/// Plans `configure containerd`: the `kata-sriov` runtime, and for each
/// Kata handler found a twin (see [`containerd_twins`]), its delegate in
/// the kata-sriov config and its symlink beside our shim. Everything is
/// checked before anything is written.
pub fn plan_containerd(path: &Path, setup: &ContainerdSetup) -> Result<Plan, ConfigureError> {
    let mut plan = Plan::default();
    let old = read_optional(path)?;
    let text = old.as_deref().unwrap_or("");
    let with_runtime = containerd_edit(text, path)?;
    let (mut handlers, notes) = kata_handlers(text, path, setup.path.as_deref())?;
    plan.notes.extend(notes);
    // kata-deploy on containerd 2.x writes its handlers into a drop-in
    // that this file imports; containerd 2.x merges imported plugin tables
    // into this file's, so the twins can live here. containerd 1.x lets an
    // imported CRI section replace this file's: there they are only named.
    let version = containerd_version(&parse_toml(text, path)?, path)?;
    for file in imported_files(text, path)? {
        let Some(t) = read_optional(&file)? else {
            continue;
        };
        let (found, notes) = kata_handlers(&t, &file, setup.path.as_deref())?;
        plan.notes.extend(notes);
        for h in found {
            if handlers.iter().any(|k| k.name == h.name) {
                continue;
            }
            if version >= 3 {
                handlers.push(h);
            } else {
                plan.notes.push(format!(
                    "runtime {} is in the imported {}: containerd 1.x lets an imported CRI section replace {}'s, so put its kata-sriov twin there (kata-sriov configure containerd --file {})",
                    h.name,
                    file.display(),
                    path.display(),
                    file.display()
                ));
            }
        }
    }
    if containerd_cri_disabled(text) {
        plan.notes.push(format!(
            "{} disables the CRI plugin (disabled_plugins): the runtime entry takes effect only once CRI is enabled",
            path.display()
        ));
    }
    match setup.containerd {
        Some(release) if release >= (2, 0) => {
            plan.files.extend(containerd_2_files(
                path, old, version, release, &handlers, setup,
            )?);
            plan.notes.push(format!(
                "containerd {}.{}: the runtime entries are in the drop-in {} (version = {version}, as the main config's)",
                release.0,
                release.1,
                containerd_dropin(path).display()
            ));
        }
        _ => {
            let new = containerd_twins(&with_runtime, path, &handlers, setup)?;
            plan.files.push(FileChange {
                path: path.to_owned(),
                old,
                new,
                base: None,
            });
        }
    }
    if !handlers.is_empty() {
        let ks = &setup.kata_sriov_config;
        let ks_old = read_optional(ks)?;
        let ks_new = delegates_edit(ks_old.as_deref().unwrap_or(""), ks, &handlers)?;
        plan.files.push(FileChange {
            path: ks.clone(),
            old: ks_old,
            new: ks_new,
            base: None,
        });
        for h in &handlers {
            let twin = twin_name(&h.name);
            plan.links.push(twin_link(setup, &twin)?);
            let flavor = match h.flavor {
                KataFlavor::Go => "Go runtime",
                KataFlavor::RuntimeRs => "runtime-rs",
            };
            let conf = h
                .config_path
                .as_ref()
                .map(|c| format!(", ConfigPath {}", c.display()))
                .unwrap_or_default();
            plan.notes.push(format!(
                "runtime handler {twin} (use it as a RuntimeClass's handler): kata-sriov in front of {} ({flavor}, {}{conf})",
                h.name,
                h.shim.display()
            ));
        }
        if !setup.shim.is_file() {
            plan.notes.push(format!(
                "{} is not installed yet: the twins' symlinks point at it",
                setup.shim.display()
            ));
        }
    }
    plan.notes
        .push("restart containerd to load the runtime (systemctl restart containerd)".into());
    Ok(plan)
}

/// containerd 2.x: the runtime entries (and twins) go to the drop-in
/// [`containerd_dropin`], with the main config's `version` (a newer one
/// stops containerd from starting). containerd 2.2+ imports
/// `conf.d/*.toml` by default; before 2.2, or when the main config sets
/// its own `imports`, the main config gets the drop-in in `imports` unless
/// an entry there already matches it.
fn containerd_2_files(
    path: &Path,
    old: Option<String>,
    version: i64,
    release: (u32, u32),
    handlers: &[KataHandler],
    setup: &ContainerdSetup,
) -> Result<Vec<FileChange>, ConfigureError> {
    let dropin = containerd_dropin(path);
    let d_old = read_optional(&dropin)?;
    let mut d_doc = parse_toml(d_old.as_deref().unwrap_or(""), &dropin)?;
    set_value(d_doc.as_table_mut(), "version", version);
    let d_new = containerd_twins(
        &containerd_edit(&d_doc.to_string(), &dropin)?,
        &dropin,
        handlers,
        setup,
    )?;
    let text = old.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, path)?;
    let imported = imports_cover(&doc, path, &dropin);
    let new = if !imported && (release < (2, 2) || doc.get("imports").is_some()) {
        add_to_array(
            doc.as_table_mut(),
            "imports",
            &dropin.display().to_string(),
            path,
        )?;
        doc.to_string()
    } else {
        text.to_owned()
    };
    Ok(vec![
        FileChange {
            path: path.to_owned(),
            old,
            new,
            base: None,
        },
        FileChange {
            path: dropin,
            old: d_old,
            new: d_new,
            base: None,
        },
    ])
}

/// Whether a containerd config disables the CRI plugin (Docker's
/// containerd.io package ships `disabled_plugins = ["cri"]`): then only
/// `ctr run --runtime io.containerd.kata-sriov.v2` uses the runtime, never
/// the runtime entry.
pub fn containerd_cri_disabled(text: &str) -> bool {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return false;
    };
    doc.get("disabled_plugins")
        .and_then(Item::as_array)
        .is_some_and(|a| {
            a.iter().any(|v| {
                matches!(
                    v.as_str(),
                    Some("cri" | "io.containerd.grpc.v1.cri" | "io.containerd.cri.v1.runtime")
                )
            })
        })
}

/// Whether containerd config text has the kata-sriov runtime: Ok(None)
/// when yes, Ok(Some(why not)) when not, Err on a parse error.
pub fn containerd_has_runtime(text: &str, path: &Path) -> Result<Option<String>, ConfigureError> {
    let doc = parse_toml(text, path)?;
    let version = containerd_version(&doc, path)?;
    let Some(plugin) = containerd_cri_plugin(version) else {
        return Ok(Some(format!("config version {version} is not supported")));
    };
    let rt = doc
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("containerd"))
        .and_then(|p| p.get("runtimes"))
        .and_then(|p| p.get(RUNTIME_NAME));
    let header = format!("plugins.\"{plugin}\".containerd.runtimes.{RUNTIME_NAME}");
    Ok(
        match rt
            .and_then(|r| r.get("runtime_type"))
            .and_then(Item::as_str)
        {
            None => Some(format!("no {header} with a runtime_type")),
            Some(RUNTIME_TYPE) => {
                let passes = rt
                    .and_then(|r| r.get("pod_annotations"))
                    .and_then(Item::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(ANNOTATIONS)));
                (!passes).then(|| {
                    format!("{header}.pod_annotations lacks {ANNOTATIONS:?}: a pod's request never reaches the shim")
                })
            }
            Some(other) => Some(format!(
                "{header}.runtime_type is {other:?}, not {RUNTIME_TYPE:?}"
            )),
        },
    )
}

// ---------------------------------------------------------------- JSON

/// Adds the kata-sriov runtime to Docker's daemon.json text.
pub fn docker_edit(text: &str, path: &Path) -> Result<String, ConfigureError> {
    let parse_err = |message: String| ConfigureError::Parse {
        path: path.to_owned(),
        format: "JSON",
        message,
    };
    let mut root: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?
    };
    let obj = root
        .as_object_mut()
        .ok_or_else(|| parse_err("the top level is not an object".into()))?;
    let runtimes = obj
        .entry("runtimes")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()))
        .as_object_mut()
        .ok_or_else(|| parse_err("\"runtimes\" is not an object".into()))?;
    let want = serde_json::json!({ "runtimeType": RUNTIME_TYPE });
    let has = runtimes
        .get(RUNTIME_NAME)
        .and_then(|r| r.get("runtimeType"))
        .and_then(|t| t.as_str())
        == Some(RUNTIME_TYPE)
        && runtimes
            .get(RUNTIME_NAME)
            .is_some_and(|r| r.get("path").is_none());
    if has {
        return Ok(text.to_owned());
    }
    runtimes.insert(RUNTIME_NAME.to_owned(), want);
    let mut out = serde_json::to_string_pretty(&root).map_err(|e| parse_err(e.to_string()))?;
    out.push('\n');
    Ok(out)
}

/// An embedded hooks.d file with `hook.path` set to `binary`.
fn hook_file(template: &str, binary: &Path, path: &Path) -> Result<String, ConfigureError> {
    let mut v: serde_json::Value =
        serde_json::from_str(template).map_err(|e| ConfigureError::Parse {
            path: path.to_owned(),
            format: "JSON (built-in hook template)",
            message: e.to_string(),
        })?;
    if let Some(h) = v.get_mut("hook").and_then(|h| h.as_object_mut()) {
        h.insert(
            "path".into(),
            serde_json::Value::String(binary.display().to_string()),
        );
    }
    let mut out = serde_json::to_string_pretty(&v).unwrap_or_else(|_| template.to_owned());
    out.push('\n');
    Ok(out)
}

// ---------------------------------------------------------------- Kata

/// Which Kata runtime a configuration file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KataFlavor {
    /// The Go runtime (`containerd-shim-kata-v2` from `src/runtime`).
    Go,
    /// runtime-rs: its configuration has `[runtime] name`.
    RuntimeRs,
}

/// What kata-sriov's pools need from Kata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KataWant {
    /// Some pool uses the guest helper (or no pool says otherwise).
    pub helper: bool,
    /// Some pool uses Kata's DAN (hot plug).
    pub dan: bool,
    /// VFs that may go to one sandbox: the root ports hot plug needs.
    pub vf_count: u32,
    /// kata-sriov's DAN directory.
    pub dan_dir: PathBuf,
    /// The shim adds a host hook (`[hook] poststop = true`).
    pub host_hook: bool,
}

impl KataWant {
    pub fn from_config(cfg: &Config) -> KataWant {
        let mut helper = cfg.pools.is_empty();
        let mut dan = false;
        let mut vf_count = 0u32;
        for p in &cfg.pools {
            match cfg.guest_mode(p) {
                GuestMode::Helper => helper = true,
                GuestMode::Dan => dan = true,
            }
            let per_pf = p.num_vfs.unwrap_or(1);
            vf_count = vf_count.saturating_add(per_pf.saturating_mul(p.pfs.len() as u32));
        }
        KataWant {
            helper,
            dan,
            vf_count: vf_count.max(1),
            dan_dir: cfg.dan.dir.clone(),
            host_hook: cfg.hook.shim_poststop(),
        }
    }
}

/// The hypervisor table's name in a Kata config: `qemu` when there, else
/// the first `[hypervisor.*]`.
pub fn kata_hypervisor(doc: &DocumentMut) -> Option<String> {
    let hv = doc.get("hypervisor")?.as_table_like()?;
    if hv.get("qemu").is_some() {
        return Some("qemu".into());
    }
    hv.iter().next().map(|(k, _)| k.to_owned())
}

pub fn kata_flavor(doc: &DocumentMut) -> KataFlavor {
    if doc
        .get("runtime")
        .and_then(|r| r.get("name"))
        .and_then(Item::as_str)
        .is_some()
    {
        KataFlavor::RuntimeRs
    } else {
        KataFlavor::Go
    }
}

/// Applies [`KataWant`] to Kata configuration text. Returns the new text
/// and notes for the admin.
pub fn kata_edit(
    text: &str,
    want: &KataWant,
    path: &Path,
) -> Result<(String, Vec<String>), ConfigureError> {
    let mut doc = parse_toml(text, path)?;
    let flavor = kata_flavor(&doc);
    let hv_name = kata_hypervisor(&doc).unwrap_or_else(|| "qemu".into());
    let mut notes = Vec::new();
    let hv_at = format!("hypervisor.{hv_name}");
    {
        let hvs = child(doc.as_table_mut(), "hypervisor", path, "")?;
        if hvs.get(&hv_name).is_none() {
            hvs.insert(&hv_name, Item::Table(Table::new()));
        }
        let hv = child(hvs, &hv_name, path, "hypervisor")?;
        let no_port =
            |hv: &dyn TableLike, key: &str| get_str(hv, key).is_none_or(|v| v == "no-port");
        match (flavor, want.dan) {
            (KataFlavor::Go, false) => {
                set_value(hv, "cold_plug_vfio", "root-port");
                if !no_port(hv, "hot_plug_vfio") {
                    set_value(hv, "hot_plug_vfio", "no-port");
                    notes.push(format!(
                        "{hv_at}: hot_plug_vfio set to \"no-port\": the Go runtime refuses cold and hot plug together"
                    ));
                }
            }
            (KataFlavor::Go, true) => {
                set_value(hv, "hot_plug_vfio", "root-port");
                if !no_port(hv, "cold_plug_vfio") {
                    set_value(hv, "cold_plug_vfio", "no-port");
                }
                if want.helper {
                    notes.push(
                        "guest-helper and DAN pools together: VFs are hot-plugged for both".into(),
                    );
                }
            }
            (KataFlavor::RuntimeRs, _) => {
                // The sandbox's /dev/vfio nodes are cold-plugged at boot
                // (sandbox.rs prepare_coldplug_raw_vfio_devices).
                set_value(hv, "cold_plug_vfio", "root-port");
                if want.dan {
                    notes.push(
                        "runtime-rs has no VFIO DAN device: guest = \"dan\" pools need the Go runtime"
                            .into(),
                    );
                }
            }
        }
        if want.dan || flavor == KataFlavor::RuntimeRs {
            let cur = get_int(hv, "pcie_root_port").unwrap_or(0);
            if cur < i64::from(want.vf_count) {
                set_value(hv, "pcie_root_port", i64::from(want.vf_count));
            }
        }
        if want.helper && get_str(hv, "guest_hook_path").is_none_or(str::is_empty) {
            set_value(hv, "guest_hook_path", GUEST_HOOK_PATH);
            notes.push(format!(
                "guest_hook_path = {GUEST_HOOK_PATH:?}: the guest image must have kata-sriov-guest in {GUEST_HOOK_PATH}/prestart/"
            ));
        }
    }
    if want.dan {
        let dir = want.dan_dir.display().to_string();
        let rt = child(doc.as_table_mut(), "runtime", path, "")?;
        let cur = get_str(rt, "dan_conf").unwrap_or(KATA_DAN_DIR).to_owned();
        if cur != dir {
            set_value(rt, "dan_conf", dir.as_str());
        }
    }
    if flavor == KataFlavor::RuntimeRs && want.helper && want.host_hook {
        notes.push(
            "runtime-rs drops guest hooks when the spec has a host hook: set [hook] poststop = false (the default) in the kata-sriov config"
                .into(),
        );
    }
    Ok((doc.to_string(), notes))
}

// ---------------------------------------------------------------- diff

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Del,
    Add,
}

/// A line diff (longest common subsequence on the part between the common
/// prefix and suffix; a middle too large for that becomes delete + add).
fn diff_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let am = &a[pre..a.len() - suf];
    let bm = &b[pre..b.len() - suf];
    let mut ops: Vec<(Op, &str)> = a[..pre].iter().map(|l| (Op::Same, *l)).collect();
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) > 4_000_000 {
        ops.extend(am.iter().map(|l| (Op::Del, *l)));
        ops.extend(bm.iter().map(|l| (Op::Add, *l)));
    } else {
        // lcs[i][j]: LCS length of am[i..] and bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push((Op::Same, am[i]));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                // Deletions before additions, as diff(1) prints them.
                ops.push((Op::Del, am[i]));
                i += 1;
            } else {
                ops.push((Op::Add, bm[j]));
                j += 1;
            }
        }
    }
    ops.extend(a[a.len() - suf..].iter().map(|l| (Op::Same, *l)));
    ops
}

fn hunk_range(start: usize, len: usize) -> String {
    // 1-based start; an empty range names the line before it.
    let s = if len == 0 { start } else { start + 1 };
    if len == 1 {
        format!("{s}")
    } else {
        format!("{s},{len}")
    }
}

/// A unified diff (3 lines of context) of `old` and `new`, empty when they
/// are equal.
pub fn unified_diff(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    const CONTEXT: usize = 3;
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = diff_ops(&a, &b);
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (o, _))| *o != Op::Same)
        .map(|(i, _)| i)
        .collect();
    // Line numbers before each op.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut ai, mut bi) = (0usize, 0usize);
    for (o, _) in &ops {
        pos.push((ai, bi));
        match o {
            Op::Same => {
                ai += 1;
                bi += 1;
            }
            Op::Del => ai += 1,
            Op::Add => bi += 1,
        }
    }
    pos.push((ai, bi));
    let mut k = 0;
    while k < changes.len() {
        let start = changes[k].saturating_sub(CONTEXT);
        let mut last = changes[k];
        while k + 1 < changes.len() && changes[k + 1] <= last + 2 * CONTEXT + 1 {
            k += 1;
            last = changes[k];
        }
        let end = (last + 1 + CONTEXT).min(ops.len());
        let (a0, b0) = pos[start];
        let (a1, b1) = pos[end];
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            hunk_range(a0, a1 - a0),
            hunk_range(b0, b1 - b0)
        ));
        for (o, l) in &ops[start..end] {
            let c = match o {
                Op::Same => ' ',
                Op::Del => '-',
                Op::Add => '+',
            };
            out.push(c);
            out.push_str(l);
            out.push('\n');
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_of_equal_texts_is_empty_and_hunks_are_numbered() {
        assert_eq!(unified_diff("a", "b", "x\ny\n", "x\ny\n"), "");
        let old: String = (1..=20).map(|i| format!("l{i}\n")).collect();
        let new = old.replace("l10\n", "l10\nnew\n").replace("l2\n", "");
        let d = unified_diff("a", "b", &old, &new);
        assert!(d.starts_with("--- a\n+++ b\n"), "{d}");
        assert!(d.contains("@@ -1,5 +1,4 @@\n l1\n-l2\n l3\n"), "{d}");
        assert!(
            d.contains("@@ -8,6 +7,7 @@\n l8\n l9\n l10\n+new\n l11\n"),
            "{d}"
        );
        // The same hunks as GNU diff -u.
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        let d = unified_diff("/dev/null", "f", "", "a\nb\n");
        assert!(d.contains("@@ -0,0 +1,2 @@\n+a\n+b\n"), "{d}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!("kata".parse::<Target>().unwrap(), Target::Kata);
        assert_eq!("cri-o".parse::<Target>().unwrap(), Target::Podman);
        assert!("lxc".parse::<Target>().is_err());
    }
}
