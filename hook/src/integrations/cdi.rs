//! `kata-sriov cdi claim|release`: a VF claimed for a CDI-aware engine
//! (Docker 28, podman 5, containerd 2's CRI) and handed to it by name:
//! `docker run --device kata-sriov.io/vf=NAME`. The claim is the admin's,
//! not a container's: it is recorded under the owner `cdi/NAME` with no
//! liveness check (gc never releases it), and lasts until `kata-sriov cdi
//! release NAME` (or `kata-sriov release cdi/NAME`), which releases the VF
//! and deletes the spec. `kata-sriov gc` deletes the specs of ours whose
//! claim is gone.
//!
//! Files: `<[cdi] dir>/kata-sriov-cdi-NAME.json` (CDI spec, kind
//! [`KIND`], one device NAME with the VFIO nodes and the guest description,
//! see [`crate::oci::cdi`]), written atomically after the claim; a failed
//! write releases the claim. Only `mode = "vfio"` pools whose guest is the
//! helper qualify: CDI hands a container device nodes and environment, not
//! a network interface or a Kata DAN file.

use std::path::PathBuf;

use crate::engine::claim::{ClaimError, ClaimedVf, Engine};
use crate::kernel::vfio::{self, VfioError};
use crate::oci::cdi::{self, CdiError};
use crate::pci::PciAddress;
use crate::policy::config::{GuestMode, Mode, PoolName};
use crate::policy::request::NetworkRequest;
use crate::state::ledger::OwnerCheck;

/// The CDI kind of the devices (the Kubernetes agent's too).
pub use crate::oci::cdi::VF_KIND as KIND;
/// The owner a CDI claim's lease is recorded under: `cdi/NAME`.
pub const OWNER_PREFIX: &str = "cdi/";
/// The spec file of a CDI claim: `kata-sriov-cdi-NAME.json`.
pub const STEM_PREFIX: &str = "kata-sriov-cdi-";

