//! VF admin settings on the PF: the SR-IOV part of
//! `ip link set PF vf N mac|vlan|spoofchk|trust|state|min_tx_rate|max_tx_rate`,
//! and reading them back, behind the narrow [`VfNetlink`] trait.
//!
//! Kernel interface (through [`crate::rtnl`], `NETLINK_ROUTE`):
//! - set: `RTM_SETLINK` on the PF's ifindex carrying exactly one VF
//!   attribute: `IFLA_VFINFO_LIST > IFLA_VF_INFO > IFLA_VF_MAC |
//!   IFLA_VF_VLAN | IFLA_VF_VLAN_LIST > IFLA_VF_VLAN_INFO (802.1ad) |
//!   IFLA_VF_SPOOFCHK | IFLA_VF_TRUST | IFLA_VF_LINK_STATE | IFLA_VF_RATE`.
//!   One attribute per message because the kernel applies several in its
//!   own order and leaves the earlier ones applied when a later one fails.
//!   `EBUSY`/`EAGAIN` (drivers answer that briefly after a VF reset) are
//!   retried a bounded number of times.
//! - read: `RTM_GETLINK` on the PF by name with `IFLA_EXT_MASK =
//!   RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS`; `IFLA_NUM_VF` and
//!   `IFLA_VFINFO_LIST` are decoded here from the raw bytes (the kernel's
//!   `-1` = "driver did not report" for spoofchk/trust is kept as `None`).
//!
//! `kata_sriov::testing::RecordingNetlink` is an in-memory fake for other modules' tests
//! (ordering, fault injection, concurrency).

use std::fmt;
use std::time::Duration;

use netlink_packet_core::NLA_TYPE_MASK;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac,
    VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState, VfVlan, VfVlanInfo,
    VlanProtocol,
};
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};

use crate::pci::{IfName, LinkState, MacAddr, Qos, VlanId, VlanProto};
use crate::rtnl::{errno_name, Rtnl, RtnlError};

/// The admin settings of one VF as the PF's driver reports them.
/// `None`: the driver did not report that setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfSettings {
    pub mac: MacAddr,
    pub vlan: VlanId,
    pub qos: Qos,
    pub vlan_proto: VlanProto,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<LinkState>,
    pub min_tx_rate: u32,
    pub max_tx_rate: u32,
}

impl Default for VfSettings {
    /// A fresh VF on a typical driver: zero MAC, no VLAN, spoof checking on,
    /// not trusted, link state auto, no rate limits.
    fn default() -> Self {
        VfSettings {
            mac: MacAddr::ZERO,
            vlan: VlanId::NONE,
            qos: Qos::default(),
            vlan_proto: VlanProto::Dot1Q,
            spoofchk: Some(true),
            trust: Some(false),
            link_state: Some(LinkState::Auto),
            min_tx_rate: 0,
            max_tx_rate: 0,
        }
    }
}

impl VfSettings {
    /// The current value of one kind of setting, as a setting that would
    /// restore it; `None` when the driver does not report it.
    pub fn get(&self, kind: VfSettingKind) -> Option<VfSetting> {
        Some(match kind {
            VfSettingKind::Mac => VfSetting::Mac(self.mac),
            VfSettingKind::Vlan => VfSetting::Vlan {
                vlan: self.vlan,
                qos: self.qos,
                proto: self.vlan_proto,
            },
            VfSettingKind::SpoofChk => VfSetting::SpoofChk(self.spoofchk?),
            VfSettingKind::Trust => VfSetting::Trust(self.trust?),
            VfSettingKind::LinkState => VfSetting::LinkState(self.link_state?),
            VfSettingKind::Rate => VfSetting::Rate {
                min_tx: self.min_tx_rate,
                max_tx: self.max_tx_rate,
            },
        })
    }

    /// Records `setting` as applied.
    pub fn apply(&mut self, setting: VfSetting) {
        match setting {
            VfSetting::Mac(m) => self.mac = m,
            VfSetting::Vlan { vlan, qos, proto } => {
                self.vlan = vlan;
                self.qos = qos;
                self.vlan_proto = proto;
            }
            VfSetting::SpoofChk(b) => self.spoofchk = Some(b),
            VfSetting::Trust(b) => self.trust = Some(b),
            VfSetting::LinkState(s) => self.link_state = Some(s),
            VfSetting::Rate { min_tx, max_tx } => {
                self.min_tx_rate = min_tx;
                self.max_tx_rate = max_tx;
            }
        }
    }
}

/// One VF setting: what one `RTM_SETLINK` changes. Rates in Mbit/s
/// (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VfSetting {
    Mac(MacAddr),
    Vlan {
        vlan: VlanId,
        qos: Qos,
        proto: VlanProto,
    },
    SpoofChk(bool),
    Trust(bool),
    LinkState(LinkState),
    Rate {
        min_tx: u32,
        max_tx: u32,
    },
}

impl VfSetting {
    pub fn kind(&self) -> VfSettingKind {
        match self {
            VfSetting::Mac(_) => VfSettingKind::Mac,
            VfSetting::Vlan { .. } => VfSettingKind::Vlan,
            VfSetting::SpoofChk(_) => VfSettingKind::SpoofChk,
            VfSetting::Trust(_) => VfSettingKind::Trust,
            VfSetting::LinkState(_) => VfSettingKind::LinkState,
            VfSetting::Rate { .. } => VfSettingKind::Rate,
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl fmt::Display for VfSetting {
    /// In `ip link set ... vf N` words, e.g. `vlan 10 qos 3 proto 802.1Q`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfSetting::Mac(m) => write!(f, "mac {m}"),
            VfSetting::Vlan { vlan, qos, proto } => {
                write!(f, "vlan {} qos {} proto {proto}", vlan.get(), qos.get())
            }
            VfSetting::SpoofChk(b) => write!(f, "spoofchk {}", on_off(*b)),
            VfSetting::Trust(b) => write!(f, "trust {}", on_off(*b)),
            VfSetting::LinkState(s) => write!(f, "link-state {s}"),
            VfSetting::Rate { min_tx, max_tx } => {
                write!(f, "min_tx_rate {min_tx} max_tx_rate {max_tx}")
            }
        }
    }
}

/// The kinds of [`VfSetting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VfSettingKind {
    Mac,
    Vlan,
    SpoofChk,
    Trust,
    LinkState,
    Rate,
}

impl VfSettingKind {
    pub const ALL: [VfSettingKind; 6] = [
        VfSettingKind::Mac,
        VfSettingKind::Vlan,
        VfSettingKind::SpoofChk,
        VfSettingKind::Trust,
        VfSettingKind::LinkState,
        VfSettingKind::Rate,
    ];
}

