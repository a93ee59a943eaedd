//! Claim, release and gc: the orchestration over sysfs, IOMMU groups,
//! netlink, driver binding and the ledger, in a crash-consistent order.
//!
//! Claim: take the host-wide lock; pick free VFs (no lease, alone in their
//! IOMMU group, on a driver the pool accepts); read their original settings;
//! take each VF's own lock and write its lease (`claiming`) with those
//! originals; drop the host-wide lock. Then, under the VFs' own locks only
//! (so claims of different VFs run in parallel): set the pool's settings one
//! at a time, bind to vfio-pci, verify, mark the lease `claimed`. Any
//! failure rolls back what this claim did.
//!
//! Release: mark `releasing`; wait (bounded) until no process holds the
//! VF's group open; unbind; restore every changed setting; rebind the
//! original driver; delete the lease. Every step is idempotent, so a release
//! killed half-way is finished by the next release or by gc.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::mac;
use crate::error::IoError;
use crate::error::{chain, printable};
use crate::guestnet::{GuestNetwork, L3Config};
use crate::kernel::iommu::{self, IommuError};
use crate::kernel::netlink::{self, NetlinkError, VfNetlink, VfSetting, VfSettings};
use crate::kernel::sysfs::{SysfsError, SysfsRoot};
use crate::kernel::vfio::{self, DevNode, DriverBinder, VfioError, VFIO_PCI};
use crate::pci::{IfName, MacAddr, PciAddress, PciId};
use crate::policy::config::{Config, GuestMode, MacPolicy, Mode, Pool};
use crate::policy::owner::{self, MAX_OWNER};
use crate::policy::request::NetworkRequest;
use crate::state::ledger::{self, Lease, LeaseState, Ledger, LedgerError, OwnerCheck};

/// How long a claim waits for a free VF's own lock (held only briefly by a
/// release that is finishing).
const VF_LOCK_WAIT: Duration = Duration::from_secs(5);

/// A point in claim or release after which a test may kill the process
/// (and a benchmark takes the time: lab-bench's per-phase breakdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A VF is chosen and its original settings are read (nothing written).
    Picked,
    LeaseWritten,
    SettingApplied(usize),
    /// The applied settings are read back from the kernel and match.
    ReadBack,
    Bound,
    /// What the spec needs is known (in vfio mode: `/dev/vfio/N` is there).
    Described,
    Claimed,
    MarkedReleasing,
    Unbound,
    SettingRestored(usize),
    /// The restored settings are read back from the kernel and match.
    RestoreReadBack,
    Rebound,
    LeaseRemoved,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("no pool named {pool:?}; configured pools: {known}")]
    UnknownPool { pool: String, known: String },
    #[error("pool {pool:?} does not let containers choose their MAC ({mac}); its mac policy must be \"request\"")]
    MacNotAllowed { pool: String, mac: MacAddr },
    #[error("MAC {0} is requested twice or is already in use on this host")]
    MacInUse(MacAddr),
    #[error("pool {pool:?} is exhausted: {wanted} VF(s) asked, {free} free{why}")]
    Exhausted {
        pool: String,
        wanted: usize,
        free: usize,
        why: String,
    },
    #[error("owner {owner:?} already has a claim that is not complete ({vfs}); run `kata-sriov gc` or release it")]
    OwnerBusy { owner: String, vfs: String },
    #[error("owner {owner:?} already holds {held} VF(s) from {pools} but now asks for {asked}")]
    OwnerMismatch {
        owner: String,
        held: usize,
        pools: String,
        asked: usize,
    },
    #[error("PF {0} has no network interface, so its VFs cannot be configured over netlink")]
    NoPfNetdev(PciAddress),
    #[error("{vf}: still held open by pid(s) {pids:?} after {waited:?}; the lease stays 'releasing' and `kata-sriov gc` will finish it")]
    InUse {
        vf: PciAddress,
        pids: Vec<u32>,
        waited: Duration,
    },
    #[error("{vf}: another process is working on this VF; try again")]
    Busy { vf: PciAddress },
    #[error("{vf} is held by {owner:?} for another container (this hook's bundle: {bundle:?}); refusing to act on it")]
    NotOwner {
        owner: String,
        vf: PciAddress,
        bundle: Option<PathBuf>,
    },
    #[error("owner token {0:?} must be 1 to {MAX_OWNER} bytes without control characters")]
    BadOwner(String),
    #[error("{vf}: its lease disappeared")]
    LeaseGone { vf: PciAddress },
    #[error("the precreate claim {owner:?} holds no VF any more (not confirmed in time, or its caller was gone: gc reclaimed it); refusing to start the container without it")]
    Reclaimed { owner: String },
    #[error("VF {vf} cannot be claimed from pool {pool:?}: {why}")]
    PinnedUnavailable {
        vf: PciAddress,
        pool: String,
        why: String,
    },
    #[error("{0}; then rolled back")]
    RolledBack(Box<ClaimError>),
    #[error("{first}; rolling back also failed: {rollback}")]
    RollbackFailed {
        first: Box<ClaimError>,
        rollback: Box<ClaimError>,
    },
    #[error("cannot generate a MAC: reading random bytes failed")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Iommu(#[from] IommuError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Netns(#[from] crate::kernel::netns::NetnsError),
}

