//! NodePrepareResources and NodeUnprepareResources on the node, given the
//! ResourceClaim read from the API server: claims exactly the VFs the
//! scheduler allocated to this driver on this node through the engine
//! (lease owner = the claim's UID), writes the claim's CDI spec, and undoes
//! both. Synchronous; the gRPC layer runs it on a blocking thread.
//!
//! The ledger is the only record of what is prepared: a claim is prepared
//! when the engine holds complete leases under its UID. A second prepare
//! returns the same VFs (the engine's own idempotence) and rewrites the
//! same CDI spec; a failed prepare leaves no lease (the engine rolls back)
//! and no spec.
//!
//! With `--plug cold` (the default) prepare also records, in the claim's
//! leases, the pods the claim is reserved for (`status.reservedFor`), so
//! that our shim adds the VFs to that pod's sandbox at its start (Kata
//! cold plug); the CDI edits then carry no device node. With `--plug hot`
//! no pod is recorded and the CDI edits carry the `/dev/vfio` nodes.
//!
//! Opaque config (`status.allocation.devices.config[].opaque` whose driver
//! is ours) carries the guest side of a VF, as one entry of the
//! `io.kata-sriov.networks` annotation without `pool` (the scheduler chose
//! it): `{"name":"net1","ips":["10.0.0.5/24"],"gateway":"10.0.0.1",
//! "routes":[...],"mtu":1500,"mac":"02:..."}`, optionally with
//! `"apiVersion":"kata-sriov.io/v1alpha1","kind":"VfConfig"`. It is
//! validated exactly as an annotation entry is; a MAC is honoured only
//! where the pool allows it. Class config applies first, claim config
//! overrides it; among one source the later entry wins.

use std::path::Path;

use k8s_openapi::api::resource::v1::{DeviceAllocationConfiguration, ResourceClaim};
use kata_sriov::engine::claim::{ClaimError, ClaimedVf};
use kata_sriov::kernel::vfio;
use kata_sriov::oci::cdi::{self, CdiError};
use kata_sriov::pci::PciAddress;
use kata_sriov::policy::request::{self, EntryError, NetworkRequest, MAX_REQUEST_BYTES};
use kata_sriov::state::ledger::{OwnerCheck, PodRef};
use serde_json::Value;

use crate::host::{Host, Plug, Settings};
use crate::names::{self, NameError};

/// The version and kind opaque parameters may name.
pub const CONFIG_API_VERSION: &str = "kata-sriov.io/v1alpha1";
pub const CONFIG_KIND: &str = "VfConfig";

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("claim {claim}: the API server returned UID {found}, but the kubelet asked for {asked} (the claim was replaced)")]
    UidMismatch {
        claim: String,
        asked: String,
        found: String,
    },
    #[error("claim {claim}: not allocated yet")]
    NotAllocated { claim: String },
    #[error("claim {claim}: device {device:?} of pool {pool:?}")]
    Device {
        claim: String,
        pool: String,
        device: String,
        source: Box<NameError>,
    },
    #[error("claim {claim}: opaque config for request {request:?}: {reason}")]
    Config {
        claim: String,
        request: String,
        reason: String,
    },
    #[error("claim {claim}: opaque config for request {request:?}")]
    ConfigEntry {
        claim: String,
        request: String,
        source: EntryError,
    },
    #[error("claim {claim}: interface name {name} is given to two devices")]
    DuplicateName { claim: String, name: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("claim {claim}")]
    Claim {
        claim: String,
        source: Box<ClaimError>,
    },
    #[error("claim {claim}: status.reservedFor")]
    ReservedFor { claim: String, source: NameError },
    #[error("claim {claim}: writing its CDI spec")]
    Cdi { claim: String, source: CdiError },
    #[error("claim {claim}: {first}; releasing its VFs again also failed: {rollback}")]
    RollbackFailed {
        claim: String,
        first: Box<PrepareError>,
        rollback: Box<ClaimError>,
    },
}

/// One device of a prepared claim, as the kubelet is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub cdi_id: String,
}

/// One of our allocation results, resolved.
#[derive(Debug, Clone)]
struct Allocated {
    request: String,
    pool: String,
    device: String,
    vf: PciAddress,
    req: NetworkRequest,
}

/// Whether a config entry applies to allocation result `request` (a
/// subrequest `r/s` is matched by `r`).
fn applies(cfg: &DeviceAllocationConfiguration, request: &str) -> bool {
    match &cfg.requests {
        None => true,
        Some(rs) if rs.is_empty() => true,
        Some(rs) => rs.iter().any(|r| {
            r == request
                || request
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }),
    }
}

