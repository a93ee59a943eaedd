//! `kata-sriov check`: is this host ready? One line per check, each `ok`,
//! `warn` or `fail`, and for every warning or failure the fix.
//!
//! Reads (every path a field of [`CheckEnv`], so tests point it at temp
//! files): the kernel command line (`/proc/cmdline`), the kernel release
//! (`/proc/sys/kernel/osrelease`) and its module tree (`/lib/modules/<release>`),
//! under the sysfs root `kernel/iommu_groups/`, `bus/pci/drivers/vfio-pci`,
//! the pools' PFs and VFs (through [`crate::kernel::sysfs`] and [`crate::kernel::iommu`]),
//! the state directory's metadata, `$PATH`, Kata's `configuration.toml`
//! and containerd's `config.toml`. Writes nothing.
//!
//! JSON (`check --json`), stable:
//! ```json
//! {"version": 1, "ok": 7, "warn": 1, "fail": 1,
//!  "checks": [{"id": "iommu.cmdline", "status": "ok",
//!              "message": "intel_iommu=on is on the kernel command line",
//!              "fix": null}]}
//! ```
//! `status` is `ok`, `warn` or `fail`; `fix` is a string for `warn` and
//! `fail`, else null. Check ids: `iommu.cmdline`, `iommu.groups`,
//! `vfio.driver`, `pool.<pool>.pf.<pf>`, `pool.<pool>.vfs.<pf>`,
//! `pool.<pool>.iommu.<pf>`, `state_dir`, `shim.delegate`, `shim.binary`,
//! `kata.config`, `kata.plug` (cold/hot plug and root ports),
//! `kata.guest_hook_path`, `kata.dan_conf`, `kata.host_hooks`
//! (runtime-rs), `containerd.runtime`, and per kata-sriov runtime handler
//! in containerd's config `handler.<name>` (which Kata runtime it fronts,
//! from its delegate's path and its `ConfigPath`) with the Kata checks of
//! its `ConfigPath` for that runtime, `handler.<name>.plug` etc. Checks that do not apply (no pool
//! of that kind, no Kata config) are left out. The command exits non-zero
//! when any check fails.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::{DocumentMut, Item};

use crate::admin::configure::{self, KataFlavor};
use crate::error::{chain, printable};
use crate::kernel::iommu::{self, IommuError};
use crate::kernel::sysfs::{SysfsError, SysfsRoot};
use crate::kernel::vfio::VFIO_PCI;
use crate::policy::config::{Config, GuestMode, Mode};

/// The version of the JSON report's layout.
pub const REPORT_VERSION: u32 = 1;
/// The shim binary containerd runs for `io.containerd.kata-sriov.v2`.
pub const SHIM_BINARY: &str = "containerd-shim-kata-sriov-v2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub id: String,
    pub status: Status,
    pub message: String,
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub version: u32,
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub checks: Vec<CheckResult>,
}

impl Report {
    fn new(checks: Vec<CheckResult>) -> Report {
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        Report {
            version: REPORT_VERSION,
            ok: count(Status::Ok),
            warn: count(Status::Warn),
            fail: count(Status::Fail),
            checks,
        }
    }

    pub fn failed(&self) -> bool {
        self.fail > 0
    }

    pub fn get(&self, id: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The text report: one line per check, its fix indented below it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {}: {}\n",
                c.status.as_str(),
                c.id,
                c.message
            ));
            if let Some(f) = &c.fix {
                out.push_str(&format!("      fix: {f}\n"));
            }
        }
        out.push_str(&format!(
            "{} ok, {} warning(s), {} failure(s)\n",
            self.ok, self.warn, self.fail
        ));
        out
    }
}

/// Where the checks look, besides the config's own paths.
#[derive(Debug, Clone)]
pub struct CheckEnv {
    /// The kernel command line.
    pub cmdline: PathBuf,
    /// `/lib/modules/<running kernel>`.
    pub modules_dir: PathBuf,
    /// `$PATH` to find the shims on.
    pub path: Option<OsString>,
    /// Kata configurations, the first existing one is checked.
    pub kata_configs: Vec<PathBuf>,
    pub containerd_config: PathBuf,
}