/// What the spec and the guest need about one claimed VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimedVf {
    pub pool: String,
    pub mode: Mode,
    pub guest: GuestMode,
    pub pf: PciAddress,
    pub vf_index: u32,
    pub vf: PciAddress,
    pub pci_id: PciId,
    pub mac: Option<MacAddr>,
    pub iommu_group: Option<u32>,
    /// `/dev/vfio/N` (vfio mode).
    pub dev_node: Option<DevNode>,
    /// The VF's netdev on the host (netdev mode).
    pub netdev: Option<IfName>,
    pub l3: L3Config,
}

impl ClaimedVf {
    /// The entry of the guest annotation for this VF.
    pub fn guest_network(&self) -> GuestNetwork {
        GuestNetwork {
            mac: self.mac,
            pci_id: self.pci_id,
            l3: self.l3.clone(),
        }
    }
}

/// What gc did.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// VFs returned, with the owner they had.
    pub released: Vec<(PciAddress, String)>,
    /// VFs whose lease cannot be read: never handed out.
    pub quarantined: Vec<(PciAddress, String)>,
    /// VFs another process is working on right now.
    pub busy: Vec<PciAddress>,
    /// Releases that failed (the lease stays; a later gc retries).
    pub failed: Vec<(PciAddress, String)>,
    /// Leases kept because their owner is alive or cannot be checked.
    pub kept: usize,
}