impl fmt::Display for VfSettingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VfSettingKind::Mac => "the VF MAC address",
            VfSettingKind::Vlan => "VF VLAN tagging",
            VfSettingKind::SpoofChk => "VF spoof checking",
            VfSettingKind::Trust => "VF trust",
            VfSettingKind::LinkState => "the VF link state",
            VfSettingKind::Rate => "VF rate limits",
        })
    }
}

/// Errors of the VF settings interface; each names the PF and, where there
/// is one, the VF and the setting, and includes the errno.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening the route netlink socket for VF settings: {0}")]
    Open(RtnlError),
    #[error("PF {pf}: no such network interface: {cause}")]
    NoSuchPf { pf: IfName, cause: RtnlError },
    #[error("PF {pf} VF {vf}: reading the VF settings: {cause}")]
    Read {
        pf: IfName,
        vf: u32,
        cause: RtnlError,
    },
    #[error("{pf} is not an SR-IOV PF ({reason}), so it has no VF {vf}")]
    NotSriov {
        pf: IfName,
        vf: u32,
        reason: &'static str,
    },
    #[error("PF {pf} has no VF {vf} (it has {num_vfs} VFs)")]
    NoSuchVf { pf: IfName, vf: u32, num_vfs: u32 },
    #[error("PF {pf} VF {vf}: the kernel's VF information is malformed: {reason}")]
    Malformed { pf: IfName, vf: u32, reason: String },
    #[error("PF {pf} VF {vf}: setting {setting} failed: {hint}: {cause}")]
    Set {
        pf: IfName,
        vf: u32,
        setting: VfSetting,
        hint: String,
        cause: RtnlError,
    },
    #[error("PF {pf} VF {vf}: set {wanted}, but the kernel reads back {read}")]
    Mismatch {
        pf: IfName,
        vf: u32,
        wanted: VfSetting,
        read: VfSetting,
    },
    #[error("bringing {ifname} up: {cause}")]
    LinkUp { ifname: IfName, cause: RtnlError },
}

impl NetlinkError {
    /// The errno behind the failure, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Open(e)
            | NetlinkError::NoSuchPf { cause: e, .. }
            | NetlinkError::Read { cause: e, .. }
            | NetlinkError::Set { cause: e, .. }
            | NetlinkError::LinkUp { cause: e, .. } => e.errno(),
            NetlinkError::NotSriov { .. }
            | NetlinkError::NoSuchVf { .. }
            | NetlinkError::Malformed { .. }
            | NetlinkError::Mismatch { .. } => None,
        }
    }

    /// The setting that failed, for `Set` and `Mismatch`.
    pub fn setting(&self) -> Option<VfSetting> {
        match self {
            NetlinkError::Set { setting, .. } => Some(*setting),
            NetlinkError::Mismatch { wanted, .. } => Some(*wanted),
            _ => None,
        }
    }

    /// Whether the driver refused the setting as unsupported
    /// (`EOPNOTSUPP`, or `EPROTONOSUPPORT` for a VLAN protocol).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::EOPNOTSUPP) | Some(libc::EPROTONOSUPPORT)
        ) && matches!(self, NetlinkError::Set { .. })
    }
}

/// A human hint for a refused setting.
pub(crate) fn set_hint(setting: &VfSetting, errno: Option<i32>, attempts: u32) -> String {
    let kind = setting.kind();
    match errno {
        Some(libc::EOPNOTSUPP) => format!("the driver does not support {kind}"),
        Some(libc::EPROTONOSUPPORT) => match setting {
            VfSetting::Vlan { proto, .. } => {
                format!("the driver does not support VLAN protocol {proto} for VFs")
            }
            _ => format!("the driver does not support {kind}"),
        },
        Some(libc::EINVAL) => match setting {
            VfSetting::Rate { min_tx, .. } if *min_tx != 0 => {
                "the driver rejected the value (many drivers, igb among them, \
                 support no min_tx_rate) or the VF does not exist"
                    .to_owned()
            }
            _ => "the driver rejected the value, or the VF does not exist".to_owned(),
        },
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "permission denied (needs CAP_NET_ADMIN in the PF's network namespace)".to_owned()
        }
        Some(libc::EBUSY) | Some(libc::EAGAIN) => {
            format!("the device stayed busy after {attempts} attempts")
        }
        Some(libc::ENODEV) => "the PF went away".to_owned(),
        Some(e) => format!("the kernel refused it ({})", errno_name(e)),
        None => "no answer from the kernel".to_owned(),
    }
}

/// The VF admin settings interface. Implementations: [`KernelNetlink`]
/// (real) and `testing::RecordingNetlink` (fake for tests).
pub trait VfNetlink: Send + Sync {
    /// The settings of VF `vf` of PF `pf`.
    fn vf_settings(&self, pf: &IfName, vf: u32) -> Result<VfSettings, NetlinkError>;
    /// [`VfNetlink::vf_settings`] plus every MAC on the PF's embedded
    /// switch as the PF reports it, from the same one `RTM_GETLINK`.
    fn pf_view(&self, pf: &IfName, vf: u32) -> Result<PfView, NetlinkError>;
    /// Applies one setting to VF `vf` of PF `pf`.
    fn set_vf(&self, pf: &IfName, vf: u32, setting: VfSetting) -> Result<(), NetlinkError>;
    /// Sets `IFF_UP` on a link (a PF must be up for its VFs to pass traffic).
    fn link_up(&self, ifname: &IfName) -> Result<(), NetlinkError>;
}

/// Sets `setting`, then reads the VF back and fails with
/// [`NetlinkError::Mismatch`] if the kernel reports another value. A
/// setting the driver does not report (spoofchk/trust `None`) is accepted
/// as set.
pub fn apply_verified(
    nl: &dyn VfNetlink,
    pf: &IfName,
    vf: u32,
    setting: VfSetting,
) -> Result<(), NetlinkError> {
    nl.set_vf(pf, vf, setting)?;
    let now = nl.vf_settings(pf, vf)?;
    match now.get(setting.kind()) {
        Some(read) if read != setting => Err(NetlinkError::Mismatch {
            pf: pf.clone(),
            vf,
            wanted: setting,
            read,
        }),
        _ => Ok(()),
    }
}

/// Reads the VF once and fails with [`NetlinkError::Mismatch`] naming the
/// first of `settings` the kernel reports otherwise: one read-back for
/// several settings sent one at a time. A setting the driver does not
/// report is accepted as set.
pub fn verify(
    nl: &dyn VfNetlink,
    pf: &IfName,
    vf: u32,
    settings: &[VfSetting],
) -> Result<(), NetlinkError> {
    if settings.is_empty() {
        return Ok(());
    }
    let now = nl.vf_settings(pf, vf)?;
    for s in settings {
        if let Some(read) = now.get(s.kind()).filter(|r| r != s) {
            return Err(NetlinkError::Mismatch {
                pf: pf.clone(),
                vf,
                wanted: *s,
                read,
            });
        }
    }
    Ok(())
}

