//! netdev mode: a VF that keeps its kernel driver (igbvf, iavf, mlx5...)
//! and whose network interface moves into the container's network
//! namespace, renamed (`net1`, `net2`... unless the request names it) and
//! configured (MAC, MTU, addresses, routes); on release it comes back to the
//! host namespace under its original name.
//!
//! Kernel interfaces: rtnetlink through [`IfConf`] in the host namespace and
//! in the container's (`/proc/<pid>/ns/net`, named namespaces under
//! `/run/netns`); `IFLA_NET_NS_FD` moves; the VF's `net/` directory in sysfs
//! (through [`SysfsRoot::netdevs`]) to find its interface in the host
//! namespace. Sysfs shows only the interfaces of the namespace it was
//! mounted in, so a VF whose interface is elsewhere has an empty `net/`.
//!
//! Where a netdev may be when it is released, searched in this order:
//! 1. in the host namespace under a name the VF's sysfs `net/` lists: the
//!    kernel moves a physical interface back to the initial namespace by
//!    itself when the container's namespace is destroyed, renamed `devN`
//!    when its name is taken there; Docker moves it back itself;
//! 2. in the namespace of the pid recorded at the move, when that process
//!    is still alive (a rollback, a manual release of a running container);
//! 3. in a named namespace under `/run/netns` (the namespace of a container
//!    that joined a pre-created one, as CNI setups do), which outlives the
//!    container.
//!
//! Outside the host namespace an interface is taken only when both its name
//! and its MAC (recorded in the lease at the move) match. The search is
//! repeated until a deadline, since the kernel returns interfaces from a
//! dying namespace asynchronously.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::claim::{ClaimError, ClaimedVf, Engine};
use crate::config::Mode;
use crate::flow::{self, FlowError};
use crate::ifconf::{IfConf, IfconfError, Link};
use crate::ledger::{self, LedgerError, NetdevMove, OwnerCheck};
use crate::pci::{IfName, MacAddr, PciAddress};
use crate::request::OWNER_ANNOTATION;
use crate::spec::{HookState, MAX_OWNER};
use crate::sysfs::{SysfsError, SysfsRoot};

/// Where named network namespaces are bind-mounted (`ip netns`, CNI).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// The least time a release waits for a VF's interface to come back.
pub const RETURN_WAIT_MIN: Duration = Duration::from_secs(5);
/// How long to wait for a VF's own lock when recording a move.
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error(transparent)]
    Ifconf(#[from] IfconfError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{vf}: its network interface ({name}) is in no namespace this host can reach after {waited:?} (searched the host, pid {pid:?} and {NETNS_RUN_DIR}); the lease stays for `kata-sriov gc`")]
    NotFound {
        vf: PciAddress,
        name: String,
        pid: Option<u32>,
        waited: Duration,
    },
    #[error("{vf}: has no network interface on the host (is its driver loaded?)")]
    NoNetdev { vf: PciAddress },
    #[error("pid {pid} is in the host's own network namespace; netdev mode needs a container with its own network namespace")]
    HostNamespace { pid: u32 },
    #[error("{vf}: interface {name} is not in the container's network namespace after the move")]
    Vanished { vf: PciAddress, name: IfName },
    #[error("{vf}: its lease disappeared while recording the move")]
    LeaseGone { vf: PciAddress },
    #[error("{vf}: another process is working on this VF; try again")]
    Busy { vf: PciAddress },
    #[error("{0}")]
    Invalid(String),
}

/// The errors of the create-runtime flow.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error(transparent)]
    Claim(#[from] Box<ClaimError>),
    #[error(transparent)]
    Netdev(#[from] NetdevError),
    #[error("{first}; then rolled back")]
    RolledBack { first: Box<HookError> },
    #[error("{first}; rolling back also failed: {rollback}")]
    RollbackFailed {
        first: Box<HookError>,
        rollback: Box<ClaimError>,
    },
}

impl From<ClaimError> for HookError {
    fn from(e: ClaimError) -> Self {
        HookError::Claim(Box::new(e))
    }
}

/// One VF interface placed into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub vf: PciAddress,
    pub pool: String,
    pub host_name: IfName,
    pub container_name: IfName,
    pub mac: Option<MacAddr>,
}

fn io_err<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> NetdevError + 'p {
    move |source| NetdevError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The owner token a hook records leases under: the owner annotation of the
