//! Network namespaces and moving a VF's netdev between them: open a
//! process's namespace, compare namespaces, and bring a VF's interface back
//! to the host namespace wherever it went.
//!
//! Kernel interfaces: rtnetlink through [`IfConf`] in the host namespace and
//! in others (`/proc/<pid>/ns/net`, named namespaces under `/run/netns`);
//! `IFLA_NET_NS_FD` moves; the VF's `net/` directory in sysfs (through
//! [`SysfsRoot::netdevs`]). Sysfs shows only the interfaces of the
//! namespace it was mounted in, so a VF whose interface is elsewhere has an
//! empty `net/`.
//!
//! Where a netdev may be when it is returned, searched in this order:
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
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::IoError;
use crate::ifconf::{IfConf, IfconfError, Link};
use crate::kernel::sysfs::{SysfsError, SysfsRoot};
use crate::pci::{IfName, MacAddr, PciAddress};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(transparent)]
    Ifconf(#[from] IfconfError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{vf}: its network interface ({name}) is in no namespace this host can reach after {waited:?} (searched the host, pid {pid:?} and {NETNS_RUN_DIR}); the lease stays for `kata-sriov gc`")]
    NotFound {
        vf: PciAddress,
        name: String,
        pid: Option<u32>,
        waited: Duration,
    },
}

/// Where a VF's netdev went (recorded in its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetdevMove {
    pub host_name: IfName,
    pub container_name: IfName,
    pub netns_pid: Option<u32>,
    /// The netdev's MTU on the host, put back on release.
    #[serde(default)]
    pub original_mtu: Option<u32>,
}

/// Where named network namespaces are bind-mounted (`ip netns`, CNI).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// The least time a release waits for a VF's interface to come back.
pub const RETURN_WAIT_MIN: Duration = Duration::from_secs(5);

/// The network namespace of a process, opened.
pub fn open_pid_netns(proc_root: &Path, pid: u32) -> Result<File, NetnsError> {
    let p = proc_root.join(pid.to_string()).join("ns/net");
    Ok(File::open(&p).map_err(IoError::at("opening the network namespace", &p))?)
}

/// (st_dev, st_ino) of a namespace file: equal pairs are the same namespace.
pub fn ns_id(f: &File) -> Option<(u64, u64)> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

pub fn own_netns() -> Result<File, NetnsError> {
    let p = Path::new("/proc/thread-self/ns/net");
    Ok(File::open(p).map_err(IoError::at("opening", p))?)
}

/// A link named `name` whose MAC is `mac` (any MAC when `mac` is None).
pub fn find_named(
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
) -> Result<(), NetnsError> {
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
            return Err(NetnsError::NotFound {
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
fn restore_mtu(host: &IfConf, mv: &NetdevMove) -> Result<(), NetnsError> {
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
) -> Result<bool, NetnsError> {
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