/// What one `RTM_GETLINK` of a PF tells about a VF and its neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfView {
    /// The settings of the VF asked about.
    pub vf: VfSettings,
    /// The MACs on the PF's embedded switch: the PF's own address
    /// (`IFLA_ADDRESS`) and every VF's (`IFLA_VF_MAC`), zero MACs left out.
    pub macs: Vec<MacAddr>,
}

/// How often and how long [`KernelNetlink::set_vf`] retries `EBUSY`/`EAGAIN`.
pub const BUSY_ATTEMPTS: u32 = 10;
pub const BUSY_DELAY: Duration = Duration::from_millis(100);

/// The real implementation over rtnetlink, in the network namespace the
/// socket was opened in.
#[derive(Debug)]
pub struct KernelNetlink {
    rtnl: Rtnl,
    attempts: u32,
    delay: Duration,
}

impl KernelNetlink {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub fn new() -> Result<KernelNetlink, NetlinkError> {
        Rtnl::open()
            .map(KernelNetlink::with_rtnl)
            .map_err(NetlinkError::Open)
    }

    /// Uses an already open socket.
    pub fn with_rtnl(rtnl: Rtnl) -> KernelNetlink {
        KernelNetlink {
            rtnl,
            attempts: BUSY_ATTEMPTS,
            delay: BUSY_DELAY,
        }
    }

    /// Changes the `EBUSY`/`EAGAIN` retry policy (`attempts` >= 1 tries).
    pub fn with_busy_retry(mut self, attempts: u32, delay: Duration) -> KernelNetlink {
        self.attempts = attempts.max(1);
        self.delay = delay;
        self
    }

    fn index(&self, pf: &IfName) -> Result<u32, NetlinkError> {
        self.rtnl
            .link_index(pf.as_str())
            .map_err(|cause| NetlinkError::NoSuchPf {
                pf: pf.clone(),
                cause,
            })
    }
}

impl KernelNetlink {
    /// The PF's `RTM_NEWLINK` payload with its VF information.
    fn pf_link(&self, pf: &IfName, vf: u32) -> Result<Vec<u8>, NetlinkError> {
        let replies = self
            .rtnl
            .request_raw(get_vf_request(pf), 0)
            .map_err(|cause| {
                if cause.errno() == Some(libc::ENODEV) {
                    NetlinkError::NoSuchPf {
                        pf: pf.clone(),
                        cause,
                    }
                } else {
                    NetlinkError::Read {
                        pf: pf.clone(),
                        vf,
                        cause,
                    }
                }
            })?;
        replies
            .into_iter()
            .find(|r| r.message_type == RTM_NEWLINK)
            .map(|r| r.payload)
            .ok_or_else(|| NetlinkError::Malformed {
                pf: pf.clone(),
                vf,
                reason: "no RTM_NEWLINK in the answer".to_owned(),
            })
    }
}

impl VfNetlink for KernelNetlink {
    fn vf_settings(&self, pf: &IfName, vf: u32) -> Result<VfSettings, NetlinkError> {
        parse_vf_settings(pf, vf, &self.pf_link(pf, vf)?)
    }

    fn pf_view(&self, pf: &IfName, vf: u32) -> Result<PfView, NetlinkError> {
        let payload = self.pf_link(pf, vf)?;
        Ok(PfView {
            vf: parse_vf_settings(pf, vf, &payload)?,
            macs: parse_pf_macs(&payload),
        })
    }

    fn set_vf(&self, pf: &IfName, vf: u32, setting: VfSetting) -> Result<(), NetlinkError> {
        let index = self.index(pf)?;
        retry_busy(self.attempts, self.delay, || {
            self.rtnl
                .request(set_vf_request(index, vf, setting), 0)
                .map(|_| ())
        })
        .map_err(|(cause, attempts)| NetlinkError::Set {
            pf: pf.clone(),
            vf,
            setting,
            hint: set_hint(&setting, cause.errno(), attempts),
            cause,
        })
    }

    fn link_up(&self, ifname: &IfName) -> Result<(), NetlinkError> {
        let err = |cause| NetlinkError::LinkUp {
            ifname: ifname.clone(),
            cause,
        };
        let index = self.rtnl.link_index(ifname.as_str()).map_err(err)?;
        self.rtnl.set_link_up(index).map_err(err)
    }
}

/// Runs `op` until it succeeds, fails with something other than the
/// kernel's `EBUSY`/`EAGAIN`, or has run `attempts` times, sleeping `delay`
/// between tries. The error comes with the number of tries made.
fn retry_busy(
    attempts: u32,
    delay: Duration,
    mut op: impl FnMut() -> Result<(), RtnlError>,
) -> Result<(), (RtnlError, u32)> {
    let mut attempt = 1;
    loop {
        match op() {
            Ok(()) => return Ok(()),
            Err(cause) => {
                let busy = matches!(cause, RtnlError::Kernel { .. })
                    && matches!(cause.errno(), Some(libc::EBUSY) | Some(libc::EAGAIN));
                if !busy || attempt >= attempts {
                    return Err((cause, attempt));
                }
                attempt += 1;
                std::thread::sleep(delay);
            }
        }
    }
}

const RTM_NEWLINK: u16 = 16;
/// Size of `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_VFINFO_LIST: u16 = 22;
/// From include/uapi/linux/if_link.h (37 is IFLA_LINK_NETNSID).
const IFLA_NUM_VF: u16 = 21;
const IFLA_VF_INFO: u16 = 1;
const IFLA_VF_MAC: u16 = 1;
const IFLA_VF_VLAN: u16 = 2;
const IFLA_VF_TX_RATE: u16 = 3;
const IFLA_VF_SPOOFCHK: u16 = 4;
const IFLA_VF_LINK_STATE: u16 = 5;
const IFLA_VF_RATE: u16 = 6;
const IFLA_VF_TRUST: u16 = 9;
const IFLA_VF_VLAN_LIST: u16 = 12;
const IFLA_VF_VLAN_INFO: u16 = 1;

/// `RTM_GETLINK` for `pf` by name, asking for VF information without stats.
fn get_vf_request(pf: &IfName) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(pf.as_str().to_owned()));
    msg.attributes.push(LinkAttribute::ExtMask(vec![
        LinkExtentMask::Vf,
        LinkExtentMask::SkipStats,
    ]));
    RouteNetlinkMessage::GetLink(msg)
}