/// The opaque parameters of ours that apply to `request`: class config
/// first, then claim config, the last one winning.
fn config_for<'a>(
    configs: &'a [DeviceAllocationConfiguration],
    driver: &str,
    request: &str,
) -> Option<&'a Value> {
    let ours = |source: &'static str| {
        configs
            .iter()
            .filter(move |c| c.source == source && applies(c, request))
            .filter_map(|c| c.opaque.as_ref())
            .filter(|o| o.driver == driver)
            .map(|o| &o.parameters.0)
    };
    ours("FromClass").chain(ours("FromClaim")).last()
}

/// Parses opaque parameters (`params`, of request `request` in claim
/// `claim`) into the request for a VF of `pool`.
pub fn parse_config(
    claim: &str,
    request: &str,
    pool: &str,
    params: Option<&Value>,
) -> Result<NetworkRequest, PrepareError> {
    let err = |reason: String| PrepareError::Config {
        claim: claim.to_owned(),
        request: request.to_owned(),
        reason,
    };
    let mut map = match params {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(err("parameters must be a JSON object".into())),
    };
    let size = serde_json::to_vec(&map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_REQUEST_BYTES {
        return Err(err(format!(
            "{size} bytes is over the {MAX_REQUEST_BYTES}-byte limit"
        )));
    }
    for (key, want) in [("apiVersion", CONFIG_API_VERSION), ("kind", CONFIG_KIND)] {
        match map.remove(key) {
            None => {}
            Some(Value::String(s)) if s == want => {}
            Some(other) => return Err(err(format!("{key} must be {want:?}, found {other}"))),
        }
    }
    if map.contains_key("pool") {
        return Err(err(
            "\"pool\" is not allowed: the scheduler chose the device".into(),
        ));
    }
    map.insert("pool".into(), Value::String(pool.to_owned()));
    request::parse_entry(Value::Object(map)).map_err(|source| PrepareError::ConfigEntry {
        claim: claim.to_owned(),
        request: request.to_owned(),
        source,
    })
}

/// Our allocation results on this node, resolved to VFs and requests.
fn allocated(
    host: &Host,
    s: &Settings,
    claim: &ResourceClaim,
    label: &str,
) -> Result<Vec<Allocated>, PrepareError> {
    let alloc = claim
        .status
        .as_ref()
        .and_then(|st| st.allocation.as_ref())
        .ok_or_else(|| PrepareError::NotAllocated {
            claim: label.to_owned(),
        })?;
    let Some(devices) = &alloc.devices else {
        return Ok(Vec::new());
    };
    let configs = devices.config.as_deref().unwrap_or_default();
    let pools = host.pool_names();
    let mut out: Vec<Allocated> = Vec::new();
    for r in devices.results.as_deref().unwrap_or_default() {
        if r.driver != s.driver {
            continue;
        }
        // Another node's pool: not ours to prepare.
        let Some(kata_pool) = names::kata_pool(&s.node, &r.pool, &pools) else {
            continue;
        };
        let vf = names::parse_device_name(&r.device).map_err(|source| PrepareError::Device {
            claim: label.to_owned(),
            pool: r.pool.clone(),
            device: r.device.clone(),
            source: Box::new(source),
        })?;
        let mut req = parse_config(
            label,
            &r.request,
            kata_pool,
            config_for(configs, &s.driver, &r.request),
        )?;
        req.vf = Some(vf);
        if let Some(name) = &req.l3.name {
            if out.iter().any(|a| a.req.l3.name.as_ref() == Some(name)) {
                return Err(PrepareError::DuplicateName {
                    claim: label.to_owned(),
                    name: name.to_string(),
                });
            }
        }
        out.push(Allocated {
            request: r.request.clone(),
            pool: r.pool.clone(),
            device: r.device.clone(),
            vf,
            req,
        });
    }
    Ok(out)
}

/// Prepares claim `uid` (read from the API server as `claim`): claims its
/// VFs and writes its CDI spec. Idempotent.
pub fn prepare(
    host: &Host,
    s: &Settings,
    uid: &str,
    claim: &ResourceClaim,
) -> Result<Vec<Prepared>, PrepareError> {
    names::check_uid(uid)?;
    let label = format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    );
    let found = claim.metadata.uid.as_deref().unwrap_or_default();
    if found != uid {
        return Err(PrepareError::UidMismatch {
            claim: label,
            asked: uid.to_owned(),
            found: found.to_owned(),
        });
    }
    let ours = allocated(host, s, claim, &label)?;
    if ours.is_empty() {
        return Ok(Vec::new());
    }
    let _serial = host.serial();
    let engine = host.engine().map_err(|source| PrepareError::Claim {
        claim: label.clone(),
        source: Box::new(source),
    })?;
    let pods = match s.plug {
        Plug::Cold => reserved_pods(claim, &label)?,
        Plug::Hot => Vec::new(),
    };
    let reqs: Vec<NetworkRequest> = ours.iter().map(|a| a.req.clone()).collect();
    let claimed = engine
        .claim(uid, &reqs, OwnerCheck::None)
        .map_err(|source| PrepareError::Claim {
            claim: label.clone(),
            source: Box::new(source),
        })?;
    let done = engine
        .set_pods(uid, &pods)
        .map_err(|source| PrepareError::Claim {
            claim: label.clone(),
            source: Box::new(source),
        })
        .and_then(|()| write_spec(host, s, uid, &ours, &claimed));
    match done {
        Ok(out) => Ok(out),
        Err(first) => {
            // Nothing half-done: the VFs go back.
            match engine.release(uid) {
                Ok(_) => Err(first),
                Err(rollback) => Err(PrepareError::RollbackFailed {
                    claim: label,
                    first: Box::new(first),
                    rollback: Box::new(rollback),
                }),
            }
        }
    }
}

