//! Allocate and release for the device plugin, through the engine.
//!
//! Each VF is its own claim, owned by `k8s-dp/<pool>/<pci>`: Allocate
//! claims exactly the VFs the kubelet chose (the pool's PF settings,
//! vfio-pci bind) and writes one CDI spec per VF whose kind is the
//! resource name and whose device name is the device ID (the PCI address:
//! CDI device names allow ':' and '.'), so that Kata's
//! `<resourceName>=<deviceID>` resolves. The spec carries the device nodes
//! only (no guest entry: the shim writes the pod's from its annotation).
//! Allocating a VF the plugin holds already returns it again (the engine's
//! idempotence), forgets its recorded pod and rewrites its spec.
//!
//! There is no deallocate: [`Reconciler`] compares the VFs held with the
//! kubelet's PodResources `List`, and releases a VF only when a successful
//! List lacked it twice in a row and its Allocate is older than the grace
//! period. A failed List (kubelet down) changes nothing and starts the
//! count again.

use std::collections::{HashMap, HashSet};

use std::time::{Duration, Instant};

use kata_sriov::engine::claim::{ClaimError, ClaimedVf, Engine};
use kata_sriov::kernel::vfio::{self, DevNode};
use kata_sriov::oci::cdi::{self, CdiError};
use kata_sriov::pci::PciAddress;
use kata_sriov::policy::config::Mode;
use kata_sriov::policy::request::NetworkRequest;
use kata_sriov::state::ledger::{self, Lease, LeaseState, OwnerCheck};

use crate::host::Host;
use crate::names;
use crate::prepare::gc_summary;
pub use crate::prepare::{RecoverError, Recovered};

/// What the device plugin needs to know about itself.
#[derive(Debug, Clone)]
pub struct DpSettings {
    /// `<prefix>/<pool>` is each pool's extended resource.
    pub resource_prefix: String,
    /// The kubelet's device-plugins directory (`kubelet.sock` and ours).
    pub plugin_dir: std::path::PathBuf,
    /// The kubelet's PodResources socket.
    pub pod_resources: std::path::PathBuf,
    /// Where CDI specs are written.
    pub cdi_dir: std::path::PathBuf,
    /// How often sysfs and the ledger are rescanned, and `kubelet.sock` checked.
    pub rescan: Duration,
    /// How often PodResources is listed.
    pub reconcile: Duration,
    /// No VF is released sooner than this after its Allocate.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("device ID {0:?} is not a PCI address (DDDD:BB:DD.F)")]
    BadId(String),
    #[error("device {0} is asked for twice")]
    Twice(PciAddress),
    #[error("pool {pool:?}: opening the engine")]
    Engine {
        pool: String,
        source: Box<ClaimError>,
    },
    #[error("pool {pool:?}: claiming {vf}")]
    Claim {
        pool: String,
        vf: PciAddress,
        source: Box<ClaimError>,
    },
    #[error("pool {pool:?}: writing the CDI spec of {vf}")]
    Cdi {
        pool: String,
        vf: PciAddress,
        source: CdiError,
    },
    #[error("{first}; releasing the VFs this call claimed also failed: {rollback}")]
    RollbackFailed {
        first: Box<AllocError>,
        rollback: Box<AllocError>,
    },
}

/// One VF allocated to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedVf {
    pub vf: PciAddress,
    /// `<resource>=<pci>`.
    pub cdi_name: String,
    /// `/dev/vfio/N` on the host (vfio mode).
    pub group_node: Option<(u32, DevNode)>,
}

/// Parses the kubelet's device IDs (each a canonical PCI address, once).
pub fn parse_ids(ids: &[String]) -> Result<Vec<PciAddress>, AllocError> {
    let mut out: Vec<PciAddress> = Vec::new();
    for id in ids {
        let vf: PciAddress = id
            .parse()
            .ok()
            .filter(|a: &PciAddress| a.to_string() == *id)
            .ok_or_else(|| AllocError::BadId(id.chars().take(80).collect()))?;
        if out.contains(&vf) {
            return Err(AllocError::Twice(vf));
        }
        out.push(vf);
    }
    Ok(out)
}

fn claim_one(engine: &Engine<'_>, pool: &str, vf: PciAddress) -> Result<ClaimedVf, AllocError> {
    let err = |e: ClaimError| AllocError::Claim {
        pool: pool.to_owned(),
        vf,
        source: Box::new(e),
    };
    // Pool names come from the config, already checked.
    let pool_name = pool.parse().map_err(|_| {
        err(ClaimError::UnknownPool {
            pool: pool.to_owned(),
            known: String::new(),
        })
    })?;
    let mut req = NetworkRequest::plain(pool_name);
    req.vf = Some(vf);
    let mut got = engine
        .claim(&names::dp_owner(pool, vf), &[req], OwnerCheck::None)
        .map_err(err)?;
    match got.pop() {
        Some(c) if c.vf == vf && got.is_empty() => Ok(c),
        _ => Err(err(ClaimError::PinnedUnavailable {
            vf,
            pool: pool.to_owned(),
            why: "the engine returned another VF".into(),
        })),
    }
}

