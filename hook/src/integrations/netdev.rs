//! netdev mode: a VF that keeps its kernel driver (igbvf, iavf, mlx5...)
//! and whose network interface moves into the container's network
//! namespace, renamed (`net1`, `net2`... unless the request names it) and
//! configured (MAC, MTU, addresses, routes); on release it comes back to the
//! host namespace under its original name.
//!
//! Kernel interfaces: rtnetlink through [`IfConf`] in the host namespace and
//! in the container's (`/proc/<pid>/ns/net`); the move and the way back
//! live in [`crate::kernel::netns`].

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Duration;

use crate::engine::claim::{ClaimError, ClaimedVf, Engine};
use crate::error::chain;
use crate::ifconf::{IfConf, IfconfError};
use crate::integrations::flow::FlowError;
use crate::kernel::netns::{find_named, ns_id, open_pid_netns, own_netns, NetnsError};
use crate::kernel::sysfs::SysfsError;
use crate::oci::plan::ContainerPlan;
use crate::oci::state::HookState;
use crate::pci::{IfName, MacAddr, PciAddress};
use crate::policy::config::Mode;
use crate::policy::owner::{self, OwnerError};
use crate::state::ledger::{NetdevMove, OwnerCheck};

/// How long to wait for a VF's own lock when recording a move.
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error(transparent)]
    Ifconf(#[from] IfconfError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Lease(Box<ClaimError>),
    #[error("{vf}: has no network interface on the host (is its driver loaded?)")]
    NoNetdev { vf: PciAddress },
    #[error("pid {pid} is in the host's own network namespace; netdev mode needs a container with its own network namespace")]
    HostNamespace { pid: u32 },
    #[error("{vf}: interface {name} is not in the container's network namespace after the move")]
    Vanished { vf: PciAddress, name: IfName },
    #[error("{0}")]
    Invalid(String),
}

impl From<ClaimError> for NetdevError {
    fn from(e: ClaimError) -> Self {
        NetdevError::Lease(Box::new(e))
    }
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

/// The owner token a hook records leases under: the owner annotation of the
/// state, else the state's id (the same rule as poststop's).
pub fn hook_owner(state: &HookState) -> Result<String, NetdevError> {
    Ok(owner::from_state(&state.annotations, &state.id)?)
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
                .map_err(|e| NetdevError::Invalid(chain(&e)))?;
            next += 1;
            if !taken.contains(&&n) && !out.contains(&n) {
                out.push(n);
                break;
            }
        }
    }
    Ok(out)
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
    let spec = crate::oci::spec::Spec::from_value(config).map_err(FlowError::from)?;
    let plan = ContainerPlan::from_spec(engine.cfg, &spec).map_err(FlowError::from)?;
    create_runtime_planned(engine, state, &plan)
}

/// [`create_runtime`] for a container whose plan is made.
pub fn create_runtime_planned(
    engine: &Engine<'_>,
    state: &HookState,
    plan: &ContainerPlan,
) -> Result<Vec<Attached>, HookError> {
    if !plan.netdev {
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
    // The owner annotation is the container's to write: it names a claim
    // the host side made for this very container, or nothing is done.
    let from_annotation = state.annotations.contains_key(owner::OWNER_ANNOTATION);
    let held = engine.authorize(&owner, state.bundle.as_deref(), from_annotation)?;
    if from_annotation && held.is_empty() {
        return Err(NetdevError::Owner(OwnerError::Unknown(owner)).into());
    }
    let check = match &state.bundle {
        Some(b) => OwnerCheck::Bundle(b.clone()),
        None => OwnerCheck::None,
    };
    let claimed = engine.claim_checked(&owner, &plan.requests, check, None)?;
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
    let target = open_pid_netns(&engine.proc_root, pid).map_err(NetdevError::from)?;
    let own = own_netns().map_err(NetdevError::from)?;
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
    let mut held = engine.hold(vf, LOCK_WAIT)?;
    let mv = match &held.lease.netdev_move {
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
    let mac = held
        .lease
        .mac
        .or_else(|| on_host.as_ref().and_then(|l| l.mac));
    let already = find_named(inner, &mv.container_name, mac)?;
    if held.lease.netdev_move.as_ref() != Some(&mv) || held.lease.mac != mac {
        held.lease.netdev_move = Some(mv.clone());
        held.lease.mac = mac;
        held.commit()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestnet::L3Config;
    use crate::policy::config::GuestMode;
    use crate::policy::owner::OWNER_ANNOTATION;

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
        let mut st = crate::oci::state::parse_state(br#"{"id":"c1","pid":5}"#).unwrap();
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