#[derive(Debug, thiserror::Error)]
pub enum CdiClaimError {
    #[error(transparent)]
    Name(CdiError),
    #[error("pool name {0:?}")]
    Pool(String, #[source] crate::pci::ParseError),
    #[error("pool {pool:?} is {what}: a CDI device carries VFIO device nodes, so only mode = \"vfio\" pools with the guest helper can be claimed for CDI")]
    Unsuitable { pool: String, what: &'static str },
    #[error("CDI device {name:?} is already claimed (owner {owner:?}); release it first (kata-sriov cdi release {name})")]
    Taken { name: String, owner: String },
    #[error(transparent)]
    Claim(Box<ClaimError>),
    #[error("generating a CDI device name")]
    Generate(#[source] crate::policy::owner::OwnerError),
    #[error("the VFIO container node")]
    Vfio(#[source] VfioError),
    #[error("CDI spec for {name:?}")]
    Spec {
        name: String,
        #[source]
        source: CdiError,
    },
    #[error("writing the CDI spec for {name:?} failed ({first}), and releasing its VF failed too; run `kata-sriov release {OWNER_PREFIX}{name}`")]
    Rollback {
        name: String,
        first: Box<CdiClaimError>,
        #[source]
        source: Box<ClaimError>,
    },
}

impl From<ClaimError> for CdiClaimError {
    fn from(e: ClaimError) -> Self {
        CdiClaimError::Claim(Box::new(e))
    }
}

/// What `cdi claim` made.
#[derive(Debug, Clone)]
pub struct CdiClaim {
    /// The fully qualified device name an engine is given (`kind=name`).
    pub qualified: String,
    pub spec: PathBuf,
    pub vfs: Vec<ClaimedVf>,
}

/// What `cdi release` undid.
#[derive(Debug, Clone, Default)]
pub struct CdiRelease {
    pub vfs: Vec<PciAddress>,
    /// The spec file deleted, if there was one.
    pub spec: Option<PathBuf>,
}

/// The owner of the CDI claim NAME.
pub fn owner(name: &str) -> String {
    format!("{OWNER_PREFIX}{name}")
}

/// The CDI device name of an owner, if it is a CDI claim's.
pub fn name_of(owner: &str) -> Option<&str> {
    owner
        .strip_prefix(OWNER_PREFIX)
        .filter(|n| cdi::check_device_name(n).is_ok())
}

fn stem(name: &str) -> String {
    format!("{STEM_PREFIX}{name}")
}

/// A fresh device name `vf-<12 hex digits>`.
pub fn generate_name() -> Result<String, CdiClaimError> {
    crate::policy::owner::generate("vf")
        .map(|t| {
            let hex = t.rsplit('/').next().unwrap_or_default();
            format!("vf-{}", &hex[..hex.len().min(12)])
        })
        .map_err(CdiClaimError::Generate)
}

/// Claims one VF of `pool` as CDI device `name` and writes its spec.
/// Everything is checked before the claim; a failed write releases it.
pub fn claim(engine: &Engine<'_>, pool: &str, name: &str) -> Result<CdiClaim, CdiClaimError> {
    cdi::check_device_name(name).map_err(CdiClaimError::Name)?;
    let pool_name: PoolName = pool
        .parse()
        .map_err(|e| CdiClaimError::Pool(pool.to_owned(), e))?;
    let req = [NetworkRequest::plain(pool_name)];
    crate::engine::claim::check_requests(engine.cfg, &req)?;
    if let Some(p) = engine.cfg.pool(pool) {
        let what = match (p.mode, engine.cfg.guest_mode(p)) {
            (Mode::Netdev, _) => Some("a netdev pool"),
            (Mode::Vfio, GuestMode::Dan) => {
                Some("a guest = \"dan\" pool (Kata's DAN file needs the shim)")
            }
            (Mode::Vfio, _) => None,
        };
        if let Some(what) = what {
            return Err(CdiClaimError::Unsuitable {
                pool: pool.to_owned(),
                what,
            });
        }
    }
    let owner = owner(name);
    let dir = &engine.cfg.cdi.dir;
    let spec_err = |source| CdiClaimError::Spec {
        name: name.to_owned(),
        source,
    };
    let taken = !engine.leases_of(&owner)?.is_empty()
        || cdi::read(dir, &stem(name)).map_err(spec_err)?.is_some();
    if taken {
        return Err(CdiClaimError::Taken {
            name: name.to_owned(),
            owner,
        });
    }
    let vfs = engine.claim(&owner, &req, OwnerCheck::None)?;
    match write_spec(engine, name, &vfs) {
        Ok(spec) => Ok(CdiClaim {
            qualified: cdi::qualified(KIND, name),
            spec,
            vfs,
        }),
        Err(first) => match engine.release(&owner) {
            Ok(_) => Err(first),
            Err(e) => Err(CdiClaimError::Rollback {
                name: name.to_owned(),
                first: Box::new(first),
                source: Box::new(e),
            }),
        },
    }
}

fn write_spec(
    engine: &Engine<'_>,
    name: &str,
    vfs: &[ClaimedVf],
) -> Result<PathBuf, CdiClaimError> {
    let container = vfio::container_node(&engine.cfg.dev_root).map_err(CdiClaimError::Vfio)?;
    let devices: Vec<(String, ClaimedVf)> =
        vfs.iter().map(|v| (name.to_owned(), v.clone())).collect();
    let spec_err = |source| CdiClaimError::Spec {
        name: name.to_owned(),
        source,
    };
    let spec = cdi::build(KIND, &devices, Some(&container)).map_err(spec_err)?;
    cdi::write(&engine.cfg.cdi.dir, &stem(name), &spec).map_err(spec_err)
}

/// Releases the CDI claim `name` and deletes its spec.
pub fn release(engine: &Engine<'_>, name: &str) -> Result<CdiRelease, CdiClaimError> {
    cdi::check_device_name(name).map_err(CdiClaimError::Name)?;
    let vfs = engine.release(&owner(name))?;
    Ok(CdiRelease {
        vfs,
        spec: remove_spec(engine, name)?,
    })
}

/// Deletes the spec of `name`; its path when it existed.
pub fn remove_spec(engine: &Engine<'_>, name: &str) -> Result<Option<PathBuf>, CdiClaimError> {
    let dir = &engine.cfg.cdi.dir;
    let spec_err = |source| CdiClaimError::Spec {
        name: name.to_owned(),
        source,
    };
    let removed = cdi::remove(dir, &stem(name)).map_err(spec_err)?;
    Ok(removed
        .then(|| cdi::spec_path(dir, &stem(name)).ok())
        .flatten())
}

/// Deletes the specs of ours whose claim is gone (a release by other
/// means, a crash between release and delete); their paths.
pub fn remove_orphans(engine: &Engine<'_>) -> Result<Vec<PathBuf>, CdiClaimError> {
    let dir = &engine.cfg.cdi.dir;
    let stems = cdi::list(dir, STEM_PREFIX).map_err(|source| CdiClaimError::Spec {
        name: format!("{STEM_PREFIX}*"),
        source,
    })?;
    let mut out = Vec::new();
    for s in stems {
        let Some(name) = s.strip_prefix(STEM_PREFIX) else {
            continue;
        };
        if cdi::check_device_name(name).is_err() || !engine.leases_of(&owner(name))?.is_empty() {
            continue;
        }
        out.extend(remove_spec(engine, name)?);
    }
    Ok(out)
}