/// state, else the state's id (the same rule as poststop's).
pub fn hook_owner(state: &HookState) -> Result<String, NetdevError> {
    match state.annotations.get(OWNER_ANNOTATION) {
        None => Ok(state.id.clone()),
        Some(v) => match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_OWNER => Ok(s.to_owned()),
            _ => Err(NetdevError::Invalid(format!(
                "annotation {OWNER_ANNOTATION}: must be a non-empty string of at most {MAX_OWNER} bytes"
            ))),
        },
    }
}

/// Container-side names for claimed VFs: the requested name, else `net1`,
/// `net2`... skipping names requested for others.
pub fn container_names(claimed: &[ClaimedVf]) -> Result<Vec<IfName>, NetdevError> {
    let taken: Vec<&IfName> = claimed.iter().filter_map(|c| c.l3.name.as_ref()).collect();
    let mut next = 1u32;
    let mut out = Vec::with_capacity(claimed.len());
    for c in claimed {
        if let Some(n) = &c.l3.name {
            out.push(n.clone());
            continue;
        }
        loop {
            let n: IfName = format!("net{next}")
                .parse()
                .map_err(|e| NetdevError::Invalid(format!("{e}")))?;
            next += 1;
            if !taken.contains(&&n) && !out.contains(&n) {
                out.push(n);
                break;
            }
        }
    }
    Ok(out)
}

/// The network namespace of a process, opened.
fn open_pid_netns(proc_root: &Path, pid: u32) -> Result<File, NetdevError> {
    let p = proc_root.join(pid.to_string()).join("ns/net");
    File::open(&p).map_err(io_err("opening the network namespace", &p))
}

/// (st_dev, st_ino) of a namespace file: equal pairs are the same namespace.
fn ns_id(f: &File) -> Option<(u64, u64)> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

fn own_netns() -> Result<File, NetdevError> {
    let p = Path::new("/proc/thread-self/ns/net");
    File::open(p).map_err(io_err("opening", p))
}

/// The create-runtime hook for netdev pools: claims what the bundle's
/// config asks for under the hook's owner token (an owner that already
/// holds its VFs, claimed by precreate or the shim, gets them back), then
/// moves each netdev-mode VF's interface into the network namespace of the
/// state's pid and configures it. Nothing asked, or no netdev pool asked:
/// Ok(empty), nothing touched. A failure releases everything the owner
/// holds, which brings moved interfaces back.
pub fn create_runtime(
    engine: &Engine<'_>,
    state: &HookState,
    config: &serde_json::Value,
) -> Result<Vec<Attached>, HookError> {
    let Some(reqs) = flow::requests_for(engine.cfg, config)? else {
        return Ok(Vec::new());
    };
    let wants_netdev = reqs.iter().any(|r| {
        engine
            .cfg
            .pool(r.pool.as_str())
            .is_some_and(|p| p.mode == Mode::Netdev)
    });
    if !wants_netdev {
        return Ok(Vec::new());
    }
    let pid = match state.pid {
        Some(p) if p > 0 && p <= i64::from(i32::MAX) => p as u32,
        _ => {
            return Err(NetdevError::Invalid(
                "hook state: netdev pools need the container's \"pid\" (run this as a createRuntime hook)".into(),
            )
            .into())
        }
    };
    let owner = hook_owner(state)?;
    let check = match &state.bundle {
        Some(b) => OwnerCheck::Bundle(b.clone()),
        None => OwnerCheck::None,
    };
    let claimed = engine.claim(&owner, &reqs, check)?;
    match attach_all(engine, &claimed, pid) {
        Ok(a) => Ok(a),
        Err(e) => Err(match engine.release(&owner) {
            Ok(_) => HookError::RolledBack { first: Box::new(e) },
            Err(r) => HookError::RollbackFailed {
                first: Box::new(e),
                rollback: Box::new(r),
            },
        }),
    }
}