impl CheckEnv {
    /// The running host's paths.
    pub fn host() -> CheckEnv {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        CheckEnv {
            cmdline: PathBuf::from("/proc/cmdline"),
            modules_dir: Path::new("/lib/modules").join(release),
            path: std::env::var_os("PATH"),
            kata_configs: configure::KATA_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
            containerd_config: PathBuf::from(configure::CONTAINERD_CONFIG),
        }
    }
}

fn ok(id: impl Into<String>, message: impl Into<String>) -> CheckResult {
    CheckResult {
        id: id.into(),
        status: Status::Ok,
        message: message.into(),
        fix: None,
    }
}

fn warn(id: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> CheckResult {
    CheckResult {
        id: id.into(),
        status: Status::Warn,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn fail(id: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> CheckResult {
    CheckResult {
        id: id.into(),
        status: Status::Fail,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

const GRUB_FIX: &str = "add intel_iommu=on (Intel) or amd_iommu=on (AMD) and iommu=pt to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, enable VT-d/AMD-Vi in the firmware, and reboot";

/// Runs every check.
pub fn run(cfg: &Config, env: &CheckEnv) -> Report {
    let root = SysfsRoot::new(&cfg.sysfs_root);
    let mut out = Vec::new();
    let vfio_pools = cfg.pools.iter().any(|p| p.mode == Mode::Vfio);
    out.push(check_cmdline(&env.cmdline, iommu::enabled(&root)));
    out.push(check_groups(&root));
    out.push(check_vfio(&root, &env.modules_dir, vfio_pools));
    for pool in &cfg.pools {
        for pf in &pool.pfs {
            out.extend(check_pf(&root, pool, pf));
        }
    }
    out.push(check_state_dir(&cfg.state_dir));
    let mut delegate = check_on_path(
        "shim.delegate",
        &cfg.shim.delegate,
        env.path.as_deref(),
        "install Kata Containers (containerd-shim-kata-v2) or set [shim] delegate in the kata-sriov config",
    );
    if delegate.status == Status::Fail && !cfg.shim.delegates.is_empty() {
        // kata-deploy nodes: the handlers have their own delegates; only
        // the plain kata-sriov handler uses this one.
        delegate.status = Status::Warn;
        delegate.message.push_str(
            " (used only by the runtime handler kata-sriov; the others have [shim.delegates])",
        );
    }
    out.push(delegate);
    out.push(check_on_path(
        "shim.binary",
        SHIM_BINARY,
        env.path.as_deref(),
        "install containerd-shim-kata-sriov-v2 into /usr/local/bin (containerd finds shims on its PATH)",
    ));
    out.extend(check_kata(cfg, &root, &env.kata_configs));
    out.push(check_containerd_with(
        &env.containerd_config,
        configure::which("containerd", env.path.as_deref()).as_deref(),
    ));
    out.extend(check_handlers(cfg, &root, env));
    Report::new(out)
}

pub fn check_cmdline(path: &Path, groups_exist: bool) -> CheckResult {
    const ID: &str = "iommu.cmdline";
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                ID,
                format!("reading {}: {ec}", path.display(), ec = chain(&e)),
                GRUB_FIX,
            );
        }
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let has = |w: &str| words.iter().rev().find(|x| x.starts_with(w)).copied();
    for key in ["intel_iommu=", "amd_iommu="] {
        if let Some(w) = has(key) {
            if w == format!("{key}on") {
                return ok(ID, format!("{w} is on the kernel command line"));
            }
            if w.ends_with("=off") {
                return fail(ID, format!("{w} turns the IOMMU off"), GRUB_FIX);
            }
        }
    }
    if groups_exist {
        warn(
            ID,
            "neither intel_iommu=on nor amd_iommu=on is on the kernel command line, but the IOMMU is on (firmware or kernel default)",
            "add intel_iommu=on or amd_iommu=on so that the IOMMU stays on across kernel updates",
        )
    } else {
        fail(
            ID,
            "neither intel_iommu=on nor amd_iommu=on is on the kernel command line",
            GRUB_FIX,
        )
    }
}

pub fn check_groups(root: &SysfsRoot) -> CheckResult {
    const ID: &str = "iommu.groups";
    let dir = root.iommu_groups();
    let n = fs::read_dir(&dir).map(|rd| rd.count()).unwrap_or(0);
    if n > 0 {
        ok(ID, format!("{n} IOMMU groups in {}", dir.display()))
    } else {
        fail(
            ID,
            format!("no IOMMU groups in {}: the IOMMU is off", dir.display()),
            GRUB_FIX,
        )
    }
}

pub fn check_vfio(root: &SysfsRoot, modules_dir: &Path, needed: bool) -> CheckResult {
    const ID: &str = "vfio.driver";
    let dir = root.driver_dir(VFIO_PCI);
    if dir.is_dir() {
        return ok(ID, format!("vfio-pci is loaded ({})", dir.display()));
    }
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin"))
        .is_ok_and(|s| s.lines().any(|l| l.ends_with("/vfio-pci.ko")));
    let module = ["ko", "ko.xz", "ko.zst", "ko.gz"].iter().any(|ext| {
        modules_dir
            .join(format!("kernel/drivers/vfio/pci/vfio-pci.{ext}"))
            .is_file()
    });
    if builtin || module {
        warn(
            ID,
            format!(
                "vfio-pci is available in {} but not loaded",
                modules_dir.display()
            ),
            "run `kata-sriov setup` (or modprobe vfio-pci; list it in /etc/modules-load.d/ to load it at boot)",
        )
    } else if needed {
        fail(
            ID,
            format!(
                "vfio-pci is neither loaded nor in {}",
                modules_dir.display()
            ),
            "install the kernel's modules package (vfio-pci, CONFIG_VFIO_PCI)",
        )
    } else {
        warn(
            ID,
            "vfio-pci is not available (no pool uses mode = \"vfio\")",
            "install the kernel's modules package before adding a vfio pool",
        )
    }
}

/// The PF's checks: existence/SR-IOV, VF count, IOMMU isolation.
fn check_pf(root: &SysfsRoot, pool: &crate::policy::config::Pool, pf: &str) -> Vec<CheckResult> {
    let base = format!("pool.{}", pool.name);
    let id = |what: &str| format!("{base}.{what}.{pf}");
    let mut out = Vec::new();
    let addr = match root.resolve_pf(pf) {
        Ok(a) => a,
        Err(e) => {
            let fix = match e {
                SysfsError::NotSriov(_) => {
                    "this device has no SR-IOV capability: name a PF that has one (see sriov_totalvfs in sysfs), or enable SR-IOV in the firmware"
                }
                _ => "fix pfs in the pool (netdev name or PCI address of the PF)",
            };
            out.push(fail(id("pf"), chain(&e), fix));
            return out;
        }
    };
    let info = match root.pf_info(addr) {
        Ok(i) => i,
        Err(e) => {
            out.push(fail(id("pf"), chain(&e), "check the PF's driver (dmesg)"));
            return out;
        }
    };
    let netdev = info.netdev().map(|n| n.to_string());
    let drv = info.driver.as_deref().unwrap_or("no driver");
    let desc = format!(
        "{addr} ({}, {drv}) supports {} VFs",
        netdev.as_deref().unwrap_or("no netdev"),
        info.total_vfs
    );
    match (&netdev, pool.uses_netlink()) {
        (None, true) => out.push(fail(
            id("pf"),
            format!("{desc} but has no network interface, so VF settings cannot be applied"),
            "bind the PF to its network driver",
        )),
        _ => out.push(ok(id("pf"), desc)),
    }
    let vfs_id = id("vfs");
    match pool.num_vfs {
        Some(want) if want > info.total_vfs => out.push(fail(
            vfs_id,
            format!(
                "num_vfs = {want} is more than the {} VFs the PF supports",
                info.total_vfs
            ),
            format!(
                "set num_vfs to at most {} in pool {:?}",
                info.total_vfs, pool.name
            ),
        )),
        Some(want) if info.num_vfs == want => {
            out.push(ok(vfs_id, format!("{} VFs, as configured", info.num_vfs)))
        }
        Some(want) if info.num_vfs == 0 => out.push(fail(
            vfs_id,
            format!("no VFs; the pool wants {want}"),
            "run `kata-sriov setup`",
        )),
        Some(want) => out.push(warn(
            vfs_id,
            format!("{} VFs; the pool wants {want}", info.num_vfs),
            "run `kata-sriov setup` (it refuses while VFs of this PF are leased)",
        )),
        None if info.num_vfs == 0 => out.push(fail(
            vfs_id,
            "no VFs and no num_vfs in the pool",
            format!(
                "set num_vfs in pool {:?} and run `kata-sriov setup`",
                pool.name
            ),
        )),
        None => out.push(ok(
            vfs_id,
            format!(
                "{} VFs (num_vfs not set: setup leaves the count alone)",
                info.num_vfs
            ),
        )),
    }
    if pool.mode == Mode::Vfio && info.num_vfs > 0 {
        out.push(check_isolation(root, addr, info.num_vfs, id("iommu")));
    }
    out
}

fn check_isolation(
    root: &SysfsRoot,
    pf: crate::pci::PciAddress,
    num: u32,
    id: String,
) -> CheckResult {
    let mut alone = 0;
    let mut bad = Vec::new();
    for i in 0..num {
        let r = root
            .vf_addr(pf, i)
            .map_err(IommuError::from)
            .and_then(|vf| iommu::check_isolated(root, vf));
        match r {
            Ok(_) => alone += 1,
            Err(e @ IommuError::Off { .. }) => {
                return fail(id, chain(&e), GRUB_FIX);
            }
            Err(e) => bad.push(chain(&e)),
        }
    }
    if bad.is_empty() {
        return ok(
            id,
            format!("each of the {alone} VFs is alone in its IOMMU group"),
        );
    }
    let n = bad.len();
    let first = bad.swap_remove(0);
    let fix = "put the NIC in a slot whose IOMMU group isolates it (ACS); VFs that share a group are never handed out";
    if alone == 0 {
        fail(
            id,
            format!("none of the {n} VFs is alone in its IOMMU group: {first}"),
            fix,
        )
    } else {
        warn(
            id,
            format!(
                "{n} of {} VFs share their IOMMU group and will not be used: {first}",
                alone + n
            ),
            fix,
        )
    }
}

pub fn check_state_dir(dir: &Path) -> CheckResult {
    const ID: &str = "state_dir";
    let d = dir.display();
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ok(
            ID,
            format!("{d} does not exist yet; it is created (0700) on first use"),
        ),
        Err(e) => fail(
            ID,
            format!("{d}: {ec}", ec = chain(&e)),
            format!("check {d}"),
        ),
        Ok(md) if md.file_type().is_symlink() => fail(
            ID,
            format!("{d} is a symlink"),
            format!("remove the symlink {d}; kata-sriov creates the directory itself"),
        ),
        Ok(md) if !md.is_dir() => fail(
            ID,
            format!("{d} is not a directory"),
            format!("remove {d}; kata-sriov creates the directory itself"),
        ),
        Ok(md) => {
            let me = nix::unistd::geteuid().as_raw();
            let mode = md.permissions().mode() & 0o7777;
            if md.uid() != me {
                fail(
                    ID,
                    format!("{d} is owned by uid {}, not uid {me}", md.uid()),
                    format!("chown {me} {d}"),
                )
            } else if mode & 0o077 != 0 {
                fail(
                    ID,
                    format!("{d} has mode {mode:04o}; others may read or change leases"),
                    format!("chmod 700 {d}"),
                )
            } else {
                ok(ID, format!("{d} is owned by uid {me}, mode {mode:04o}"))
            }
        }
    }
}

/// Finds an executable on `path` (or an absolute path).
pub use crate::admin::configure::which;

fn check_on_path(id: &str, name: &str, path: Option<&std::ffi::OsStr>, fix: &str) -> CheckResult {
    match which(name, path) {
        Some(p) => ok(id, format!("{name} is {}", p.display())),
        None => fail(id, format!("{name} is not on PATH"), fix),
    }
}

fn hv_str<'a>(doc: &'a DocumentMut, hv: &str, key: &str) -> Option<&'a str> {
    doc.get("hypervisor")?.get(hv)?.get(key)?.as_str()
}

fn hv_int(doc: &DocumentMut, hv: &str, key: &str) -> Option<i64> {
    doc.get("hypervisor")?.get(hv)?.get(key)?.as_integer()
}

/// The VFs one sandbox may get: the pools' VF counts (configured, else
/// current).
fn vf_count(cfg: &Config, root: &SysfsRoot, dan_only: bool) -> u32 {
    let mut n = 0u32;
    for p in &cfg.pools {
        if dan_only && cfg.guest_mode(p) != GuestMode::Dan {
            continue;
        }
        for pf in &p.pfs {
            let cur = root
                .resolve_pf(pf)
                .and_then(|a| root.pf_info(a))
                .map(|i| i.num_vfs)
                .unwrap_or(0);
            n = n.saturating_add(p.num_vfs.unwrap_or(cur));
        }
    }
    n.max(1)
}

fn check_kata(cfg: &Config, root: &SysfsRoot, candidates: &[PathBuf]) -> Vec<CheckResult> {
    let Some(path) = configure::find_kata_config(candidates) else {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return vec![warn(
            "kata.config",
            format!(
                "no Kata configuration found ({}); Kata checks skipped",
                looked.join(", ")
            ),
            "install Kata Containers if VFs go to Kata VMs, then run `kata-sriov configure kata`",
        )];
    };
    check_kata_file(cfg, root, &path, None, "kata")
}

/// The Kata checks of one configuration file, ids `<prefix>.config`,
/// `<prefix>.plug`...; `flavor` when the runtime is known (a handler's
/// shim), else from the file.
fn check_kata_file(
    cfg: &Config,
    root: &SysfsRoot,
    path: &Path,
    flavor: Option<KataFlavor>,
    prefix: &str,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let id = |what: &str| format!("{prefix}.{what}");
    let p = path.display();
    let doc = match fs::read_to_string(path)
        .map_err(|e| chain(&e))
        .and_then(|t| t.parse::<DocumentMut>().map_err(|e| chain(&e)))
    {
        Ok(d) => d,
        Err(e) => {
            out.push(fail(
                id("config"),
                format!("{p}: {}", e.trim_end().replace('\n', " ")),
                format!("fix the TOML in {p}"),
            ));
            return out;
        }
    };
    let flavor = flavor.unwrap_or_else(|| configure::kata_flavor(&doc));
    let Some(hv) = configure::kata_hypervisor(&doc) else {
        out.push(fail(
            id("config"),
            format!("{p} has no [hypervisor.*] table"),
            format!("check {p}: it is not a Kata configuration"),
        ));
        return out;
    };
    let fl = match flavor {
        KataFlavor::Go => "Go runtime",
        KataFlavor::RuntimeRs => "runtime-rs",
    };
    out.push(ok(id("config"), format!("{p} ({fl}, hypervisor.{hv})")));
    let cfgfix = format!("run `kata-sriov configure kata --file {p}`");
    let port = |k: &str| hv_str(&doc, &hv, k).unwrap_or("no-port").to_owned();
    let (cold, hot) = (port("cold_plug_vfio"), port("hot_plug_vfio"));
    let root_ports = hv_int(&doc, &hv, "pcie_root_port").unwrap_or(0);
    let helper = cfg.pools.is_empty()
        || cfg
            .pools
            .iter()
            .any(|p| cfg.guest_mode(p) == GuestMode::Helper);
    let dan = cfg
        .pools
        .iter()
        .any(|p| cfg.guest_mode(p) == GuestMode::Dan);
    let at = format!("hypervisor.{hv}");
    let plug = match (flavor, dan) {
        (KataFlavor::Go, false) => {
            if cold != "no-port" && hot != "no-port" {
                fail(
                    id("plug"),
                    format!("{at}: cold_plug_vfio = {cold:?} and hot_plug_vfio = {hot:?}: the Go runtime refuses both"),
                    cfgfix.clone(),
                )
            } else if cold == "root-port" {
                ok(id("plug"), format!("{at}: cold_plug_vfio = \"root-port\""))
            } else if hot != "no-port" {
                warn(
                    id("plug"),
                    format!("{at}: hot_plug_vfio = {hot:?}: VFs are hot-plugged (needs pcie_root_port, now {root_ports})"),
                    format!("cold plug is the tested path: {cfgfix}"),
                )
            } else {
                fail(
                    id("plug"),
                    format!("{at}: cold_plug_vfio = {cold:?}: Kata refuses a /dev/vfio device"),
                    cfgfix.clone(),
                )
            }
        }
        (KataFlavor::Go, true) => {
            let need = vf_count(cfg, root, true);
            if hot == "no-port" {
                fail(
                    id("plug"),
                    format!("{at}: hot_plug_vfio = \"no-port\": DAN pools need hot plug"),
                    cfgfix.clone(),
                )
            } else if cold != "no-port" {
                fail(
                    id("plug"),
                    format!("{at}: cold_plug_vfio = {cold:?} with hot_plug_vfio = {hot:?}: the Go runtime refuses both; DAN needs cold_plug_vfio = \"no-port\""),
                    cfgfix.clone(),
                )
            } else if root_ports < i64::from(need) {
                fail(
                    id("plug"),
                    format!("{at}: pcie_root_port = {root_ports}, fewer than the {need} VF(s) of the DAN pools"),
                    cfgfix.clone(),
                )
            } else {
                ok(
                    id("plug"),
                    format!("{at}: hot_plug_vfio = {hot:?}, cold_plug_vfio = \"no-port\", pcie_root_port = {root_ports}"),
                )
            }
        }
        (KataFlavor::RuntimeRs, _) => {
            if dan {
                let pools: Vec<String> = cfg
                    .pools
                    .iter()
                    .filter(|pl| cfg.guest_mode(pl) == GuestMode::Dan)
                    .map(|pl| format!("{:?}", pl.name))
                    .collect();
                let ks = cfg
                    .source
                    .as_deref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| crate::policy::config::DEFAULT_PATH.into());
                fail(
                    id("plug"),
                    format!(
                        "{p} is runtime-rs, which has no VFIO DAN device, and {ks} has guest = \"dan\" for pool(s) {}",
                        pools.join(", ")
                    ),
                    "use guest = \"helper\" for pools used with runtime-rs, or a Go runtime handler for DAN pools",
                )
            } else if cold != "root-port" {
                fail(
                    id("plug"),
                    format!("{p}: {at}.cold_plug_vfio = {cold:?}: runtime-rs cold-plugs the sandbox's VF only with \"root-port\""),
                    cfgfix.clone(),
                )
            } else if root_ports > 0 {
                ok(
                    id("plug"),
                    format!("{at}: cold_plug_vfio = \"root-port\", pcie_root_port = {root_ports}"),
                )
            } else {
                warn(
                    id("plug"),
                    format!("{at}: cold_plug_vfio = \"root-port\" and pcie_root_port = 0"),
                    format!("set pcie_root_port > 0 for hot plug of later containers: {cfgfix}"),
                )
            }
        }
    };
    out.push(plug);
    if helper {
        out.push(match hv_str(&doc, &hv, "guest_hook_path") {
            Some(g) if !g.is_empty() => ok(
                id("guest_hook_path"),
                format!("{at}: guest_hook_path = {g:?} (kata-sriov-guest must be in {g}/prestart/ of the guest image)"),
            ),
            _ => fail(
                id("guest_hook_path"),
                format!("{at}: guest_hook_path is not set: the guest helper never runs"),
                cfgfix.clone(),
            ),
        });
        if flavor == KataFlavor::RuntimeRs && cfg.hook.shim_poststop() {
            out.push(fail(
                id("host_hooks"),
                "runtime-rs drops the guest hooks when the spec has a host hook, and [hook] poststop = true adds one",
                "set [hook] poststop = false (the default) in the kata-sriov config (the shim's delete and gc release instead)",
            ));
        }
    }
    if dan {
        let kata_dir = doc
            .get("runtime")
            .and_then(|r| r.get("dan_conf"))
            .and_then(Item::as_str)
            .unwrap_or(configure::KATA_DAN_DIR)
            .to_owned();
        let ours = cfg.dan.dir.display().to_string();
        out.push(if kata_dir != ours {
            fail(
                id("dan_conf"),
                format!("Kata reads DAN files from {kata_dir}, kata-sriov writes them to {ours}"),
                cfgfix.clone(),
            )
        } else if !cfg.dan.dir.is_dir() {
            warn(
                id("dan_conf"),
                format!("{ours} does not exist"),
                "run `kata-sriov setup` (it creates the directory)",
            )
        } else {
            ok(
                id("dan_conf"),
                format!("{ours} exists and is Kata's dan_conf"),
            )
        });
    }
    out
}