/// `RTM_SETLINK` on ifindex `index` with one VF attribute.
fn set_vf_request(index: u32, vf: u32, setting: VfSetting) -> RouteNetlinkMessage {
    let info = match setting {
        VfSetting::Mac(m) => VfInfo::Mac(VfInfoMac::new(vf, &m.0)),
        VfSetting::Vlan {
            vlan,
            qos,
            proto: VlanProto::Dot1Q,
        } => VfInfo::Vlan(VfInfoVlan::new(
            vf,
            u32::from(vlan.get()),
            u32::from(qos.get()),
        )),
        VfSetting::Vlan {
            vlan,
            qos,
            proto: VlanProto::Dot1Ad,
        } => VfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
            vf,
            u32::from(vlan.get()),
            u32::from(qos.get()),
            VlanProtocol::Ieee8021Ad,
        ))]),
        VfSetting::SpoofChk(b) => VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, b)),
        VfSetting::Trust(b) => VfInfo::Trust(VfInfoTrust::new(vf, b)),
        VfSetting::LinkState(s) => VfInfo::LinkState(VfInfoLinkState::new(
            vf,
            match s {
                LinkState::Auto => VfLinkState::Auto,
                LinkState::Enable => VfLinkState::Enable,
                LinkState::Disable => VfLinkState::Disable,
            },
        )),
        VfSetting::Rate { min_tx, max_tx } => VfInfo::Rate(VfInfoRate::new(vf, min_tx, max_tx)),
    };
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![info])]));
    RouteNetlinkMessage::SetLink(msg)
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

/// One netlink attribute: type (flags masked off) and value.
#[derive(Clone, Copy)]
struct Attr<'a> {
    kind: u16,
    value: &'a [u8],
}

/// Iterates the attributes in `b`, stopping at the first malformed one.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = b.get(4..len)?;
        b = b.get((len + 3) & !3..).unwrap_or_default();
        Some(Attr { kind, value })
    })
}

/// The PF's own address and every VF's MAC in an `RTM_NEWLINK` payload,
/// zero MACs left out. What cannot be decoded is skipped: the caller reads
/// the claimed VF with [`parse_vf_settings`], which fails on malformed data.
fn parse_pf_macs(payload: &[u8]) -> Vec<MacAddr> {
    let mut macs = Vec::new();
    let link_attrs = payload.get(IFINFOMSG_LEN..).unwrap_or_default();
    for a in attrs(link_attrs) {
        match a.kind {
            IFLA_ADDRESS => {
                if let Ok(b) = <[u8; 6]>::try_from(a.value) {
                    macs.push(MacAddr(b));
                }
            }
            IFLA_VFINFO_LIST => {
                let vf_macs = attrs(a.value)
                    .filter(|e| e.kind == IFLA_VF_INFO)
                    .filter_map(|e| attrs(e.value).find(|x| x.kind == IFLA_VF_MAC))
                    .filter_map(|x| x.value.get(4..10)?.try_into().ok().map(MacAddr));
                macs.extend(vf_macs);
            }
            _ => {}
        }
    }
    macs.retain(|m| !m.is_zero());
    macs
}

