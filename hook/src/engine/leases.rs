//! The engine's door to the ledger for everything outside claim and
//! release: reading an owner's leases, and changing one lease under its
//! VF's lock ([`Engine::hold`] then [`HeldLease::commit`], the one
//! lock-read-modify-write path). Integrations never open the ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::claim::{ClaimError, ClaimedVf, Engine};
use crate::pci::PciAddress;
use crate::policy::config::{GuestMode, Mode};
use crate::policy::owner;
use crate::state::ledger::{self, Lease, LeaseState, LockGuard, OwnerCheck, PodRef};

/// How long a change to one lease waits for its VF's lock.
pub const HOLD_WAIT: Duration = Duration::from_secs(30);

/// A lease read under its VF's lock; changes are written by
/// [`HeldLease::commit`] while the lock is still held.
pub struct HeldLease<'e> {
    engine: &'e Engine<'e>,
    pub lease: Lease,
    _guard: LockGuard,
}

impl HeldLease<'_> {
    /// Writes the (changed) lease atomically, stamping `updated`.
    pub fn commit(&mut self) -> Result<(), ClaimError> {
        self.lease.updated = ledger::now_secs();
        self.engine.ledger.update(&self.lease)?;
        Ok(())
    }
}

impl<'a> Engine<'a> {
    /// Takes `vf`'s lock (waiting up to `wait`) and reads its lease.
    pub fn hold(&'a self, vf: PciAddress, wait: Duration) -> Result<HeldLease<'a>, ClaimError> {
        let guard = self
            .ledger
            .lock_vf(vf, wait)?
            .ok_or(ClaimError::Busy { vf })?;
        let lease = self.ledger.read(vf)?.ok_or(ClaimError::LeaseGone { vf })?;
        Ok(HeldLease {
            engine: self,
            lease,
            _guard: guard,
        })
    }

    /// Records `pod` (`namespace/name`, None: none) as the holder of the
    /// device plugin VF `vf` when `owner` still holds it. Returns whether
    /// the lease changed.
    pub fn set_pod(
        &'a self,
        vf: PciAddress,
        owner: &str,
        pod: Option<&str>,
    ) -> Result<bool, ClaimError> {
        let mut held = self.hold(vf, HOLD_WAIT)?;
        if held.lease.owner != owner || held.lease.pod.as_deref() == pod {
            return Ok(false);
        }
        if pod.is_some_and(|p| !owner::valid(p)) {
            return Err(ClaimError::BadOwner(crate::error::printable(
                pod.unwrap_or_default(),
            )));
        }
        held.lease.pod = pod.map(str::to_owned);
        held.commit()?;
        Ok(true)
    }

    /// The complete leases of the Kubernetes device plugin: those recorded
    /// for `pod` (`namespace/name`), and how many no pod is recorded for yet.
    pub fn device_plugin_leases(&self, pod: &str) -> Result<(Vec<Lease>, usize), ClaimError> {
        let mut mine = Vec::new();
        let mut unknown = 0;
        for l in self.readable_leases()? {
            if !l.owner.starts_with(owner::DEVICE_PLUGIN_PREFIX) || l.state != LeaseState::Claimed {
                continue;
            }
            match l.pod.as_deref() {
                Some(p) if p == pod => mine.push(l),
                Some(_) => {}
                None => unknown += 1,
            }
        }
        Ok((mine, unknown))
    }

    /// The readable leases recorded under `owner`.
    pub fn leases_of(&self, owner: &str) -> Result<Vec<Lease>, ClaimError> {
        let mut leases = self.readable_leases()?;
        leases.retain(|l| l.owner == owner);
        Ok(leases)
    }

    /// The leases a hook may act on for `owner`, given what its own state
    /// says (`bundle`; `from_annotation`: the owner came from the spec's
    /// owner annotation, which the container can write). Each lease is
    /// checked against what the host side recorded at the claim: a lease
    /// tied to a bundle only for that bundle; an untied lease only for a
    /// generated precreate token (unguessable), or for the state's own id
    /// when the state has no bundle either. Anything else is refused
    /// before anything changes.
    pub fn authorize(
        &self,
        owner: &str,
        bundle: Option<&Path>,
        from_annotation: bool,
    ) -> Result<Vec<Lease>, ClaimError> {
        let leases = self.leases_of(owner)?;
        for l in &leases {
            let ok = match &l.owner_check {
                OwnerCheck::Bundle(b) => bundle == Some(b.as_path()),
                OwnerCheck::None => {
                    owner::is_generated(owner) || (!from_annotation && bundle.is_none())
                }
                OwnerCheck::Precreate { .. } => owner::is_generated(owner),
                OwnerCheck::Process { .. } => false,
            };
            if !ok {
                return Err(ClaimError::NotOwner {
                    owner: owner.to_owned(),
                    vf: l.vf,
                    bundle: bundle.map(Path::to_path_buf),
                });
            }
        }
        Ok(leases)
    }

    /// Ties a `hook precreate` claim to the container that received it:
    /// each of `owner`'s leases still waiting for its container
    /// ([`OwnerCheck::Precreate`]) is bound to `bundle`. Run by the
    /// container's createRuntime hook; an error when the claim is gone
    /// (gc reclaimed it: the runtime must not go on without its VFs) or
    /// bound to another bundle. Returns how many leases were bound.
    pub fn confirm(&'a self, owner: &str, bundle: &Path) -> Result<usize, ClaimError> {
        let leases = self.authorize(owner, Some(bundle), true)?;
        if leases.is_empty() {
            return Err(ClaimError::Reclaimed {
                owner: owner.to_owned(),
            });
        }
        let mut bound = 0;
        for l in leases {
            let mut held = self.hold(l.vf, HOLD_WAIT)?;
            match &held.lease.owner_check {
                OwnerCheck::Precreate { .. } if held.lease.owner == owner => {
                    held.lease.owner_check = OwnerCheck::Bundle(bundle.to_path_buf());
                    held.commit()?;
                    bound += 1;
                }
                OwnerCheck::Bundle(b) if b == bundle && held.lease.owner == owner => {}
                _ => return Err(ClaimError::LeaseGone { vf: l.vf }),
            }
        }
        Ok(bound)
    }

    /// Whether one of `owner`'s leases records `path` as its DAN file (a
    /// file another owner wrote is not this owner's to replace).
    pub fn owns_dan_file(&self, owner: &str, path: &Path) -> Result<bool, ClaimError> {
        Ok(self
            .leases_of(owner)?
            .iter()
            .any(|l| l.dan_file.as_deref() == Some(path)))
    }

    /// Sets (or clears) the DAN file recorded in each of `owner`'s leases.
    pub fn set_dan_file(&self, owner: &str, path: Option<&Path>) -> Result<(), ClaimError> {
        self.change_leases_of(owner, |l| {
            l.dan_file = path.map(Path::to_path_buf);
            true
        })
    }

    /// Records in each of `owner`'s leases the pods whose sandbox may
    /// cold-plug its VF (the DRA agent: the pods its claim is reserved
    /// for; an empty list stops cold plug). Leases already recording
    /// exactly `pods` are not rewritten.
    pub fn set_pods(&self, owner: &str, pods: &[PodRef]) -> Result<(), ClaimError> {
        self.change_leases_of(owner, |l| {
            let changed = l.pods != pods;
            l.pods = pods.to_vec();
            changed
        })
    }

    /// Changes each of `owner`'s leases with `change` under its VF's lock,
    /// writing those it reports changed. A lease that changed hands between
    /// the listing and the lock (released, then claimed by another owner)
    /// is left alone: nothing of one owner is ever written into another's.
    fn change_leases_of(
        &self,
        owner: &str,
        mut change: impl FnMut(&mut Lease) -> bool,
    ) -> Result<(), ClaimError> {
        for l in self.leases_of(owner)? {
            let mut held = self.hold(l.vf, HOLD_WAIT)?;
            if held.lease.owner == owner && change(&mut held.lease) {
                held.commit()?;
            }
        }
        Ok(())
    }

    /// Every lease that reads back whole (corrupt ones are gc's and
    /// status's business).
    fn readable_leases(&self) -> Result<Vec<Lease>, ClaimError> {
        Ok(self
            .ledger
            .list()?
            .into_iter()
            .filter_map(|e| e.lease.ok())
            .collect())
    }

    /// The VFs to cold-plug into `pod`'s sandbox: complete leases of vfio
    /// pools whose guest is the helper, recording `pod` as the only pod
    /// (a VF can be in one VM only, so a claim shared by several pods is
    /// left to the containers' own devices), in VF order.
    pub fn pod_vfs(&self, pod: &PodRef) -> Result<Vec<ClaimedVf>, ClaimError> {
        let mut leases = self.readable_leases()?;
        leases.retain(|l| {
            l.state == LeaseState::Claimed
                && l.mode == Mode::Vfio
                && l.pods.as_slice() == std::slice::from_ref(pod)
        });
        leases.sort_by_key(|l| l.vf);
        leases
            .iter()
            .map(|l| self.claimed_vf(l))
            .filter(|c| !matches!(c, Ok(c) if c.guest != GuestMode::Helper))
            .collect()
    }

    /// The host-wide lock, for state that must change together with the
    /// set of leases (the Docker driver's network map).
    pub fn host_lock(&self) -> Result<LockGuard, ClaimError> {
        Ok(self.ledger.lock_global()?)
    }

    /// The state directory (where integrations keep their own files).
    pub fn state_dir(&self) -> PathBuf {
        self.ledger.dir().to_path_buf()
    }
}