fn attach_all(
    engine: &Engine<'_>,
    claimed: &[ClaimedVf],
    pid: u32,
) -> Result<Vec<Attached>, HookError> {
    let netdev: Vec<ClaimedVf> = claimed
        .iter()
        .filter(|c| c.mode == Mode::Netdev)
        .cloned()
        .collect();
    let names = container_names(&netdev)?;
    let target = open_pid_netns(&engine.proc_root, pid)?;
    let own = own_netns()?;
    if ns_id(&target).is_some() && ns_id(&target) == ns_id(&own) {
        return Err(NetdevError::HostNamespace { pid }.into());
    }
    let host = IfConf::open().map_err(NetdevError::from)?;
    let inner = IfConf::open_in_netns(target.as_fd()).map_err(NetdevError::from)?;
    let mut out = Vec::new();
    for (c, name) in netdev.iter().zip(names) {
        out.push(attach(engine, &host, &inner, &target, pid, c, name)?);
    }
    Ok(out)
}

/// Moves one VF's interface into the namespace `target` (of `pid`) as
/// `name`, recording the move in its lease first, and configures it.
/// Repeating it after success changes nothing.
fn attach(
    engine: &Engine<'_>,
    host: &IfConf,
    inner: &IfConf,
    target: &File,
    pid: u32,
    c: &ClaimedVf,
    name: IfName,
) -> Result<Attached, NetdevError> {
    let vf = c.vf;
    let _guard = engine
        .ledger
        .lock_vf(vf, LOCK_WAIT)?
        .ok_or(NetdevError::Busy { vf })?;
    let mut lease = engine
        .ledger
        .read(vf)?
        .ok_or(NetdevError::LeaseGone { vf })?;
    let mv = match &lease.netdev_move {
        Some(mv) => mv.clone(),
        None => {
            let host_name = c.netdev.clone().ok_or(NetdevError::NoNetdev { vf })?;
            let original_mtu = host.link_by_name(host_name.as_str())?.map(|l| l.mtu);
            NetdevMove {
                host_name,
                container_name: name,
                netns_pid: Some(pid),
                original_mtu,
            }
        }
    };
    let on_host = host.link_by_name(mv.host_name.as_str())?;
    let mac = lease.mac.or_else(|| on_host.as_ref().and_then(|l| l.mac));
    let already = find_named(inner, &mv.container_name, mac)?;
    if lease.netdev_move.as_ref() != Some(&mv) || lease.mac != mac {
        lease.netdev_move = Some(mv.clone());
        lease.mac = mac;
        lease.updated = ledger::now_secs();
        engine.ledger.update(&lease)?;
    }
    if already.is_none() {
        let Some(l) = on_host else {
            return Err(NetdevError::NoNetdev { vf });
        };
        host.move_to_netns(l.index, target.as_fd(), Some(&mv.container_name))?;
    }
    let link = inner
        .link_by_name(mv.container_name.as_str())?
        .ok_or_else(|| NetdevError::Vanished {
            vf,
            name: mv.container_name.clone(),
        })?;
    inner.apply_l3(&link, &c.l3, mac)?;
    Ok(Attached {
        vf,
        pool: c.pool.clone(),
        host_name: mv.host_name,
        container_name: mv.container_name,
        mac,
    })
}

/// A link named `name` whose MAC is `mac` (any MAC when `mac` is None).
fn find_named(
    ifc: &IfConf,
    name: &IfName,
    mac: Option<MacAddr>,
) -> Result<Option<Link>, IfconfError> {
    Ok(ifc
        .link_by_name(name.as_str())?
        .filter(|l| mac.is_none() || l.mac == mac))
}

