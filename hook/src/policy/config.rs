//! The admin's configuration, `/etc/kata-sriov/config.toml` (path
//! overridable by `--config` and `KATA_SRIOV_CONFIG`): pools, their policy,
//! the state directory, the delegate shim. Reads only that file.
//!
//! ```toml
//! state_dir = "/run/kata-sriov"
//! [shim]
//! delegate = "containerd-shim-kata-v2"
//! [shim.delegates]
//! kata-sriov-qemu-runtime-rs = "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2"
//! [defaults]
//! networks = []
//! [[pools]]
//! name = "fast"
//! pfs = ["ens1f0"]
//! vlan = 100
//! mac = "generate"
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IoError;
use crate::kernel::netlink::VfSetting;
use crate::pci::{LinkState, MacAddr, ParseError, Qos, VlanId, VlanProto};

pub const DEFAULT_PATH: &str = "/etc/kata-sriov/config.toml";
pub const ENV_PATH: &str = "KATA_SRIOV_CONFIG";
/// Largest config file accepted.
const MAX_CONFIG: u64 = 1 << 20;

/// Longest pool name.
pub const MAX_POOL_NAME: usize = 64;

/// The name of a pool: 1 to 64 bytes of `[A-Za-z0-9_.-]`, not starting with
/// `.` or `-` (so it is safe in a file name and never looks like an option).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

impl PoolName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PoolName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("pool name", s, reason);
        if s.is_empty() || s.len() > MAX_POOL_NAME {
            return Err(err("must be 1 to 64 bytes"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(err("only letters, digits, '_', '.' and '-' are allowed"));
        }
        if s.starts_with(['.', '-']) {
            return Err(err("must not start with '.' or '-'"));
        }
        Ok(PoolName(s.to_owned()))
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PoolName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PoolName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub use crate::state::ledger::Mode;

/// Where a VF's MAC comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacPolicy {
    /// A random locally administered unicast MAC, unique among leases and
    /// on the VF's Ethernet segment (`engine/mac.rs` says what is checked).
    #[default]
    Generate,
    /// Whatever the VF has.
    Keep,
    /// The container's `mac`, else generated.
    Request,
}

/// How a device plugin picks VFs of a pool across its PFs when the
/// kubelet asks for a preferred allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Across as many PFs as possible (a PF's failure costs a pod least).
    #[default]
    Spread,
    /// On as few PFs as possible (keeps other PFs free for large requests).
    Pack,
}

/// How the guest learns its network configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuestMode {
    /// The guest annotation, read by `kata-sriov-guest` in the VM.
    #[default]
    Helper,
    /// Kata's own DAN file.
    Dan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    /// PF network interface names or PCI addresses.
    pub pfs: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub vlan: Option<VlanId>,
    #[serde(default)]
    pub qos: Option<Qos>,
    #[serde(default)]
    pub vlan_proto: Option<VlanProto>,
    #[serde(default)]
    pub spoofchk: Option<bool>,
    #[serde(default)]
    pub trust: Option<bool>,
    #[serde(default)]
    pub link_state: Option<LinkState>,
    #[serde(default)]
    pub min_tx_rate: Option<u32>,
    #[serde(default)]
    pub max_tx_rate: Option<u32>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub mac: MacPolicy,
    #[serde(default)]
    pub guest: Option<GuestMode>,
    /// VFs `kata-sriov setup` creates on each of the pool's PFs.
    #[serde(default)]
    pub num_vfs: Option<u32>,
    /// Device plugin: spread or pack a pod's VFs across the PFs.
    #[serde(default)]
    pub allocation: Allocation,
}

impl Pool {
    /// The VF settings this pool puts on the PF, in the order they are
    /// applied, without the MAC (which is per VF). Empty: no netlink call
    /// beyond the MAC.
    pub fn vf_settings(&self) -> Vec<VfSetting> {
        let mut out = Vec::new();
        if self.vlan.is_some() || self.qos.is_some() || self.vlan_proto.is_some() {
            out.push(VfSetting::Vlan {
                vlan: self.vlan.unwrap_or_default(),
                qos: self.qos.unwrap_or_default(),
                proto: self.vlan_proto.unwrap_or_default(),
            });
        }
        if let Some(s) = self.spoofchk {
            out.push(VfSetting::SpoofChk(s));
        }
        if let Some(t) = self.trust {
            out.push(VfSetting::Trust(t));
        }
        if let Some(l) = self.link_state {
            out.push(VfSetting::LinkState(l));
        }
        if self.min_tx_rate.is_some() || self.max_tx_rate.is_some() {
            out.push(VfSetting::Rate {
                min_tx: self.min_tx_rate.unwrap_or(0),
                max_tx: self.max_tx_rate.unwrap_or(0),
            });
        }
        out
    }