/// Each of our runtime handlers in containerd's config: which Kata runtime
/// it fronts (from its delegate's path and its `ConfigPath`), and that
/// runtime's checks of that `ConfigPath`. Ids `handler.<name>` and
/// `handler.<name>.<check>` (`config`, `plug`, `guest_hook_path`,
/// `host_hooks`, `dan_conf`).
fn check_handlers(cfg: &Config, root: &SysfsRoot, env: &CheckEnv) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let Ok(text) = fs::read_to_string(&env.containerd_config) else {
        return out;
    };
    let Ok(handlers) = configure::our_handlers(&text, &env.containerd_config) else {
        return out;
    };
    let ks = cfg
        .source
        .as_deref()
        .map(|s| s.display().to_string())
        .unwrap_or_else(|| crate::policy::config::DEFAULT_PATH.into());
    let cd = env.containerd_config.display();
    for h in handlers {
        let hid = format!("handler.{}", h.name);
        let delegate = if h.name == configure::RUNTIME_NAME {
            which(&cfg.shim.delegate, env.path.as_deref())
        } else {
            match cfg.shim.delegates.get(&h.name) {
                Some(p) => Some(p.clone()),
                None => {
                    out.push(fail(
                        hid,
                        format!("{cd} has runtime handler {}, but {ks} has no [shim.delegates] {} for it", h.name, h.name),
                        format!("run `kata-sriov configure containerd --file {cd}`"),
                    ));
                    continue;
                }
            }
        };
        let Some(delegate) = delegate else {
            // shim.delegate reports the missing default delegate.
            continue;
        };
        if which(&delegate.display().to_string(), None).is_none() {
            out.push(fail(
                hid,
                format!(
                    "{}: its delegate {} ([shim.delegates] in {ks}) is not an executable file",
                    h.name,
                    delegate.display()
                ),
                "install that Kata runtime, or run `kata-sriov configure containerd` again",
            ));
            continue;
        }
        let flavor = configure::handler_flavor(&delegate, h.config_path.as_deref());
        let fl = match flavor {
            KataFlavor::Go => "Kata's Go runtime",
            KataFlavor::RuntimeRs => "Kata's runtime-rs",
        };
        let Some(cp) = h.config_path else {
            out.push(warn(
                hid,
                format!("{} runs {fl} ({}) with no options.ConfigPath in {cd}", h.name, delegate.display()),
                "give the handler the ConfigPath of the Kata handler it fronts (`kata-sriov configure containerd` copies it)",
            ));
            continue;
        };
        if !cp.is_file() {
            out.push(fail(
                hid,
                format!("{}: ConfigPath {} does not exist", h.name, cp.display()),
                format!("fix options.ConfigPath of {} in {cd}", h.name),
            ));
            continue;
        }
        out.push(ok(
            hid.clone(),
            format!(
                "{} runs {fl} ({}, ConfigPath {})",
                h.name,
                delegate.display(),
                cp.display()
            ),
        ));
        out.extend(check_kata_file(cfg, root, &cp, Some(flavor), &hid));
    }
    out
}