/// Writes the CDI spec of one VF of `pool` (kind `resource`, device name
/// its PCI address).
fn write_spec(
    host: &Host,
    dp: &DpSettings,
    resource: &str,
    c: &ClaimedVf,
) -> Result<AllocatedVf, AllocError> {
    let err = |source| AllocError::Cdi {
        pool: c.pool.clone(),
        vf: c.vf,
        source,
    };
    let container = match c.mode {
        Mode::Vfio => {
            Some(
                vfio::container_node(&host.cfg.dev_root).map_err(|e| AllocError::Claim {
                    pool: c.pool.clone(),
                    vf: c.vf,
                    source: Box::new(e.into()),
                })?,
            )
        }
        Mode::Netdev => None,
    };
    let id = c.vf.to_string();
    let mut spec =
        cdi::build(resource, &[(id.clone(), c.clone())], container.as_ref()).map_err(err)?;
    // The plugin does not know the guest's addresses (the shim writes them
    // from the pod's annotation): no guest entry without them.
    for d in &mut spec.devices {
        d.annotations.clear();
        d.container_edits.env.clear();
    }
    cdi::write(&dp.cdi_dir, &names::dp_cdi_stem(&c.pool, c.vf), &spec).map_err(err)?;
    Ok(AllocatedVf {
        vf: c.vf,
        cdi_name: cdi::qualified(resource, &id),
        group_node: c.iommu_group.zip(c.dev_node.clone()),
    })
}