/// Decodes VF `vf` from an `RTM_NEWLINK` payload (`ifinfomsg` + attributes).
fn parse_vf_settings(pf: &IfName, vf: u32, payload: &[u8]) -> Result<VfSettings, NetlinkError> {
    let malformed = |reason: String| NetlinkError::Malformed {
        pf: pf.clone(),
        vf,
        reason,
    };
    let link_attrs = payload
        .get(IFINFOMSG_LEN..)
        .ok_or_else(|| malformed("RTM_NEWLINK shorter than struct ifinfomsg".to_owned()))?;
    let mut num_vfs = None;
    let mut list = None;
    for a in attrs(link_attrs) {
        match a.kind {
            IFLA_NUM_VF => num_vfs = ne_u32(a.value, 0),
            IFLA_VFINFO_LIST => list = Some(a.value),
            _ => {}
        }
    }
    let Some(num_vfs) = num_vfs else {
        return Err(NetlinkError::NotSriov {
            pf: pf.clone(),
            vf,
            reason: "the kernel reports no IFLA_NUM_VF: not a PCI device with SR-IOV",
        });
    };
    if vf >= num_vfs {
        return Err(NetlinkError::NoSuchVf {
            pf: pf.clone(),
            vf,
            num_vfs,
        });
    }
    let Some(list) = list else {
        return Err(NetlinkError::NotSriov {
            pf: pf.clone(),
            vf,
            reason: "its driver reports no VF information (IFLA_VFINFO_LIST)",
        });
    };
    let entry = attrs(list)
        .filter(|a| a.kind == IFLA_VF_INFO)
        .find(|a| {
            attrs(a.value)
                .find(|x| x.kind == IFLA_VF_MAC)
                .and_then(|x| ne_u32(x.value, 0))
                == Some(vf)
        })
        .ok_or_else(|| malformed(format!("VF {vf} is missing from IFLA_VFINFO_LIST")))?;

    let short = |what: &str| malformed(format!("{what} is too short"));
    let mut mac = None;
    let mut vlan_qos = None;
    let mut proto = None;
    let mut spoofchk = None;
    let mut trust = None;
    let mut link_state = None;
    let mut rate = None;
    let mut tx_rate = None;
    for a in attrs(entry.value) {
        let v = a.value;
        match a.kind {
            IFLA_VF_MAC => {
                let b: [u8; 6] = v
                    .get(4..10)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| short("IFLA_VF_MAC"))?;
                mac = Some(MacAddr(b));
            }
            IFLA_VF_VLAN => {
                let vlan = ne_u32(v, 4).ok_or_else(|| short("IFLA_VF_VLAN"))?;
                let qos = ne_u32(v, 8).ok_or_else(|| short("IFLA_VF_VLAN"))?;
                vlan_qos = Some((vlan, qos));
            }
            IFLA_VF_VLAN_LIST => {
                if let Some(info) = attrs(v).find(|x| x.kind == IFLA_VF_VLAN_INFO) {
                    let p: [u8; 2] = info
                        .value
                        .get(12..14)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| short("IFLA_VF_VLAN_INFO"))?;
                    proto = Some(u16::from_be_bytes(p));
                }
            }
            IFLA_VF_SPOOFCHK => {
                let s = ne_u32(v, 4).ok_or_else(|| short("IFLA_VF_SPOOFCHK"))?;
                spoofchk = (s != u32::MAX).then_some(s != 0);
            }
            IFLA_VF_TRUST => {
                let s = ne_u32(v, 4).ok_or_else(|| short("IFLA_VF_TRUST"))?;
                trust = (s != u32::MAX).then_some(s != 0);
            }
            IFLA_VF_LINK_STATE => {
                let s = ne_u32(v, 4).ok_or_else(|| short("IFLA_VF_LINK_STATE"))?;
                link_state = Some(
                    LinkState::from_kernel(s)
                        .ok_or_else(|| malformed(format!("unknown VF link state {s}")))?,
                );
            }
            IFLA_VF_RATE => {
                let min = ne_u32(v, 4).ok_or_else(|| short("IFLA_VF_RATE"))?;
                let max = ne_u32(v, 8).ok_or_else(|| short("IFLA_VF_RATE"))?;
                rate = Some((min, max));
            }
            IFLA_VF_TX_RATE => {
                tx_rate = Some(ne_u32(v, 4).ok_or_else(|| short("IFLA_VF_TX_RATE"))?);
            }
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| malformed("no IFLA_VF_MAC".to_owned()))?;
    let (vlan, qos) = vlan_qos.ok_or_else(|| malformed("no IFLA_VF_VLAN".to_owned()))?;
    let vlan_proto = match proto {
        None => VlanProto::Dot1Q,
        Some(p) => VlanProto::from_ethertype(p)
            .ok_or_else(|| malformed(format!("unknown VLAN protocol {p:#06x}")))?,
    };
    let (min_tx_rate, max_tx_rate) = match (rate, tx_rate) {
        (Some(r), _) => r,
        (None, Some(max)) => (0, max),
        (None, None) => return Err(malformed("no IFLA_VF_RATE".to_owned())),
    };
    Ok(VfSettings {
        mac,
        vlan: VlanId::new(vlan).ok_or_else(|| malformed(format!("VLAN id {vlan} out of range")))?,
        qos: Qos::new(qos).ok_or_else(|| malformed(format!("QoS {qos} out of range")))?,
        vlan_proto,
        spoofchk,
        trust,
        link_state,
        min_tx_rate,
        max_tx_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Call, RecordingNetlink};
    use netlink_packet_core::Emitable;
    use std::sync::Arc;
    use std::time::Instant;

    fn ifname(s: &str) -> IfName {
        s.parse().unwrap()
    }

    /// A netlink attribute as the kernel lays it out: u16 len, u16 type,
    /// value, padding to 4 bytes.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() & 3 != 0 {
            v.push(0);
        }
        v
    }

    /// struct ifinfomsg { u8 family, u8 pad, u16 type, i32 index, u32 flags, u32 change }
    fn ifinfomsg(index: u32) -> Vec<u8> {
        let mut v = vec![0u8, 0, 0, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend_from_slice(&[0u8; 8]);
        v
    }

    fn u32s(vals: &[u32]) -> Vec<u8> {
        vals.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    fn emitted(msg: &RouteNetlinkMessage) -> Vec<u8> {
        let (RouteNetlinkMessage::SetLink(l) | RouteNetlinkMessage::GetLink(l)) = msg else {
            panic!("not a link message: {msg:?}")
        };
        let mut buf = vec![0u8; l.buffer_len()];
        l.emit(&mut buf);
        buf
    }

    /// The expected RTM_SETLINK payload: ifinfomsg(index) +
    /// IFLA_VFINFO_LIST { IFLA_VF_INFO { <attr> } }.
    fn expected_set(index: u32, vf_attr: Vec<u8>) -> Vec<u8> {
        let mut v = ifinfomsg(index);
        v.extend(nla(22, &nla(1, &vf_attr)));
        v
    }

    #[test]
    fn mac_is_ifla_vf_mac_with_32_byte_address_field() {
        let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        let got = emitted(&set_vf_request(7, 3, VfSetting::Mac(mac)));
        // struct ifla_vf_mac { __u32 vf; __u8 mac[32]; }
        let mut s = u32s(&[3]);
        s.extend_from_slice(&[0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
        s.extend_from_slice(&[0u8; 26]);
        assert_eq!(s.len(), 36);
        assert_eq!(got, expected_set(7, nla(1, &s)));
        // and the outer lengths are what the kernel walks
        assert_eq!(got.len(), 16 + 4 + 4 + 4 + 36);
        assert_eq!(u16::from_ne_bytes([got[16], got[17]]), 48);
        assert_eq!(u16::from_ne_bytes([got[20], got[21]]), 44);
        assert_eq!(u16::from_ne_bytes([got[24], got[25]]), 40);
    }

    #[test]
    fn dot1q_vlan_is_ifla_vf_vlan() {
        let set = VfSetting::Vlan {
            vlan: VlanId::new(100).unwrap(),
            qos: Qos::new(5).unwrap(),
            proto: VlanProto::Dot1Q,
        };
        // struct ifla_vf_vlan { __u32 vf; __u32 vlan; __u32 qos; }
        assert_eq!(
            emitted(&set_vf_request(2, 1, set)),
            expected_set(2, nla(2, &u32s(&[1, 100, 5])))
        );
    }

    #[test]
    fn dot1ad_vlan_is_a_vlan_list_with_big_endian_proto() {
        let set = VfSetting::Vlan {
            vlan: VlanId::new(4094).unwrap(),
            qos: Qos::new(7).unwrap(),
            proto: VlanProto::Dot1Ad,
        };
        // struct ifla_vf_vlan_info { __u32 vf; __u32 vlan; __u32 qos; __be16 vlan_proto; } (16 bytes)
        let mut info = u32s(&[0, 4094, 7]);
        info.extend_from_slice(&[0x88, 0xa8, 0, 0]);
        assert_eq!(info.len(), 16);
        assert_eq!(
            emitted(&set_vf_request(9, 0, set)),
            expected_set(9, nla(12, &nla(1, &info)))
        );
    }

    #[test]
    fn spoofchk_trust_link_state_and_rate_layouts() {
        let cases = [
            (VfSetting::SpoofChk(false), nla(4, &u32s(&[6, 0]))),
            (VfSetting::SpoofChk(true), nla(4, &u32s(&[6, 1]))),
            (VfSetting::Trust(true), nla(9, &u32s(&[6, 1]))),
            (VfSetting::Trust(false), nla(9, &u32s(&[6, 0]))),
            (
                VfSetting::LinkState(LinkState::Auto),
                nla(5, &u32s(&[6, 0])),
            ),
            (
                VfSetting::LinkState(LinkState::Enable),
                nla(5, &u32s(&[6, 1])),
            ),
            (
                VfSetting::LinkState(LinkState::Disable),
                nla(5, &u32s(&[6, 2])),
            ),
            // struct ifla_vf_rate { __u32 vf; __u32 min_tx_rate; __u32 max_tx_rate; }
            (
                VfSetting::Rate {
                    min_tx: 10,
                    max_tx: 1000,
                },
                nla(6, &u32s(&[6, 10, 1000])),
            ),
        ];
        for (setting, attr) in cases {
            assert_eq!(
                emitted(&set_vf_request(4, 6, setting)),
                expected_set(4, attr),
                "{setting}"
            );
        }
    }

    #[test]
    fn get_request_names_the_pf_and_asks_for_vfs_without_stats() {
        let got = emitted(&get_vf_request(&ifname("enp1s0f0")));
        let mut want = ifinfomsg(0);
        want.extend(nla(3, b"enp1s0f0\0")); // IFLA_IFNAME
        want.extend(nla(29, &u32s(&[1 | 8]))); // IFLA_EXT_MASK = VF | SKIP_STATS
        assert_eq!(got, want);
    }

    /// One IFLA_VF_INFO as rtnl_fill_vfinfo() writes it.
    struct KVf {
        vf: u32,
        mac: [u8; 6],
        vlan: u32,
        qos: u32,
        proto: u16,
        spoofchk: u32,
        trust: u32,
        link_state: u32,
        min: u32,
        max: u32,
    }

    fn kvf(vf: u32) -> KVf {
        KVf {
            vf,
            mac: [0; 6],
            vlan: 0,
            qos: 0,
            proto: 0x8100,
            spoofchk: 1,
            trust: 0,
            link_state: 0,
            min: 0,
            max: 0,
        }
    }

    fn vf_info(k: &KVf, nested_flag: u16) -> Vec<u8> {
        let mut body = Vec::new();
        let mut mac = u32s(&[k.vf]);
        mac.extend_from_slice(&k.mac);
        mac.extend_from_slice(&[0u8; 26]);
        body.extend(nla(1, &mac));
        body.extend(nla(13, &[0xffu8; 36])); // IFLA_VF_BROADCAST
        body.extend(nla(2, &u32s(&[k.vf, k.vlan, k.qos])));
        let mut info = u32s(&[k.vf, k.vlan, k.qos]);
        info.extend_from_slice(&k.proto.to_be_bytes());
        info.extend_from_slice(&[0, 0]);
        body.extend(nla(12 | nested_flag, &nla(1, &info)));
        body.extend(nla(3, &u32s(&[k.vf, k.max])));
        body.extend(nla(4, &u32s(&[k.vf, k.spoofchk])));
        body.extend(nla(5, &u32s(&[k.vf, k.link_state])));
        body.extend(nla(6, &u32s(&[k.vf, k.min, k.max])));
        body.extend(nla(7, &u32s(&[k.vf, u32::MAX]))); // RSS_QUERY_EN
        body.extend(nla(9, &u32s(&[k.vf, k.trust])));
        nla(1 | nested_flag, &body)
    }

    fn newlink(num_vfs: Option<u32>, vfs: &[KVf], nested_flag: u16) -> Vec<u8> {
        let mut v = ifinfomsg(5);
        v.extend(nla(3, b"eth0\0"));
        v.extend(nla(4, &u32s(&[1500]))); // IFLA_MTU
        if let Some(n) = num_vfs {
            v.extend(nla(IFLA_NUM_VF, &u32s(&[n])));
        }
        if !vfs.is_empty() {
            let list: Vec<u8> = vfs.iter().flat_map(|k| vf_info(k, nested_flag)).collect();
            v.extend(nla(22 | nested_flag, &list));
        }
        v.extend(nla(16, &[1u8])); // IFLA_OPERSTATE, after the list
        v
    }

    #[test]
    fn pf_macs_are_the_pf_address_and_every_vf_mac_but_zero_ones() {
        for nested_flag in [0u16, 0x8000] {
            let (mut a, b, mut c) = (kvf(0), kvf(1), kvf(2));
            a.mac = [0x02, 0, 0, 0, 0, 0x0a];
            c.mac = [0x52, 0x54, 0, 0, 0, 0x0c];
            let mut payload = newlink(Some(3), &[a, b, c], nested_flag);
            payload.extend(nla(1, &[0x00, 0x1b, 0x21, 1, 2, 3])); // IFLA_ADDRESS
            payload.extend(nla(2, &[0xff; 6])); // IFLA_BROADCAST: not a MAC in use
            let got = parse_pf_macs(&payload);
            assert_eq!(
                got,
                vec![
                    MacAddr([0x02, 0, 0, 0, 0, 0x0a]),
                    MacAddr([0x52, 0x54, 0, 0, 0, 0x0c]),
                    MacAddr([0x00, 0x1b, 0x21, 1, 2, 3]),
                ]
            );
        }
        // Truncated data yields what could be read, never a panic.
        assert!(parse_pf_macs(&[0u8; 3]).is_empty());
    }

    #[test]
    fn parses_the_right_vf_from_the_kernel_layout() {
        for nested_flag in [0u16, 0x8000] {
            let mut one = kvf(1);
            one.mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];
            one.vlan = 42;
            one.qos = 3;
            one.proto = 0x88a8;
            one.spoofchk = 0;
            one.trust = 1;
            one.link_state = 2;
            one.min = 5;
            one.max = 900;
            let p = newlink(Some(3), &[kvf(0), one, kvf(2)], nested_flag);
            let s = parse_vf_settings(&ifname("eth0"), 1, &p).unwrap();
            assert_eq!(
                s,
                VfSettings {
                    mac: "02:aa:bb:cc:dd:01".parse().unwrap(),
                    vlan: VlanId::new(42).unwrap(),
                    qos: Qos::new(3).unwrap(),
                    vlan_proto: VlanProto::Dot1Ad,
                    spoofchk: Some(false),
                    trust: Some(true),
                    link_state: Some(LinkState::Disable),
                    min_tx_rate: 5,
                    max_tx_rate: 900,
                }
            );
            let zero = parse_vf_settings(&ifname("eth0"), 2, &p).unwrap();
            assert_eq!(zero, VfSettings::default());
        }
    }

    #[test]
    fn unreported_spoofchk_and_trust_are_none() {
        let mut k = kvf(0);
        k.spoofchk = u32::MAX;
        k.trust = u32::MAX;
        let s = parse_vf_settings(&ifname("eth0"), 0, &newlink(Some(1), &[k], 0)).unwrap();
        assert_eq!(s.spoofchk, None);
        assert_eq!(s.trust, None);
        assert_eq!(s.get(VfSettingKind::SpoofChk), None);
        assert_eq!(
            s.get(VfSettingKind::Mac),
            Some(VfSetting::Mac(MacAddr::ZERO))
        );
    }

    #[test]
    fn missing_pf_support_and_missing_vfs_are_clear_errors() {
        let pf = ifname("eth0");
        let e = parse_vf_settings(&pf, 0, &newlink(None, &[], 0)).unwrap_err();
        assert!(matches!(e, NetlinkError::NotSriov { .. }), "{e}");
        assert!(
            e.to_string().starts_with("eth0 is not an SR-IOV PF ("),
            "{e}"
        );
        assert!(e.to_string().ends_with("so it has no VF 0"), "{e}");

        let e = parse_vf_settings(&pf, 0, &newlink(Some(0), &[], 0)).unwrap_err();
        assert_eq!(e.to_string(), "PF eth0 has no VF 0 (it has 0 VFs)");
        let e = parse_vf_settings(&pf, 2, &newlink(Some(2), &[kvf(0), kvf(1)], 0)).unwrap_err();
        assert_eq!(e.to_string(), "PF eth0 has no VF 2 (it has 2 VFs)");

        let e = parse_vf_settings(&pf, 1, &newlink(Some(2), &[], 0)).unwrap_err();
        assert!(
            e.to_string().contains("driver reports no VF information"),
            "{e}"
        );

        let e = parse_vf_settings(&pf, 1, &newlink(Some(2), &[kvf(0)], 0)).unwrap_err();
        assert!(matches!(e, NetlinkError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("VF 1 is missing"), "{e}");
    }

    #[test]
    fn truncated_or_odd_kernel_data_is_malformed_not_a_panic() {
        let pf = ifname("eth0");
        let mut k = kvf(0);
        k.link_state = 7;
        let e = parse_vf_settings(&pf, 0, &newlink(Some(1), &[k], 0)).unwrap_err();
        assert!(e.to_string().contains("unknown VF link state 7"), "{e}");
        let mut k = kvf(0);
        k.vlan = 4095;
        let e = parse_vf_settings(&pf, 0, &newlink(Some(1), &[k], 0)).unwrap_err();
        assert!(e.to_string().contains("VLAN id 4095"), "{e}");
        let mut k = kvf(0);
        k.proto = 0x1234;
        let e = parse_vf_settings(&pf, 0, &newlink(Some(1), &[k], 0)).unwrap_err();
        assert!(
            e.to_string().contains("unknown VLAN protocol 0x1234"),
            "{e}"
        );
        let full = newlink(Some(2), &[kvf(0), kvf(1)], 0);
        for cut in 0..full.len() {
            // must not panic on any truncation
            let _ = parse_vf_settings(&pf, 1, &full[..cut]);
        }
        assert!(parse_vf_settings(&pf, 0, &[0u8; 3]).is_err());
    }

    #[test]
    fn set_errors_name_pf_vf_setting_errno_and_hint() {
        let nl = RecordingNetlink::new();
        let pf = ifname("eth0");
        nl.add_pf(&pf, 2);
        nl.fail_setting(VfSettingKind::LinkState, libc::EOPNOTSUPP);
        let e = nl
            .set_vf(&pf, 1, VfSetting::LinkState(LinkState::Enable))
            .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("PF eth0 VF 1: setting link-state enable failed: the driver does not support the VF link state: "), "{text}");
        assert!(text.contains("EOPNOTSUPP"), "{text}");
        assert_eq!(e.errno(), Some(libc::EOPNOTSUPP));
        assert!(e.is_unsupported());
        assert_eq!(e.setting(), Some(VfSetting::LinkState(LinkState::Enable)));

        let vlan = VfSetting::Vlan {
            vlan: VlanId::new(5).unwrap(),
            qos: Qos::default(),
            proto: VlanProto::Dot1Ad,
        };
        assert!(set_hint(&vlan, Some(libc::EPROTONOSUPPORT), 1).contains("802.1ad"));
        let rate = VfSetting::Rate {
            min_tx: 1,
            max_tx: 0,
        };
        assert!(set_hint(&rate, Some(libc::EINVAL), 1).contains("min_tx_rate"));
        assert!(set_hint(&rate, Some(libc::EBUSY), 10).contains("busy after 10 attempts"));
    }

    #[test]
    fn settings_get_and_apply_round_trip_for_every_kind() {
        let mut s = VfSettings::default();
        let settings = [
            VfSetting::Mac("02:00:00:00:00:09".parse().unwrap()),
            VfSetting::Vlan {
                vlan: VlanId::new(7).unwrap(),
                qos: Qos::new(1).unwrap(),
                proto: VlanProto::Dot1Ad,
            },
            VfSetting::SpoofChk(false),
            VfSetting::Trust(true),
            VfSetting::LinkState(LinkState::Disable),
            VfSetting::Rate {
                min_tx: 0,
                max_tx: 10,
            },
        ];
        for (set, kind) in settings.iter().zip(VfSettingKind::ALL) {
            assert_eq!(set.kind(), kind);
            assert_ne!(s.get(kind), Some(*set));
            s.apply(*set);
            assert_eq!(s.get(kind), Some(*set));
        }
    }

    #[test]
    fn serde_round_trip() {
        let mut s = VfSettings::default();
        s.apply(VfSetting::Vlan {
            vlan: VlanId::new(12).unwrap(),
            qos: Qos::new(2).unwrap(),
            proto: VlanProto::Dot1Ad,
        });
        s.trust = None;
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"vlan_proto\":\"802.1ad\""), "{json}");
        assert!(json.contains("\"trust\":null"), "{json}");
        assert_eq!(serde_json::from_str::<VfSettings>(&json).unwrap(), s);
        let set = VfSetting::Rate {
            min_tx: 0,
            max_tx: 100,
        };
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"{"rate":{"min_tx":0,"max_tx":100}}"#);
        assert_eq!(serde_json::from_str::<VfSetting>(&json).unwrap(), set);
    }

    #[test]
    fn recording_fake_keeps_state_and_call_order() {
        let nl = RecordingNetlink::new();
        let pf = ifname("eth0");
        nl.add_pf(&pf, 2);
        assert_eq!(nl.state(&pf, 1), Some(VfSettings::default()));
        assert_eq!(nl.state(&pf, 2), None);
        let mac = VfSetting::Mac("02:00:00:00:00:01".parse().unwrap());
        nl.set_vf(&pf, 1, mac).unwrap();
        nl.set_vf(&pf, 1, VfSetting::Trust(true)).unwrap();
        let s = nl.vf_settings(&pf, 1).unwrap();
        assert_eq!(s.get(VfSettingKind::Mac), Some(mac));
        assert_eq!(s.trust, Some(true));
        assert_eq!(nl.vf_settings(&pf, 0).unwrap(), VfSettings::default());
        nl.link_up(&pf).unwrap();
        assert!(nl.is_up(&pf));
        assert_eq!(
            nl.calls(),
            vec![
                Call::SetVf {
                    pf: pf.clone(),
                    vf: 1,
                    setting: mac
                },
                Call::SetVf {
                    pf: pf.clone(),
                    vf: 1,
                    setting: VfSetting::Trust(true)
                },
                Call::VfSettings {
                    pf: pf.clone(),
                    vf: 1
                },
                Call::VfSettings {
                    pf: pf.clone(),
                    vf: 0
                },
                Call::LinkUp { ifname: pf.clone() },
            ]
        );
        assert_eq!(nl.set_calls(&pf, 1), vec![mac, VfSetting::Trust(true)]);
        assert!(nl.set_calls(&pf, 0).is_empty());

        let other = ifname("eth9");
        let e = nl.vf_settings(&other, 0).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV));
        let e = nl.vf_settings(&pf, 5).unwrap_err();
        assert_eq!(e.to_string(), "PF eth0 has no VF 5 (it has 2 VFs)");
        let e = nl.set_vf(&pf, 5, VfSetting::Trust(true)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        // failed calls are recorded too
        assert_eq!(nl.calls().len(), 8);
        nl.clear_calls();
        assert!(nl.calls().is_empty());
    }

    #[test]
    fn recording_fake_injects_failures_without_changing_state() {
        let nl = RecordingNetlink::new();
        let pf = ifname("eth0");
        nl.add_pf(&pf, 1);
        nl.fail_call(1, libc::EIO);
        nl.set_vf(&pf, 0, VfSetting::SpoofChk(false)).unwrap();
        let e = nl.set_vf(&pf, 0, VfSetting::Trust(true)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EIO));
        assert_eq!(nl.state(&pf, 0).unwrap().trust, Some(false));
        // only that call
        nl.set_vf(&pf, 0, VfSetting::Trust(true)).unwrap();
        assert_eq!(nl.state(&pf, 0).unwrap().trust, Some(true));
        nl.fail_call(3, libc::EIO);
        assert_eq!(nl.vf_settings(&pf, 0).unwrap_err().errno(), Some(libc::EIO));
        nl.fail_call(4, libc::EPERM);
        assert_eq!(nl.link_up(&pf).unwrap_err().errno(), Some(libc::EPERM));
        assert!(!nl.is_up(&pf));

        nl.fail_setting(VfSettingKind::Rate, libc::EINVAL);
        let rate = VfSetting::Rate {
            min_tx: 1,
            max_tx: 2,
        };
        assert_eq!(
            nl.set_vf(&pf, 0, rate).unwrap_err().errno(),
            Some(libc::EINVAL)
        );
        assert_eq!(nl.state(&pf, 0).unwrap().max_tx_rate, 0);
        nl.clear_faults();
        nl.set_vf(&pf, 0, rate).unwrap();
        assert_eq!(nl.state(&pf, 0).unwrap().max_tx_rate, 2);
    }

    #[test]
    fn apply_verified_reads_back_and_reports_mismatch() {
        let nl = RecordingNetlink::new();
        let pf = ifname("eth0");
        nl.add_pf(&pf, 1);
        let vlan = VfSetting::Vlan {
            vlan: VlanId::new(10).unwrap(),
            qos: Qos::default(),
            proto: VlanProto::Dot1Q,
        };
        apply_verified(&nl, &pf, 0, vlan).unwrap();
        assert_eq!(
            nl.calls(),
            vec![
                Call::SetVf {
                    pf: pf.clone(),
                    vf: 0,
                    setting: vlan
                },
                Call::VfSettings {
                    pf: pf.clone(),
                    vf: 0
                }
            ]
        );
        nl.ignore_setting(VfSettingKind::SpoofChk);
        let e = apply_verified(&nl, &pf, 0, VfSetting::SpoofChk(false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PF eth0 VF 0: set spoofchk off, but the kernel reads back spoofchk on"
        );
        // a driver that does not report trust: accepted as set
        let mut s = nl.state(&pf, 0).unwrap();
        s.trust = None;
        nl.set_state(&pf, 0, s);
        nl.ignore_setting(VfSettingKind::Trust);
        apply_verified(&nl, &pf, 0, VfSetting::Trust(true)).unwrap();
        // a failing set is reported as such, without a read-back
        nl.fail_setting(VfSettingKind::Mac, libc::EOPNOTSUPP);
        nl.clear_calls();
        let e =
            apply_verified(&nl, &pf, 0, VfSetting::Mac(MacAddr([2, 0, 0, 0, 0, 1]))).unwrap_err();
        assert!(e.is_unsupported());
        assert_eq!(nl.calls().len(), 1);
    }

    #[test]
    fn recording_fake_sleeps_outside_its_lock() {
        let nl = Arc::new(RecordingNetlink::new());
        let pf = ifname("eth0");
        nl.add_pf(&pf, 8);
        nl.set_delay(Duration::from_millis(200));
        let start = Instant::now();
        std::thread::scope(|s| {
            for vf in 0..8u32 {
                let nl = Arc::clone(&nl);
                let pf = pf.clone();
                s.spawn(move || nl.set_vf(&pf, vf, VfSetting::Trust(true)).unwrap());
            }
        });
        let took = start.elapsed();
        // serialized would be 1.6 s
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        for vf in 0..8 {
            assert_eq!(nl.state(&pf, vf).unwrap().trust, Some(true));
        }
        assert_eq!(nl.calls().len(), 8);
    }

    fn kernel(errno: i32) -> RtnlError {
        RtnlError::Kernel {
            request: "RTM_SETLINK".to_owned(),
            errno,
            message: None,
        }
    }

    #[test]
    fn busy_is_retried_a_bounded_number_of_times() {
        // EBUSY twice, then success
        let mut n = 0;
        let start = Instant::now();
        retry_busy(10, Duration::from_millis(20), || {
            n += 1;
            if n <= 2 {
                Err(kernel(libc::EBUSY))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(n, 3);
        assert!(start.elapsed() >= Duration::from_millis(40));
        // EAGAIN forever: gives up after `attempts` tries
        let mut n = 0;
        let (e, tries) = retry_busy(4, Duration::ZERO, || {
            n += 1;
            Err(kernel(libc::EAGAIN))
        })
        .unwrap_err();
        assert_eq!((n, tries, e.errno()), (4, 4, Some(libc::EAGAIN)));
        // anything else is not retried
        let mut n = 0;
        let (e, tries) = retry_busy(10, Duration::ZERO, || {
            n += 1;
            Err(kernel(libc::EOPNOTSUPP))
        })
        .unwrap_err();
        assert_eq!((n, tries, e.errno()), (1, 1, Some(libc::EOPNOTSUPP)));
        // nor is a timeout (that would multiply the wait)
        let mut n = 0;
        let _ = retry_busy(10, Duration::ZERO, || {
            n += 1;
            Err(RtnlError::Timeout {
                request: "x".to_owned(),
                timeout: Duration::from_secs(5),
            })
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn trait_object_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn VfNetlink>();
        assert_send_sync::<KernelNetlink>();
        assert_send_sync::<RecordingNetlink>();
    }
}
