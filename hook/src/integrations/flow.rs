//! The host-side flow shared by the `kata-sriov` hook modes and the shim:
//! find the request in a spec, claim, edit the spec; plus the edge I/O of a
//! bundle's `config.json` (read without following symlinks, size-capped;
//! written atomically). Files touched: `<bundle>/config.json` and a temp
//! file beside it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::engine::claim::{ClaimError, ClaimedVf, Engine};
use crate::kernel::vfio;
use crate::oci::dan::{self, DanError};
use crate::oci::spec::{self, DeviceNode, SpecEdit, SpecError};
use crate::policy::config::{Config, GuestMode};
use crate::policy::request::{self, NetworkRequest, PoolName, RequestError};
use crate::state::atomic::{self, Place};
use crate::state::ledger::OwnerCheck;

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Dan(#[from] DanError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FlowError + 'a {
    move |source| FlowError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a spec asks for: the request annotation, else the admin's default
/// pools, else nothing.
pub fn requests_for(cfg: &Config, spec: &Value) -> Result<Option<Vec<NetworkRequest>>, FlowError> {
    let annotations = spec
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(r) = request::request_from_annotations(&annotations)? {
        return Ok(Some(r));
    }
    if cfg.defaults.networks.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for n in &cfg.defaults.networks {
        let name: PoolName = n
            .parse()
            .map_err(|e| FlowError::Other(format!("defaults.networks: {e}")))?;
        out.push(NetworkRequest::plain(name));
    }
    Ok(Some(out))
}

/// The spec edit for claimed VFs.
pub fn spec_edit(cfg: &Config, owner: &str, claimed: &[ClaimedVf]) -> Result<SpecEdit, FlowError> {
    let mut devices = Vec::new();
    for c in claimed {
        if let Some(n) = &c.dev_node {
            if c.guest == GuestMode::Dan {
                continue;
            }
            devices.push(DeviceNode {
                path: format!("{}{}", spec::VFIO_DIR, c.iommu_group.unwrap_or(n.minor)),
                major: n.major,
                minor: n.minor,
            });
        }
    }
    if !devices.is_empty() {
        let c = vfio::container_node(&cfg.dev_root).map_err(ClaimError::from)?;
        devices.push(DeviceNode {
            path: spec::VFIO_CONTAINER.into(),
            major: c.major,
            minor: c.minor,
        });
    }
    let guest = claimed
        .iter()
        .filter(|c| c.guest == GuestMode::Helper && c.mode == crate::policy::config::Mode::Vfio)
        .map(ClaimedVf::guest_network)
        .collect();
    let poststop = cfg.hook.poststop.then(|| {
        let mut h =
            crate::integrations::hooks::default_poststop(&cfg.hook.binary, cfg.source.as_deref());
        h.timeout = Some(cfg.hook.timeout);
        h
    });
    Ok(SpecEdit {
        owner: owner.to_owned(),
        devices,
        guest,
        poststop,
    })
}

/// Claims what `spec` asks for under `owner` and edits `spec` to match.
/// Ok(None): nothing asked, spec untouched. Everything from the container
/// is validated before anything is claimed; a failure after the claim
/// releases it again.
pub fn claim_into_spec(
    engine: &Engine<'_>,
    spec: &mut Value,
    owner: &str,
    check: OwnerCheck,
) -> Result<Option<Vec<ClaimedVf>>, FlowError> {
    let Some(reqs) = requests_for(engine.cfg, spec)? else {
        return Ok(None);
    };
    spec::check_spec(spec)?;
    engine.check_requests(&reqs)?;
    let claimed = engine.claim(owner, &reqs, check)?;
    let edited = spec_edit(engine.cfg, owner, &claimed).and_then(|edit| {
        let mut copy = spec.clone();
        spec::apply(&mut copy, &edit)?;
        Ok(copy)
    });
    match edited {
        Ok(s) => {
            *spec = s;
            Ok(Some(claimed))
        }
        Err(e) => {
            let _ = engine.release(owner);
            Err(e)
        }
    }
}

/// Whether any request goes to a pool whose guest learns its network
/// through Kata's DAN file.
pub fn wants_dan(cfg: &Config, reqs: &[NetworkRequest]) -> bool {
    reqs.iter().any(|r| {
        cfg.pool(r.pool.as_str())
            .is_some_and(|p| cfg.guest_mode(p) == GuestMode::Dan)
    })
}

/// The shim's `start`: [`claim_into_spec`], plus, for `guest = "dan"`
/// pools, Kata's DAN file for the sandbox (`shim_id` is the shim's `-id`).
/// A request for a pod's non-sandbox container in DAN mode, a route
/// without a gateway, or a foreign DAN file are refused before anything is
/// claimed; a failure after the claim releases it.
pub fn claim_for_shim(
    engine: &Engine<'_>,
    spec: &mut Value,
    owner: &str,
    check: OwnerCheck,
    shim_id: &str,
) -> Result<Option<Vec<ClaimedVf>>, FlowError> {
    let cfg = engine.cfg;
    let Some(reqs) = requests_for(cfg, spec)? else {
        return Ok(None);
    };
    let dan_path = if wants_dan(cfg, &reqs) {
        let annotations = spec
            .get("annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let sid = dan::sandbox_id(&annotations, shim_id)?;
        for r in &reqs {
            if let Some(route) = r.l3.routes.iter().find(|x| x.via.is_none()) {
                return Err(DanError::RouteWithoutGateway {
                    dst: route.dst.to_string(),
                }
                .into());
            }
        }
        let p = dan::path(&cfg.dan.dir, &sid);
        if fs::symlink_metadata(&p).is_ok() && !engine.owns_dan_file(&p)? {
            return Err(DanError::Foreign { path: p }.into());
        }
        Some(p)
    } else {
        None
    };
    let claimed = claim_into_spec(engine, spec, owner, check)?;
    let (Some(p), Some(vfs)) = (dan_path, claimed.as_ref()) else {
        return Ok(claimed);
    };
    let written = (|| -> Result<(), FlowError> {
        let ours: Vec<&ClaimedVf> = vfs.iter().filter(|c| c.guest == GuestMode::Dan).collect();
        let doc = dan::document(&ours)?;
        let existed = fs::symlink_metadata(&p).is_ok();
        engine.record_dan_file(owner, Some(&p))?;
        if let Err(e) = dan::write(&p, &doc, existed) {
            // Never let a release delete a file we did not write.
            engine.record_dan_file(owner, None)?;
            return Err(e.into());
        }
        Ok(())
    })();
    match written {
        Ok(()) => Ok(claimed),
        Err(e) => {
            let _ = engine.release(owner);
            Err(e)
        }
    }
}

/// Reads `<bundle>/config.json`: the bundle must exist, the file must not
/// be a symlink, and at most 4 MiB is read.
pub fn read_bundle_config(bundle: &Path) -> Result<Value, FlowError> {
    if !bundle.is_dir() {
        return Err(FlowError::Refused {
            path: bundle.to_owned(),
            reason: "bundle directory does not exist".into(),
        });
    }
    let path = bundle.join("config.json");
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                FlowError::Refused {
                    path: path.clone(),
                    reason: "is a symlink; refusing to follow it".into(),
                }
            } else {
                io_err("opening", &path)(e)
            }
        })?;
    Ok(spec::read_spec(f)?)
}

/// Replaces `<bundle>/config.json` atomically (temp file, fsync, rename,
/// fsync of the bundle), keeping the file's mode.
pub fn write_bundle_config(bundle: &Path, spec: &Value) -> Result<(), FlowError> {
    let path = bundle.join("config.json");
    let mode = fs::symlink_metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let mut data = serde_json::to_vec(spec).map_err(|e| FlowError::Other(e.to_string()))?;
    data.push(b'\n');
    atomic::write(&path, &data, mode, Place::Replace).map_err(|e| FlowError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}
