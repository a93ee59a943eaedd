//! The engine's door to the ledger for everything outside claim and
//! release: reading an owner's leases, and changing one lease under its
//! VF's lock ([`Engine::hold`] then [`HeldLease::commit`], the one
//! lock-read-modify-write path). Integrations never open the ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::claim::{ClaimError, Engine};
use crate::pci::PciAddress;
use crate::policy::owner;
use crate::state::ledger::{self, Lease, LockGuard, OwnerCheck};

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

    /// The readable leases recorded under `owner`.
    pub fn leases_of(&self, owner: &str) -> Result<Vec<Lease>, ClaimError> {
        Ok(self
            .ledger
            .list()?
            .into_iter()
            .filter_map(|e| e.lease.ok())
            .filter(|l| l.owner == owner)
            .collect())
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
        for l in self.leases_of(owner)? {
            let mut held = self.hold(l.vf, HOLD_WAIT)?;
            held.lease.dan_file = path.map(Path::to_path_buf);
            held.commit()?;
        }
        Ok(())
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