/// The pool named `name`, or an error listing the configured ones.
fn pool_named<'c>(cfg: &'c Config, name: &str) -> Result<&'c Pool, ClaimError> {
    cfg.pool(name).ok_or_else(|| ClaimError::UnknownPool {
        pool: name.to_owned(),
        known: if cfg.pools.is_empty() {
            "none (add [[pools]] to the config)".into()
        } else {
            cfg.pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// Checks requests against the config without touching anything.
pub fn check_requests(cfg: &Config, reqs: &[NetworkRequest]) -> Result<(), ClaimError> {
    let mut macs = HashSet::new();
    for r in reqs {
        let pool = pool_named(cfg, r.pool.as_str())?;
        if let Some(mac) = r.mac {
            if !pool.allows_mac(mac) {
                return Err(ClaimError::MacNotAllowed {
                    pool: pool.name.clone(),
                    mac,
                });
            }
            if !macs.insert(mac) {
                return Err(ClaimError::MacInUse(mac));
            }
        }
    }
    Ok(())
}

/// A VF found for a request: (pf, pf netdev, index, vf, IOMMU group, driver).
type Found = (
    PciAddress,
    Option<IfName>,
    u32,
    PciAddress,
    Option<u32>,
    Option<String>,
);

/// The engine: everything a claim or release touches.
pub struct Engine<'a> {
    pub cfg: &'a Config,
    pub sysfs: SysfsRoot,
    pub ledger: Ledger,
    pub nl: &'a dyn VfNetlink,
    pub binder: &'a dyn DriverBinder,
    pub proc_root: PathBuf,
    /// How long a release waits for the hypervisor to close the VF.
    pub release_wait: Duration,
    /// How long to wait for `/dev/vfio/N` after binding.
    pub node_wait: Duration,
    /// Called after each step; tests kill the process here. Never set by
    /// the binaries.
    pub probe: Option<&'a (dyn Fn(Step) + Sync)>,
}

struct Pick {
    lease: Lease,
    guard: ledger::LockGuard,
}

impl<'a> Engine<'a> {
    pub fn new(
        cfg: &'a Config,
        nl: &'a dyn VfNetlink,
        binder: &'a dyn DriverBinder,
    ) -> Result<Self, ClaimError> {
        Ok(Engine {
            cfg,
            sysfs: SysfsRoot::new(&cfg.sysfs_root),
            ledger: Ledger::open(&cfg.state_dir)?,
            nl,
            binder,
            proc_root: PathBuf::from("/proc"),
            release_wait: Duration::from_secs(u64::from(cfg.hook.release_wait)),
            node_wait: vfio::SETTLE_TIMEOUT,
            probe: None,
        })
    }

    fn step(&self, s: Step) {
        if let Some(p) = self.probe {
            p(s);
        }
    }

    fn pool(&self, name: &str) -> Result<&'a Pool, ClaimError> {
        pool_named(self.cfg, name)
    }

    /// The VF settings a lease applies are read back from the PF through
    /// this interface.
    fn pf_ifname(&self, lease: &Lease) -> Result<IfName, ClaimError> {
        lease
            .pf_netdev
            .clone()
            .ok_or(ClaimError::NoPfNetdev(lease.pf))
    }

    /// Claims one VF per request for `owner`. A second claim by an owner
    /// that holds complete leases returns them.
    pub fn claim(
        &self,
        owner: &str,
        reqs: &[NetworkRequest],
        check: OwnerCheck,
    ) -> Result<Vec<ClaimedVf>, ClaimError> {
        check_requests(self.cfg, reqs)?;
        self.claim_checked(owner, reqs, check, None)
    }

    /// [`Engine::claim`] for requests that already passed
    /// [`check_requests`] (a container plan's), recording `dan_file` in
    /// every lease from the start, so that release and gc delete it.
    pub fn claim_checked(
        &self,
        owner: &str,
        reqs: &[NetworkRequest],
        check: OwnerCheck,
        dan_file: Option<&Path>,
    ) -> Result<Vec<ClaimedVf>, ClaimError> {
        if !owner::valid(owner) {
            return Err(ClaimError::BadOwner(printable(owner)));
        }
        let picks = {
            let _global = self.ledger.lock_global()?;
            // Read the ledger once: this owner's leases, every leased VF
            // (readable or quarantined), and the MACs in use.
            let entries = self.ledger.list()?;
            let mine: Vec<Lease> = entries
                .iter()
                .filter_map(|e| e.lease.as_ref().ok())
                .filter(|l| l.owner == owner)
                .cloned()
                .collect();
            if !mine.is_empty() {
                return self.existing(owner, mine, reqs);
            }
            let picks = self.pick(owner, reqs, &check, &entries, dan_file)?;
            let mut written: Vec<Pick> = Vec::new();
            for p in picks {
                if let Err(e) = self.ledger.create(&p.lease) {
                    for w in &written {
                        let _ = self.ledger.remove(w.lease.vf);
                    }
                    return Err(e.into());
                }
                written.push(p);
                self.step(Step::LeaseWritten);
            }
            written
        };
        let mut done = Vec::new();
        let mut pending = picks.into_iter();
        let mut failure = None;
        for p in pending.by_ref() {
            match self.configure(p.lease.clone()) {
                Ok(c) => done.push((p, c)),
                Err(e) => {
                    failure = Some((p, e));
                    break;
                }
            }
        }
        let Some((failed, err)) = failure else {
            return Ok(done.into_iter().map(|(_, c)| c).collect());
        };
        // Roll back every VF of this claim, the failed one first.
        let mut rollback_err = None;
        let rest: Vec<Pick> = pending.collect();
        let all = std::iter::once(failed)
            .chain(done.into_iter().map(|(p, _)| p))
            .chain(rest);
        for p in all {
            let lease = self.ledger.read(p.lease.vf)?.unwrap_or(p.lease.clone());
            if let Err(e) = self.release_locked(lease, Duration::ZERO) {
                rollback_err.get_or_insert(e);
            }
            drop(p.guard);
        }
        Err(match rollback_err {
            None => ClaimError::RolledBack(Box::new(err)),
            Some(r) => ClaimError::RollbackFailed {
                first: Box::new(err),
                rollback: Box::new(r),
            },
        })
    }

    fn existing(
        &self,
        owner: &str,
        mine: Vec<Lease>,
        reqs: &[NetworkRequest],
    ) -> Result<Vec<ClaimedVf>, ClaimError> {
        let incomplete: Vec<String> = mine
            .iter()
            .filter(|l| l.state != LeaseState::Claimed)
            .map(|l| format!("{} {:?}", l.vf, l.state))
            .collect();
        if !incomplete.is_empty() {
            return Err(ClaimError::OwnerBusy {
                owner: owner.to_owned(),
                vfs: incomplete.join(", "),
            });
        }
        let mut held: Vec<&str> = mine.iter().map(|l| l.pool.as_str()).collect();
        let mut asked: Vec<&str> = reqs.iter().map(|r| r.pool.as_str()).collect();
        held.sort_unstable();
        asked.sort_unstable();
        // A pinned request must find exactly its VF among those held.
        let pins_differ = reqs
            .iter()
            .filter_map(|r| r.vf)
            .any(|vf| !mine.iter().any(|l| l.vf == vf));
        if held != asked || pins_differ {
            return Err(ClaimError::OwnerMismatch {
                owner: owner.to_owned(),
                held: mine.len(),
                pools: held.join(","),
                asked: reqs.len(),
            });
        }
        mine.iter().map(|l| self.claimed_vf(l)).collect()
    }

    /// What a (claimed) lease hands to the spec and guest.
    pub fn claimed_vf(&self, l: &Lease) -> Result<ClaimedVf, ClaimError> {
        let pool = self.cfg.pool(&l.pool);
        let dev_node = match (l.mode, l.iommu_group) {
            (Mode::Vfio, Some(g)) => Some(vfio::group_node(&self.cfg.dev_root, g, self.node_wait)?),
            _ => None,
        };
        let mut l3 = l.l3.clone();
        if l3.mtu.is_none() {
            l3.mtu = pool.and_then(|p| p.mtu);
        }
        Ok(ClaimedVf {
            pool: l.pool.clone(),
            mode: l.mode,
            guest: pool.map(|p| self.cfg.guest_mode(p)).unwrap_or_default(),
            pf: l.pf,
            vf_index: l.vf_index,
            vf: l.vf,
            pci_id: l.pci_id,
            mac: l.mac,
            iommu_group: l.iommu_group,
            dev_node,
            netdev: match l.mode {
                Mode::Netdev => self.sysfs.netdevs(l.vf)?.into_iter().next(),
                Mode::Vfio => None,
            },
            l3,
        })
    }

    /// Under the host-wide lock: chooses VFs, reads their originals, takes
    /// their locks. Writes nothing.
    fn pick(
        &self,
        owner: &str,
        reqs: &[NetworkRequest],
        check: &OwnerCheck,
        entries: &[ledger::LeaseEntry],
        dan_file: Option<&Path>,
    ) -> Result<Vec<Pick>, ClaimError> {
        let mut taken: HashSet<PciAddress> = entries.iter().map(|e| e.vf).collect();
        let mut macs_in_use: HashSet<MacAddr> = entries
            .iter()
            .filter_map(|e| e.lease.as_ref().ok().and_then(|l| l.mac))
            .collect();
        // A MAC a container asks for is checked against every host
        // interface; a generated one only where it could clash (mac.rs).
        if reqs.iter().any(|r| r.mac.is_some()) {
            macs_in_use.extend(mac::host_macs(&self.sysfs));
        }
        let mut picks: Vec<Pick> = Vec::new();
        let mut per_pool: HashMap<&str, usize> = HashMap::new();
        for r in reqs {
            *per_pool.entry(r.pool.as_str()).or_default() += 1;
        }
        for r in reqs {
            let pool = self.pool(r.pool.as_str())?;
            let mut why = String::new();
            let found = match r.vf {
                Some(vf) => Some(self.find_pinned(pool, vf, &taken, entries)?),
                None => self.find_free(pool, &taken, &mut why)?,
            };
            let Some((pf, pf_netdev, index, vf, group, driver)) = found else {
                let free = picks.iter().filter(|p| p.lease.pool == pool.name).count();
                return Err(ClaimError::Exhausted {
                    pool: pool.name.clone(),
                    wanted: per_pool.get(pool.name.as_str()).copied().unwrap_or(1),
                    free,
                    why,
                });
            };
            let Some(guard) = self.ledger.lock_vf(vf, VF_LOCK_WAIT)? else {
                return Err(ClaimError::Busy { vf });
            };
            taken.insert(vf);
            // A pool that sets MACs reads the VF's neighbours with its
            // original settings (one message) to keep its MAC unique there.
            let chooses_mac = pool.mac != MacPolicy::Keep;
            let (original, segment) = if pool.uses_netlink() {
                let ifn = pf_netdev.clone().ok_or(ClaimError::NoPfNetdev(pf))?;
                if chooses_mac {
                    let view = self.nl.pf_view(&ifn, index)?;
                    let mut segment = view.macs;
                    segment.extend(mac::stacked_macs(&self.sysfs, &ifn));
                    (Some(view.vf), segment)
                } else {
                    (Some(self.nl.vf_settings(&ifn, index)?), Vec::new())
                }
            } else {
                (None, Vec::new())
            };
            let mac = match (pool.mac, r.mac) {
                (MacPolicy::Keep, _) => original
                    .as_ref()
                    .map(|o| o.mac)
                    .filter(|m| m.is_assignable()),
                (MacPolicy::Request, Some(m)) => {
                    if macs_in_use.contains(&m) || segment.contains(&m) {
                        return Err(ClaimError::MacInUse(m));
                    }
                    Some(m)
                }
                _ => Some(
                    mac::generate_avoiding(&macs_in_use, &segment).map_err(ClaimError::Random)?,
                ),
            };
            let mut settings = Vec::new();
            if let (Some(m), true) = (mac, pool.mac != MacPolicy::Keep) {
                macs_in_use.insert(m);
                settings.push(VfSetting::Mac(m));
            }
            settings.extend(pool.vf_settings());
            self.step(Step::Picked);
            let now = ledger::now_secs();
            picks.push(Pick {
                lease: Lease {
                    owner: owner.to_owned(),
                    pool: pool.name.clone(),
                    mode: pool.mode,
                    pf,
                    pf_netdev,
                    vf_index: index,
                    vf,
                    pci_id: self.sysfs.pci_id(vf)?,
                    state: LeaseState::Claiming,
                    original_driver: driver,
                    original_settings: original,
                    settings,
                    mac,
                    iommu_group: group,
                    l3: r.l3.clone(),
                    owner_check: check.clone(),
                    dan_file: dan_file.map(Path::to_path_buf),
                    netdev_move: None,
                    pod: None,
                    pods: Vec::new(),
                    created: now,
                    updated: now,
                },
                guard,
            });
        }
        Ok(picks)
    }

    /// The first free VF of a pool: (pf, pf netdev, index, vf, group, driver).
    #[allow(clippy::type_complexity)]
    fn find_free(
        &self,
        pool: &Pool,
        taken: &HashSet<PciAddress>,
        why: &mut String,
    ) -> Result<Option<Found>, ClaimError> {
        let mut skipped: Vec<String> = Vec::new();
        for name in &pool.pfs {
            let pf = self.sysfs.resolve_pf(name)?;
            let info = self.sysfs.pf_info(pf)?;
            for index in 0..info.num_vfs {
                let vf = match self.sysfs.vf_addr(pf, index) {
                    Ok(vf) => vf,
                    Err(e) => {
                        skipped.push(chain(&e));
                        continue;
                    }
                };
                if taken.contains(&vf) {
                    continue;
                }
                match self.usable(pool, vf)? {
                    Ok((group, driver)) => {
                        return Ok(Some((pf, info.netdev().cloned(), index, vf, group, driver)))
                    }
                    Err(reason) => skipped.push(reason),
                }
            }
        }
        if !skipped.is_empty() {
            let n = skipped.len();
            skipped.truncate(3);
            *why = format!(
                "; {n} VF(s) skipped: {}{}",
                skipped.join("; "),
                if n > 3 { "; ..." } else { "" }
            );
        }
        Ok(None)
    }

    /// Whether `vf` can serve `pool` (alone in its IOMMU group in vfio
    /// mode, on a driver the pool can use): its group and driver, or why
    /// not. Does not look at leases.
    #[allow(clippy::type_complexity)]
    pub fn usable(
        &self,
        pool: &Pool,
        vf: PciAddress,
    ) -> Result<Result<(Option<u32>, Option<String>), String>, ClaimError> {
        let driver = self.sysfs.driver(vf)?;
        let group = match pool.mode {
            Mode::Vfio => match iommu::check_isolated(&self.sysfs, vf) {
                Ok(g) => Some(g),
                Err(e @ IommuError::Off { .. }) => return Err(e.into()),
                Err(e) => return Ok(Err(chain(&e))),
            },
            Mode::Netdev => self.sysfs.iommu_group(vf)?,
        };
        let usable = match (pool.mode, driver.as_deref()) {
            // Already on vfio-pci with no lease: usable only when no
            // process (another tool's VM) has its group open.
            (Mode::Vfio, Some(VFIO_PCI)) => group.is_some_and(|g| {
                let node = self.cfg.dev_root.join("vfio").join(g.to_string());
                vfio::holders(&self.proc_root, &node).is_empty()
            }),
            (Mode::Vfio, _) => true,
            (Mode::Netdev, Some(d)) => d != VFIO_PCI && !self.sysfs.netdevs(vf)?.is_empty(),
            (Mode::Netdev, None) => false,
        };
        if !usable {
            return Ok(Err(format!(
                "{vf} is on {driver:?}, not usable for this pool"
            )));
        }
        Ok(Ok((group, driver)))
    }

    /// Exactly `vf`, which must be a VF of one of `pool`'s PFs, without a
    /// lease, and usable ([`Engine::usable`]); else an error naming it and why.
    #[allow(clippy::type_complexity)]
    fn find_pinned(
        &self,
        pool: &Pool,
        vf: PciAddress,
        taken: &HashSet<PciAddress>,
        entries: &[ledger::LeaseEntry],
    ) -> Result<Found, ClaimError> {
        let unavailable = |why: String| ClaimError::PinnedUnavailable {
            vf,
            pool: pool.name.clone(),
            why,
        };
        if taken.contains(&vf) {
            let holder = entries
                .iter()
                .find(|e| e.vf == vf)
                .map(|e| match &e.lease {
                    Ok(l) => format!("it is leased to {:?} ({:?})", l.owner, l.state),
                    Err(_) => "its lease is unreadable (quarantined)".to_owned(),
                })
                .unwrap_or_else(|| "it is asked for twice in this claim".to_owned());
            return Err(unavailable(holder));
        }
        for name in &pool.pfs {
            let pf = self.sysfs.resolve_pf(name)?;
            let info = self.sysfs.pf_info(pf)?;
            for index in 0..info.num_vfs {
                if self.sysfs.vf_addr(pf, index).ok() != Some(vf) {
                    continue;
                }
                return match self.usable(pool, vf)? {
                    Ok((group, driver)) => {
                        Ok((pf, info.netdev().cloned(), index, vf, group, driver))
                    }
                    Err(reason) => Err(unavailable(reason)),
                };
            }
        }
        Err(unavailable(format!(
            "it is not a VF of the pool's PFs ({}): it is gone or belongs to another pool",
            pool.pfs.join(", ")
        )))
    }

    /// The slow steps of one VF, under its own lock.
    fn configure(&self, mut lease: Lease) -> Result<ClaimedVf, ClaimError> {
        if !lease.settings.is_empty() {
            let pf = self.pf_ifname(&lease)?;
            // One setting per message (a refused one is then known, and
            // the earlier ones are rolled back), one read-back for all.
            for (i, s) in lease.settings.iter().enumerate() {
                self.nl.set_vf(&pf, lease.vf_index, *s)?;
                self.step(Step::SettingApplied(i));
            }
            netlink::verify(self.nl, &pf, lease.vf_index, &lease.settings)?;
            self.step(Step::ReadBack);
        }
        if lease.mode == Mode::Vfio && self.sysfs.driver(lease.vf)?.as_deref() != Some(VFIO_PCI) {
            self.binder.bind(lease.vf, Some(VFIO_PCI))?;
            self.step(Step::Bound);
        }
        if lease.mode == Mode::Netdev && sets_mac(&lease.settings) {
            self.reset_netdev_vf(&lease)?;
        }
        let out = {
            lease.state = LeaseState::Claimed;
            self.claimed_vf(&lease)?
        };
        self.step(Step::Described);
        lease.updated = ledger::now_secs();
        self.ledger.update(&lease)?;
        self.step(Step::Claimed);
        Ok(out)
    }

    /// Rebinds a netdev-mode VF to its driver, which resets it: a VF
    /// driver takes an admin MAC set on the PF only at reset, and drivers
    /// such as igbvf then refuse any other MAC (EADDRNOTAVAIL), so without
    /// this the VF's netdev would keep its old MAC. (vfio-pci VFs are reset
    /// by the bind itself.)
    fn reset_netdev_vf(&self, lease: &Lease) -> Result<(), ClaimError> {
        if let Some(drv) = self.sysfs.driver(lease.vf)? {
            self.binder.bind(lease.vf, None)?;
            self.binder.bind(lease.vf, Some(&drv))?;
        }
        Ok(())
    }

    /// Releases every VF `owner` holds. Idempotent: an owner with nothing
    /// is fine, and concurrent releases of the same owner agree.
    pub fn release(&self, owner: &str) -> Result<Vec<PciAddress>, ClaimError> {
        let mut released = Vec::new();
        let mut first_err = None;
        for e in self.ledger.list()? {
            let Ok(l) = e.lease else { continue };
            if l.owner != owner {
                continue;
            }
            match self.release_vf(l.vf, Some(owner)) {
                Ok(true) => released.push(l.vf),
                Ok(false) => {}
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// Releases one VF (only if `owner` matches, when given). Returns
    /// whether this call did the release.
    pub fn release_vf(&self, vf: PciAddress, owner: Option<&str>) -> Result<bool, ClaimError> {
        // Wait for a claim or another release working on this VF.
        let wait = self.release_wait + Duration::from_secs(30);
        let Some(_guard) = self.ledger.lock_vf(vf, wait)? else {
            return Err(ClaimError::Busy { vf });
        };
        let Some(lease) = self.ledger.read(vf)? else {
            return Ok(false);
        };
        if owner.is_some_and(|o| o != lease.owner) {
            return Ok(false);
        }
        self.release_locked(lease, self.release_wait)?;
        Ok(true)
    }

    /// The release steps, with the VF's lock held by the caller.
    fn release_locked(&self, mut lease: Lease, wait: Duration) -> Result<(), ClaimError> {
        if lease.state != LeaseState::Releasing {
            lease.state = LeaseState::Releasing;
            lease.updated = ledger::now_secs();
            self.ledger.update(&lease)?;
            self.step(Step::MarkedReleasing);
        }
        // netdev mode: the VF's interface back home, under its own name,
        // before anything else changes the VF.
        if let (Mode::Netdev, Some(mv)) = (lease.mode, &lease.netdev_move) {
            crate::kernel::netns::return_to_host(
                &self.sysfs,
                &self.proc_root,
                lease.vf,
                lease.mac,
                mv,
                wait.max(crate::kernel::netns::RETURN_WAIT_MIN),
            )?;
        }
        let driver = self.sysfs.driver(lease.vf)?;
        if lease.mode == Mode::Vfio && driver.as_deref() == Some(VFIO_PCI) {
            if let Some(g) = lease.iommu_group {
                self.wait_unused(lease.vf, g, wait)?;
            }
        }
        let original = lease.original_driver.as_deref();
        if driver.is_some() && driver.as_deref() != original {
            self.binder.bind(lease.vf, None)?;
            self.step(Step::Unbound);
        }
        if let Some(orig) = &lease.original_settings {
            let pf = self.pf_ifname(&lease)?;
            let now = self.nl.vf_settings(&pf, lease.vf_index)?;
            let mut restored = Vec::new();
            for (i, s) in lease.settings.iter().enumerate().rev() {
                if let Some(back) = restore_of(s, orig, &now) {
                    self.nl.set_vf(&pf, lease.vf_index, back)?;
                    restored.push(back);
                }
                self.step(Step::SettingRestored(i));
            }
            netlink::verify(self.nl, &pf, lease.vf_index, &restored)?;
            self.step(Step::RestoreReadBack);
            // The host netdev takes its original MAC back at reset.
            if lease.mode == Mode::Netdev && sets_mac(&restored) {
                self.reset_netdev_vf(&lease)?;
            }
        }
        if self.sysfs.driver(lease.vf)?.as_deref() != original {
            self.binder.bind(lease.vf, original)?;
            self.step(Step::Rebound);
        }
        if let Some(f) = &lease.dan_file {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(
                        LedgerError::Io(IoError::new("deleting DAN file", f.clone(), e)).into(),
                    )
                }
            }
        }
        self.ledger.remove(lease.vf)?;
        self.step(Step::LeaseRemoved);
        Ok(())
    }

    fn wait_unused(&self, vf: PciAddress, group: u32, wait: Duration) -> Result<(), ClaimError> {
        let node = self.cfg.dev_root.join("vfio").join(group.to_string());
        let start = Instant::now();
        loop {
            let Some(pids) = vfio::group_busy(&self.proc_root, &node) else {
                return Ok(());
            };
            if start.elapsed() >= wait {
                return Err(ClaimError::InUse {
                    vf,
                    pids,
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Finishes interrupted claims and releases, releases leases whose
    /// owner is gone, and reports unreadable leases (quarantined).
    pub fn gc(&self) -> Result<GcReport, ClaimError> {
        let mut report = GcReport::default();
        self.ledger.remove_stale_temps();
        for entry in self.ledger.list()? {
            let vf = entry.vf;
            if let Err(reason) = entry.lease {
                report.quarantined.push((vf, reason));
                continue;
            }
            let Some(_guard) = self.ledger.lock_vf(vf, Duration::ZERO)? else {
                report.busy.push(vf);
                continue;
            };
            // Re-read under the lock: it may have changed or gone.
            let lease = match self.ledger.read(vf) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    report.quarantined.push((vf, chain(&e)));
                    continue;
                }
            };
            let release = match lease.state {
                // Nobody holds the lock: the claimer or releaser died.
                LeaseState::Claiming | LeaseState::Releasing => true,
                LeaseState::Claimed => {
                    ledger::owner_alive(&lease.owner_check, &self.proc_root) == Some(false)
                }
            };
            if !release {
                report.kept += 1;
                continue;
            }
            let owner = lease.owner.clone();
            match self.release_locked(lease, self.release_wait) {
                Ok(()) => report.released.push((vf, owner)),
                Err(e) => report.failed.push((vf, chain(&e))),
            }
        }
        Ok(report)
    }
}

/// The setting that puts back the original value of what `s` changed, or
/// None when the VF already has it (or the driver never reported it).
fn restore_of(s: &VfSetting, orig: &VfSettings, now: &VfSettings) -> Option<VfSetting> {
    let back = orig.get(s.kind())?;
    (now.get(s.kind()) != Some(back)).then_some(back)
}

fn sets_mac(settings: &[VfSetting]) -> bool {
    settings.iter().any(|s| matches!(s, VfSetting::Mac(_)))
}