/// The pods claim `claim` (labelled `label`) is reserved for
/// (`status.reservedFor` entries of resource `pods` in the core group),
/// each in the claim's namespace: the sandboxes our shim may cold-plug
/// its VFs into.
fn reserved_pods(claim: &ResourceClaim, label: &str) -> Result<Vec<PodRef>, PrepareError> {
    let namespace = claim.metadata.namespace.clone().unwrap_or_default();
    let mut pods: Vec<PodRef> = Vec::new();
    let refs = claim
        .status
        .as_ref()
        .and_then(|st| st.reserved_for.as_deref());
    for r in refs.unwrap_or_default() {
        if r.resource != "pods" || !r.api_group.as_deref().unwrap_or_default().is_empty() {
            continue;
        }
        names::check_uid(&r.uid).map_err(|e| PrepareError::ReservedFor {
            claim: label.to_owned(),
            source: e,
        })?;
        let p = PodRef {
            namespace: namespace.clone(),
            uid: r.uid.clone(),
        };
        if !pods.contains(&p) {
            pods.push(p);
        }
    }
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok(pods)
}

fn write_spec(
    host: &Host,
    s: &Settings,
    uid: &str,
    ours: &[Allocated],
    claimed: &[ClaimedVf],
) -> Result<Vec<Prepared>, PrepareError> {
    let cdi_err = |source| PrepareError::Cdi {
        claim: uid.to_owned(),
        source,
    };
    let mut devices = Vec::new();
    let mut out = Vec::new();
    for a in ours {
        // The engine returns leases in its own order: match them by VF.
        let Some(c) = claimed.iter().find(|c| c.vf == a.vf) else {
            return Err(PrepareError::Claim {
                claim: uid.to_owned(),
                source: Box::new(ClaimError::PinnedUnavailable {
                    vf: a.vf,
                    pool: a.req.pool.to_string(),
                    why: "the engine returned other VFs".into(),
                }),
            });
        };
        let name = names::cdi_device(uid, a.vf);
        out.push(Prepared {
            request: a.request.clone(),
            pool: a.pool.clone(),
            device: a.device.clone(),
            cdi_id: cdi::qualified(names::CDI_KIND, &name),
        });
        devices.push((name, c.clone()));
    }
    let container = if claimed.iter().any(|c| c.dev_node.is_some()) {
        Some(
            vfio::container_node(&host.cfg.dev_root).map_err(|e| PrepareError::Claim {
                claim: uid.to_owned(),
                source: Box::new(e.into()),
            })?,
        )
    } else {
        None
    };
    let mut spec = cdi::build(names::CDI_KIND, &devices, container.as_ref()).map_err(cdi_err)?;
    if s.plug == Plug::Cold {
        // Our shim puts the VFs into the pod's sandbox: a device node here
        // would have Kata hot-plug the same VF into the same VM again.
        spec = cdi::without_device_nodes(spec);
    }
    cdi::write(&s.cdi_dir, &names::cdi_stem(uid), &spec).map_err(cdi_err)?;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum UnprepareError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("claim {uid}: releasing its VFs")]
    Release {
        uid: String,
        source: Box<ClaimError>,
    },
    #[error("claim {uid}: deleting its CDI spec")]
    Cdi { uid: String, source: CdiError },
}