/// The `containerd.runtime` check: where containerd is installed (on
/// `$PATH`), its effective config (`containerd --config PATH config dump`:
/// the main file, its imports and drop-ins, migrated), else the file and
/// the drop-in `configure containerd` writes.
pub fn check_containerd(path: &Path) -> CheckResult {
    let bin = configure::which("containerd", std::env::var_os("PATH").as_deref());
    check_containerd_with(path, bin.as_deref())
}

/// [`check_containerd`] with the containerd binary to ask (None: read the
/// files).
pub fn check_containerd_with(path: &Path, containerd: Option<&Path>) -> CheckResult {
    const ID: &str = "containerd.runtime";
    let p = path.display();
    let fix = format!("run `kata-sriov configure containerd --file {p}` and restart containerd");
    let mut text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return warn(ID, format!("{p} does not exist"), fix);
        }
        Err(e) => return fail(ID, format!("reading {p}: {ec}", ec = chain(&e)), fix),
    };
    let mut what = p.to_string();
    if let Some(bin) = containerd {
        let out = std::process::Command::new(bin)
            .arg("--config")
            .arg(path)
            .args(["config", "dump"])
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                text = String::from_utf8_lossy(&o.stdout).into_owned();
                what = format!(
                    "containerd's effective config ({} --config {p} config dump)",
                    bin.display()
                );
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let line = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                return fail(
                    ID,
                    format!("{} cannot load {p}: {}", bin.display(), printable(line.trim())),
                    format!("fix {p} (and its imports) until `containerd --config {p} config dump` works"),
                );
            }
            Err(e) => {
                return fail(
                    ID,
                    format!("running {} config dump: {e}", bin.display()),
                    fix,
                )
            }
        }
    } else if !matches!(configure::containerd_has_runtime(&text, path), Ok(None)) {
        let dropin = configure::containerd_dropin(path);
        if let Ok(d) = fs::read_to_string(&dropin) {
            if matches!(configure::containerd_has_runtime(&d, &dropin), Ok(None)) {
                text = d;
                what = format!(
                    "{} (the drop-in; containerd is not on PATH to say whether it is loaded)",
                    dropin.display()
                );
            }
        }
    }
    match configure::containerd_has_runtime(&text, path) {
        Ok(None) if configure::containerd_cri_disabled(&text) => warn(
            ID,
            format!("{what} has the {} runtime, but disables the CRI plugin", configure::RUNTIME_NAME),
            format!("remove \"cri\" from disabled_plugins in {p} (Kubernetes/crictl need it), or use ctr/nerdctl with --runtime io.containerd.kata-sriov.v2"),
        ),
        Ok(None) => ok(
            ID,
            format!("{what} has the {} runtime", configure::RUNTIME_NAME),
        ),
        Ok(Some(why)) => fail(ID, format!("{what}: {why}"), fix),
        Err(e) => fail(ID, chain(&e), fix),
    }
}