    /// Whether claiming from this pool talks to the PF at all.
    pub fn uses_netlink(&self) -> bool {
        self.mac != MacPolicy::Keep || !self.vf_settings().is_empty()
    }

    /// Whether a container may choose this MAC.
    pub fn allows_mac(&self, _mac: MacAddr) -> bool {
        self.mac == MacPolicy::Request
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// The shim every call is handed to (a bare name is looked up on
    /// `PATH`), unless the runtime handler has its own in `delegates`.
    #[serde(default = "default_delegate")]
    pub delegate: String,
    /// The delegate of each kata-sriov runtime handler, by absolute path:
    /// the shim invoked as `containerd-shim-<handler>-v2` (containerd runs
    /// that binary for `io.containerd.<handler>.v2`, or the handler's
    /// `runtime_path`) hands over to `delegates[<handler>]`. One node can
    /// so front Kata's Go runtime and runtime-rs, whose shims have the same
    /// file name, side by side.
    #[serde(default)]
    pub delegates: BTreeMap<String, PathBuf>,
}

fn default_delegate() -> String {
    "containerd-shim-kata-v2".into()
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            delegate: default_delegate(),
            delegates: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Pools for containers that ask for none.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Guest mode for pools that set none.
    #[serde(default)]
    pub guest: GuestMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Add a poststop hook that releases the VF to the spec. Unset: the
    /// shim adds none (its `delete` releases when the delegate exits, and
    /// under Kata's runtime-rs any host hook in the spec switches off the
    /// guest hooks), `hook precreate` (podman's hooks.d, where no shim
    /// runs) adds one. `true` or `false` applies to both.
    #[serde(default)]
    pub poststop: Option<bool>,
    /// The `kata-sriov` binary the poststop hook runs.
    #[serde(default = "default_binary")]
    pub binary: PathBuf,
    /// The poststop hook's timeout, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout: u32,
    /// How long a release waits for the hypervisor to let go of a VF, in
    /// seconds, before leaving it to gc.
    #[serde(default = "default_release_wait")]
    pub release_wait: u32,
    /// How long a `hook precreate` claim waits for its container's
    /// createRuntime hook to confirm it, in seconds; gc reclaims it after
    /// that (or as soon as the runtime that ran the hook is gone).
    #[serde(default = "default_confirm_within")]
    pub confirm_within: u32,
}

fn default_binary() -> PathBuf {
    PathBuf::from("/usr/local/bin/kata-sriov")
}
fn default_timeout() -> u32 {
    60
}
fn default_release_wait() -> u32 {
    30
}
fn default_confirm_within() -> u32 {
    300
}

impl HookConfig {
    /// Whether the shim's `start` adds the poststop hook (default no).
    pub fn shim_poststop(&self) -> bool {
        self.poststop.unwrap_or(false)
    }