/// Unprepares claim `uid`: releases its VFs (settings restored, original
/// driver back), then deletes its CDI spec. A claim never prepared is a
/// success. Returns the VFs released.
pub fn unprepare(host: &Host, s: &Settings, uid: &str) -> Result<Vec<PciAddress>, UnprepareError> {
    names::check_uid(uid)?;
    let _serial = host.serial();
    let rel = |source| UnprepareError::Release {
        uid: uid.to_owned(),
        source: Box::new(source),
    };
    let released = host.engine().map_err(rel)?.release(uid).map_err(rel)?;
    cdi::remove(&s.cdi_dir, &names::cdi_stem(uid)).map_err(|source| UnprepareError::Cdi {
        uid: uid.to_owned(),
        source,
    })?;
    Ok(released)
}

/// What start-up recovery did (of the DRA driver or the device plugin).
#[derive(Debug, Default)]
pub struct Recovered {
    /// Claims prepared before (complete leases under a claim UID), or the
    /// VFs the device plugin holds.
    pub prepared: Vec<String>,
    /// CDI specs deleted because no lease backs them.
    pub stale_specs: Vec<String>,
    /// What the engine's gc reported, one line.
    pub gc: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("recovering from the ledger: {0}")]
    Claim(Box<ClaimError>),
    #[error("recovering from the ledger: {0}")]
    Cdi(#[from] CdiError),
    #[error("recovering from the ledger: {0}")]
    DevicePlugin(Box<crate::deviceplugin::allocate::AllocError>),
}

/// One line of what the engine's gc did.
pub fn gc_summary(gc: &kata_sriov::engine::claim::GcReport) -> String {
    format!(
        "{} released, {} quarantined, {} busy, {} failed, {} kept",
        gc.released.len(),
        gc.quarantined.len(),
        gc.busy.len(),
        gc.failed.len(),
        gc.kept
    )
}

/// On start: finishes claims and releases a crash interrupted (the
/// engine's gc), then deletes the CDI specs of claims that hold no VF. The
/// prepared claims are those whose UID owns leases; nothing else is read.
pub fn recover(host: &Host, s: &Settings) -> Result<Recovered, RecoverError> {
    let _serial = host.serial();
    let claim_err = |e: ClaimError| RecoverError::Claim(Box::new(e));
    let engine = host.engine().map_err(claim_err)?;
    let gc = engine.gc().map_err(claim_err)?;
    let prepared = prepared_claims(&engine)?;
    let stale = remove_stale_specs(s, &prepared)?;
    Ok(Recovered {
        prepared,
        stale_specs: stale,
        gc: gc_summary(&gc),
    })
}

/// The claim UIDs that hold leases.
fn prepared_claims(
    engine: &kata_sriov::engine::claim::Engine<'_>,
) -> Result<Vec<String>, RecoverError> {
    let mut prepared: Vec<String> = engine
        .ledger
        .list()
        .map_err(|e| RecoverError::Claim(Box::new(e.into())))?
        .into_iter()
        .filter_map(|e| e.lease.ok())
        .map(|l| l.owner)
        .filter(|o| names::is_claim_owner(o))
        .collect();
    prepared.sort();
    prepared.dedup();
    Ok(prepared)
}

fn remove_stale_specs(s: &Settings, prepared: &[String]) -> Result<Vec<String>, RecoverError> {
    let mut stale = Vec::new();
    for stem in cdi::list(&s.cdi_dir, names::CDI_FILE_PREFIX)? {
        let uid = stem
            .strip_prefix(names::CDI_FILE_PREFIX)
            .unwrap_or_default();
        if !prepared.iter().any(|p| p == uid) {
            cdi::remove(&s.cdi_dir, &stem)?;
            stale.push(stem);
        }
    }
    Ok(stale)
}

/// Deletes the CDI specs of claims that hold no VF any more (released
/// outside Kubernetes, e.g. `kata-sriov release <uid>`); run at every
/// rescan. Returns the specs deleted.
pub fn sweep(host: &Host, s: &Settings) -> Result<Vec<String>, RecoverError> {
    let _serial = host.serial();
    let engine = host
        .engine()
        .map_err(|e| RecoverError::Claim(Box::new(e)))?;
    let prepared = prepared_claims(&engine)?;
    remove_stale_specs(s, &prepared)
}

/// The path of a claim's CDI spec.
pub fn spec_path(s: &Settings, uid: &str) -> Result<std::path::PathBuf, CdiError> {
    cdi::spec_path(Path::new(&s.cdi_dir), &names::cdi_stem(uid))
}