/// Brings a VF's interface back into the calling thread's (the host's)
/// namespace under `mv.host_name`, wherever it is (see the module docs),
/// waiting up to `wait` for it to appear. A VF with no driver has no
/// interface: nothing to do.
pub fn return_to_host(
    sysfs: &SysfsRoot,
    proc_root: &Path,
    vf: PciAddress,
    mac: Option<MacAddr>,
    mv: &NetdevMove,
    wait: Duration,
) -> Result<(), NetdevError> {
    if sysfs.driver(vf)?.is_none() {
        return Ok(());
    }
    let host = IfConf::open()?;
    let own = own_netns()?;
    let start = Instant::now();
    loop {
        if try_return(sysfs, proc_root, &host, &own, vf, mac, mv)? {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(NetdevError::NotFound {
                vf,
                name: format!("{} / {}", mv.host_name, mv.container_name),
                pid: mv.netns_pid,
                waited: wait,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Puts back the MTU the netdev had on the host before the claim.
fn restore_mtu(host: &IfConf, mv: &NetdevMove) -> Result<(), NetdevError> {
    let Some(mtu) = mv.original_mtu else {
        return Ok(());
    };
    if let Some(l) = host.link_by_name(mv.host_name.as_str())? {
        if l.mtu != mtu {
            host.set_mtu(l.index, mtu)?;
        }
    }
    Ok(())
}

/// One search; true when the interface is back under its host name.
fn try_return(
    sysfs: &SysfsRoot,
    proc_root: &Path,
    host: &IfConf,
    own: &File,
    vf: PciAddress,
    mac: Option<MacAddr>,
    mv: &NetdevMove,
) -> Result<bool, NetdevError> {
    // 1. In the host namespace, under a name the VF's sysfs lists.
    for n in sysfs.netdevs(vf)? {
        if let Some(l) = host.link_by_name(n.as_str())? {
            if n != mv.host_name {
                if l.up {
                    host.set_up(l.index, false)?;
                }
                host.set_name(l.index, &mv.host_name)?;
            }
            restore_mtu(host, mv)?;
            return Ok(true);
        }
    }
    // Elsewhere, only an interface with the recorded MAC is ours.
    let Some(mac) = mac else {
        return Ok(false);
    };
    let own_id = ns_id(own);
    let mut candidates: Vec<File> = Vec::new();
    if let Some(pid) = mv.netns_pid {
        if let Ok(f) = open_pid_netns(proc_root, pid) {
            candidates.push(f);
        }
    }
    if let Ok(rd) = std::fs::read_dir(NETNS_RUN_DIR) {
        for e in rd.flatten() {
            if let Ok(f) = File::open(e.path()) {
                candidates.push(f);
            }
        }
    }
    let mut seen = vec![own_id];
    for ns in candidates {
        let id = ns_id(&ns);
        if id.is_none() || seen.contains(&id) {
            continue;
        }
        seen.push(id);
        // A namespace file that is not a namespace (a stale mount point)
        // cannot be entered: skip it.
        let Ok(inner) = IfConf::open_in_netns(ns.as_fd()) else {
            continue;
        };
        for name in [&mv.container_name, &mv.host_name] {
            if let Some(l) = find_named(&inner, name, Some(mac))? {
                inner.move_to_netns(l.index, own.as_fd(), Some(&mv.host_name))?;
                restore_mtu(host, mv)?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuestMode;
    use crate::guestnet::L3Config;

    fn vf(name: Option<&str>) -> ClaimedVf {
        ClaimedVf {
            pool: "nd".into(),
            mode: Mode::Netdev,
            guest: GuestMode::Helper,
            pf: "0000:3b:00.0".parse().unwrap(),
            vf_index: 0,
            vf: "0000:3b:10.0".parse().unwrap(),
            pci_id: "8086:10ca".parse().unwrap(),
            mac: None,
            iommu_group: None,
            dev_node: None,
            netdev: None,
            l3: L3Config {
                name: name.map(|n| n.parse().unwrap()),
                ..L3Config::default()
            },
        }
    }

    #[test]
    fn default_names_skip_requested_ones() {
        let names = |v: Vec<ClaimedVf>| -> Vec<String> {
            container_names(&v)
                .unwrap()
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(names(vec![vf(None), vf(None)]), ["net1", "net2"]);
        assert_eq!(
            names(vec![vf(None), vf(Some("net1")), vf(None)]),
            ["net2", "net1", "net3"]
        );
        assert_eq!(names(vec![vf(Some("data0")), vf(None)]), ["data0", "net1"]);
        assert!(names(vec![]).is_empty());
    }

    #[test]
    fn owner_comes_from_the_annotation_else_the_id() {
        let mut st = crate::spec::parse_state(br#"{"id":"c1","pid":5}"#).unwrap();
        assert_eq!(hook_owner(&st).unwrap(), "c1");
        st.annotations
            .insert(OWNER_ANNOTATION.into(), serde_json::json!("default/c1"));
        assert_eq!(hook_owner(&st).unwrap(), "default/c1");
        st.annotations
            .insert(OWNER_ANNOTATION.into(), serde_json::json!(""));
        assert!(hook_owner(&st).is_err());
        st.annotations
            .insert(OWNER_ANNOTATION.into(), serde_json::json!(3));
        assert!(hook_owner(&st).is_err());
    }
}