    /// Whether `hook precreate` adds the poststop hook (default yes).
    pub fn precreate_poststop(&self) -> bool {
        self.poststop.unwrap_or(true)
    }
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            poststop: None,
            binary: default_binary(),
            timeout: default_timeout(),
            release_wait: default_release_wait(),
            confirm_within: default_confirm_within(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DanConfig {
    /// Kata's `dan_conf` directory.
    #[serde(default = "default_dan_dir")]
    pub dir: PathBuf,
}

fn default_dan_dir() -> PathBuf {
    PathBuf::from("/run/kata-containers/dans")
}

impl Default for DanConfig {
    fn default() -> Self {
        DanConfig {
            dir: default_dan_dir(),
        }
    }
}

/// `[cdi]`: where `kata-sriov cdi claim` writes the CDI specs that
/// CDI-aware engines (Docker 28, podman 5, containerd 2) read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdiConfig {
    #[serde(default = "default_cdi_dir")]
    pub dir: PathBuf,
}

fn default_cdi_dir() -> PathBuf {
    PathBuf::from("/var/run/cdi")
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            dir: default_cdi_dir(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_sysfs")]
    pub sysfs_root: PathBuf,
    #[serde(default = "default_dev")]
    pub dev_root: PathBuf,
    #[serde(default)]
    pub shim: ShimConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub hook: HookConfig,
    #[serde(default)]
    pub dan: DanConfig,
    #[serde(default)]
    pub cdi: CdiConfig,
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Where this config was read from (not a key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/kata-sriov")
}
fn default_sysfs() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_dev() -> PathBuf {
    PathBuf::from("/dev")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: default_state_dir(),
            sysfs_root: default_sysfs(),
            dev_root: default_dev(),
            shim: ShimConfig::default(),
            defaults: Defaults::default(),
            hook: HookConfig::default(),
            dan: DanConfig::default(),
            cdi: CdiConfig::default(),
            pools: Vec::new(),
            source: None,
        }
    }
}

impl Config {
    /// The config path: the explicit one, else `$KATA_SRIOV_CONFIG`, else
    /// the default; and whether it was chosen explicitly.
    pub fn locate(explicit: Option<&Path>) -> (PathBuf, bool) {
        if let Some(p) = explicit {
            return (p.to_owned(), true);
        }
        match std::env::var_os(ENV_PATH) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_PATH), false),
        }
    }

    /// Loads the config. A missing file at the default path is an empty
    /// config (no pools); a missing file named explicitly is an error.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, named) = Config::locate(explicit);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !named => Ok(Config::default()),
            Err(source) => Err(IoError::new("reading config", path, source).into()),
            Ok(md) if md.len() > MAX_CONFIG => Err(ConfigError::Invalid {
                path,
                message: format!("{} bytes is over the 1 MiB limit", md.len()),
            }),
            Ok(_) => {
                let text =
                    fs::read_to_string(&path).map_err(IoError::at("reading config", &path))?;
                Config::parse(&text, &path)
            }
        }
    }

    /// Parses and validates config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.source = Some(path.to_owned());
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for p in &self.pools {
            let at = format!("pool {:?}", p.name);
            if let Err(e) = p.name.parse::<PoolName>() {
                return Err(format!("{at}: {e}"));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("{at}: defined twice"));
            }
            if p.pfs.is_empty() {
                return Err(format!("{at}: pfs is empty; name at least one PF"));
            }
            if p.qos.is_some_and(|q| q.get() != 0) && p.vlan.is_none_or(|v| v.get() == 0) {
                return Err(format!("{at}: qos needs a vlan"));
            }
            if let (Some(min), Some(max)) = (p.min_tx_rate, p.max_tx_rate) {
                if max != 0 && min > max {
                    return Err(format!(
                        "{at}: min_tx_rate {min} is above max_tx_rate {max}"
                    ));
                }
            }
            if let Some(mtu) = p.mtu {
                if !(68..=65535).contains(&mtu) {
                    return Err(format!("{at}: mtu {mtu} must be 68 to 65535"));
                }
            }
            if p.mode == Mode::Netdev && self.guest_mode(p) == GuestMode::Dan {
                return Err(format!(
                    "{at}: guest = \"dan\" needs mode = \"vfio\" (Kata hot-plugs a VFIO device)"
                ));
            }
        }
        for n in &self.defaults.networks {
            if !names.contains(n.as_str()) {
                return Err(format!("defaults.networks: no pool named {n:?}"));
            }
        }
        for (k, p) in [
            ("state_dir", &self.state_dir),
            ("sysfs_root", &self.sysfs_root),
            ("dev_root", &self.dev_root),
        ] {
            if !p.is_absolute() {
                return Err(format!("{k} {}: must be an absolute path", p.display()));
            }
        }
        for (handler, path) in &self.shim.delegates {
            let ok_name = !handler.is_empty()
                && !handler.starts_with(['-', '.'])
                && handler
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
            if !ok_name {
                return Err(format!(
                    "shim.delegates.{handler:?}: a runtime handler name has only letters, digits, '-' and '_'"
                ));
            }
            if !path.is_absolute() {
                return Err(format!(
                    "shim.delegates.{handler}: {} must be an absolute path",
                    path.display()
                ));
            }
        }
        if !self.hook.binary.is_absolute() {
            return Err(format!(
                "hook.binary {}: must be an absolute path",
                self.hook.binary.display()
            ));
        }
        Ok(())
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The pool's guest mode, or the default.
    pub fn guest_mode(&self, pool: &Pool) -> GuestMode {
        pool.guest.unwrap_or(self.defaults.guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/kata-sriov/config.toml"))
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
state_dir = "/run/ks"
[shim]
delegate = "containerd-shim-runc-v2"
[shim.delegates]
kata-sriov-qemu-runtime-rs = "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2"
[defaults]
networks = ["fast"]
[hook]
poststop = false
[[pools]]
name = "fast"
pfs = ["ens1f0", "0000:3b:00.1"]
vlan = 100
qos = 3
spoofchk = true
trust = false
link_state = "enable"
max_tx_rate = 1000
mtu = 9000
mac = "request"
guest = "dan"
num_vfs = 8
allocation = "pack"
[[pools]]
name = "plain"
pfs = ["ens2f0"]
mac = "keep"
"#,
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/run/ks"));
        assert_eq!(c.sysfs_root, Path::new("/sys"));
        assert_eq!(
            c.shim.delegates["kata-sriov-qemu-runtime-rs"],
            Path::new("/opt/kata/runtime-rs/bin/containerd-shim-kata-v2")
        );
        assert_eq!(c.hook.poststop, Some(false));
        assert!(!c.hook.precreate_poststop());
        let fast = c.pool("fast").unwrap();
        assert_eq!(fast.vf_settings().len(), 5);
        assert!(fast.uses_netlink());
        assert_eq!(c.guest_mode(fast), GuestMode::Dan);
        let plain = c.pool("plain").unwrap();
        assert!(!plain.uses_netlink());
        assert_eq!(c.guest_mode(plain), GuestMode::Helper);
        assert_eq!(fast.allocation, Allocation::Pack);
        assert_eq!(plain.allocation, Allocation::Spread);
    }

    #[test]
    fn empty_config_is_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, Path::new("/run/kata-sriov"));
        assert_eq!(c.shim.delegate, "containerd-shim-kata-v2");
        assert!(c.pools.is_empty() && c.shim.delegates.is_empty());
        // No host hook from the shim by default; hooks.d keeps its poststop.
        assert_eq!(c.hook.poststop, None);
        assert!(!c.hook.shim_poststop() && c.hook.precreate_poststop());
        let on = parse("[hook]\npoststop = true").unwrap();
        assert!(on.hook.shim_poststop() && on.hook.precreate_poststop());
    }

    #[test]
    fn errors_name_key_value_and_file() {
        let cases = [
            ("bogus = 1", "bogus"),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\nallocation = \"round\"",
                "round",
            ),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\nvlan = 5000",
                "5000",
            ),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\nmac = \"random\"",
                "random",
            ),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\nvlan_proto = \"qinq\"",
                "qinq",
            ),
            ("[[pools]]\nname = \"a\"\npfs = [\"x\"]\nspeed = 1", "speed"),
            ("[[pools]]\nname = \"a\"\npfs = []", "pfs is empty"),
            ("[[pools]]\nname = \"../x\"\npfs = [\"x\"]", "../x"),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\n[[pools]]\nname = \"a\"\npfs = [\"y\"]",
                "defined twice",
            ),
            ("[defaults]\nnetworks = [\"nope\"]", "nope"),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\nqos = 3",
                "qos needs a vlan",
            ),
            ("[[pools]]\nname = \"a\"\npfs = [\"x\"]\nmtu = 10", "mtu 10"),
            (
                "[[pools]]\nname = \"a\"\npfs = [\"x\"]\nmode = \"netdev\"\nguest = \"dan\"",
                "dan",
            ),
            ("state_dir = \"run\"", "absolute"),
            (
                "[shim.delegates]\nkata-sriov-qemu = \"containerd-shim-kata-v2\"",
                "shim.delegates.kata-sriov-qemu: containerd-shim-kata-v2 must be an absolute path",
            ),
            ("[shim.delegates]\n\"a/b\" = \"/x\"", "runtime handler name"),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.contains("/etc/kata-sriov/config.toml"), "{e}");
        }
    }

    #[test]
    fn load_missing_default_vs_explicit() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert!(matches!(
            Config::load(Some(&missing)),
            Err(ConfigError::Io(_))
        ));
        let p = dir.path().join("c.toml");
        fs::write(&p, "[[pools]]\nname = \"a\"\npfs = [\"x\"]\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.source.as_deref(), Some(p.as_path()));
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// configs/kata-sriov.toml, the documented example, loads and means
    /// what its comments say.
    #[test]
    fn shipped_example_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kata-sriov.toml");
        let c = Config::load(Some(&p)).unwrap();
        let defaults = Config::default();
        assert_eq!(c.state_dir, defaults.state_dir);
        assert_eq!(c.shim, defaults.shim);
        assert_eq!(c.hook, defaults.hook);
        assert_eq!(c.dan, defaults.dan);
        let fast = c.pool("fast").unwrap();
        assert_eq!(fast.num_vfs, Some(8));
        assert_eq!(fast.vf_settings().len(), 3);
        assert_eq!(c.guest_mode(fast), GuestMode::Helper);
    }
}