/// Claims exactly `vfs` of `pool` and writes their CDI specs. On failure,
/// the VFs this call claimed go back (those held before stay).
pub fn allocate(
    host: &Host,
    dp: &DpSettings,
    pool: &str,
    resource: &str,
    vfs: &[PciAddress],
) -> Result<Vec<AllocatedVf>, AllocError> {
    let _serial = host.serial();
    let engine = host.engine().map_err(|e| AllocError::Engine {
        pool: pool.to_owned(),
        source: Box::new(e),
    })?;
    let mut fresh = Vec::new();
    let mut out = Vec::new();
    let mut failure = None;
    for &vf in vfs {
        let held = engine
            .ledger
            .read(vf)
            .ok()
            .flatten()
            .is_some_and(|l| l.owner == names::dp_owner(pool, vf));
        let done = claim_one(&engine, pool, vf).and_then(|c| {
            if !held {
                fresh.push(vf);
            }
            // Allocated again (to another pod): its pod is unknown until
            // the next List, so that a shim waits for it.
            engine
                .set_pod(vf, &names::dp_owner(pool, vf), None)
                .map_err(|e| AllocError::Claim {
                    pool: pool.to_owned(),
                    vf,
                    source: Box::new(e),
                })?;
            write_spec(host, dp, resource, &c)
        });
        match done {
            Ok(a) => out.push(a),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let Some(first) = failure else {
        return Ok(out);
    };
    for vf in fresh {
        if let Err(rollback) = release_one(&engine, dp, pool, vf) {
            return Err(AllocError::RollbackFailed {
                first: Box::new(first),
                rollback: Box::new(rollback),
            });
        }
    }
    Err(first)
}

/// Releases one VF the plugin holds (settings restored, original driver
/// back), then deletes its CDI spec. Returns whether it was held.
fn release_one(
    engine: &Engine<'_>,
    dp: &DpSettings,
    pool: &str,
    vf: PciAddress,
) -> Result<bool, AllocError> {
    let held = engine
        .release_vf(vf, Some(&names::dp_owner(pool, vf)))
        .map_err(|e| AllocError::Claim {
            pool: pool.to_owned(),
            vf,
            source: Box::new(e),
        })?;
    cdi::remove(&dp.cdi_dir, &names::dp_cdi_stem(pool, vf)).map_err(|source| AllocError::Cdi {
        pool: pool.to_owned(),
        vf,
        source,
    })?;
    Ok(held)
}

/// The leases the device plugin holds: (pool, lease).
fn held(engine: &Engine<'_>) -> Result<Vec<(String, Lease)>, ClaimError> {
    Ok(engine
        .ledger
        .list()?
        .into_iter()
        .filter_map(|e| e.lease.ok())
        .filter_map(|l| {
            let (pool, vf) = names::parse_dp_owner(&l.owner)?;
            (vf == l.vf).then(|| (pool.to_owned(), l.clone()))
        })
        .collect())
}

/// On start: the engine's gc finishes what a crash interrupted; every VF
/// the plugin holds gets its CDI spec (re)written; specs of VFs it does
/// not hold are deleted. The reconciler then releases what no pod holds.
pub fn recover(
    host: &Host,
    dp: &DpSettings,
    resource: impl Fn(&str) -> Option<String>,
) -> Result<Recovered, RecoverError> {
    let _serial = host.serial();
    let claim_err = |e: ClaimError| RecoverError::Claim(Box::new(e));
    let engine = host.engine().map_err(claim_err)?;
    let gc = engine.gc().map_err(claim_err)?;
    let mut out = Recovered {
        gc: gc_summary(&gc),
        ..Recovered::default()
    };
    let mut keep = HashSet::new();
    for (pool, l) in held(&engine).map_err(claim_err)? {
        if l.state != LeaseState::Claimed {
            continue;
        }
        let Some(res) = resource(&pool) else { continue };
        let c = engine.claimed_vf(&l).map_err(claim_err)?;
        write_spec(host, dp, &res, &c).map_err(|e| RecoverError::DevicePlugin(Box::new(e)))?;
        keep.insert(names::dp_cdi_stem(&pool, l.vf));
        out.prepared.push(l.vf.to_string());
    }
    for stem in cdi::list(&dp.cdi_dir, names::DP_CDI_FILE_PREFIX)? {
        if !keep.contains(&stem) {
            cdi::remove(&dp.cdi_dir, &stem)?;
            out.stale_specs.push(stem);
        }
    }
    Ok(out)
}

/// What a PodResources List says: (resource name, device ID) -> the pod
/// (`namespace/name`) that holds it.
pub type Listed = HashMap<(String, String), String>;

/// Records in each lease of the plugin the pod that `listed` says holds
/// its VF (the shim finds a pod's VFs by it). Returns how many leases no
/// pod is recorded for.
pub fn attribute(
    host: &Host,
    listed: &Listed,
    resource: impl Fn(&str) -> Option<String>,
) -> Result<usize, ClaimError> {
    let _serial = host.serial();
    let engine = host.engine()?;
    let mut unknown = 0;
    for (pool, l) in held(&engine)? {
        let pod = resource(&pool).and_then(|res| listed.get(&(res, l.vf.to_string())));
        match pod {
            Some(p) => {
                engine.set_pod(l.vf, &l.owner, Some(p))?;
            }
            None if l.pod.is_none() => unknown += 1,
            None => {}
        }
    }
    Ok(unknown)
}

/// Releases VFs no pod holds any more, from successive PodResources Lists.
#[derive(Debug)]
pub struct Reconciler {
    grace: Duration,
    /// Per VF held: successful Lists in a row that lacked it.
    missing: HashMap<PciAddress, u32>,
    /// When this process last allocated each VF.
    allocated: HashMap<PciAddress, Instant>,
}

/// Successful Lists in a row that must lack a VF before it is released.
pub const MISSING_LISTS: u32 = 2;

/// What one reconcile step did.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub released: Vec<PciAddress>,
    /// VFs whose release failed (tried again at the next step), and why.
    pub failed: Vec<(PciAddress, String)>,
}

impl Reconciler {
    pub fn new(grace: Duration) -> Self {
        Reconciler {
            grace,
            missing: HashMap::new(),
            allocated: HashMap::new(),
        }
    }

    /// Records an Allocate of `vf` now: its count starts again.
    pub fn allocated(&mut self, vf: PciAddress) {
        self.allocated.insert(vf, Instant::now());
        self.missing.remove(&vf);
    }

    /// A List failed (kubelet down or restarting): nothing is released,
    /// and the count of Lists in a row starts again.
    pub fn list_failed(&mut self) {
        self.missing.clear();
    }

    fn old_enough(&self, l: &Lease) -> bool {
        match self.allocated.get(&l.vf) {
            Some(t) => t.elapsed() >= self.grace,
            // Allocated before this process started: the lease's own time.
            None => ledger::now_secs().saturating_sub(l.updated) >= self.grace.as_secs(),
        }
    }

    /// One successful List: `listed` maps every (resource name, device
    /// ID) some pod holds to that pod (`namespace/name`). `resource` names
    /// a pool's resource. Records the pods ([`attribute`]), then releases.
    pub fn step(
        &mut self,
        host: &Host,
        dp: &DpSettings,
        listed: &Listed,
        resource: impl Fn(&str) -> Option<String>,
    ) -> Result<Reconciled, ClaimError> {
        attribute(host, listed, &resource)?;
        let _serial = host.serial();
        let engine = host.engine()?;
        let mut out = Reconciled::default();
        let held = held(&engine)?;
        self.missing
            .retain(|vf, _| held.iter().any(|(_, l)| l.vf == *vf));
        self.allocated
            .retain(|vf, _| held.iter().any(|(_, l)| l.vf == *vf));
        for (pool, l) in held {
            let Some(res) = resource(&pool) else { continue };
            if listed.contains_key(&(res, l.vf.to_string())) {
                self.missing.remove(&l.vf);
                continue;
            }
            let n = self.missing.entry(l.vf).or_default();
            *n = n.saturating_add(1);
            if *n < MISSING_LISTS || !self.old_enough(&l) {
                continue;
            }
            match release_one(&engine, dp, &pool, l.vf) {
                Ok(_) => {
                    self.missing.remove(&l.vf);
                    self.allocated.remove(&l.vf);
                    out.released.push(l.vf);
                }
                Err(e) => out.failed.push((l.vf, kata_sriov::chain(&e))),
            }
        }
        Ok(out)
    }
}
