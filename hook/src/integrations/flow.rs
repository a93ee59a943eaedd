//! The host-side flow shared by the `kata-sriov` hook modes and the shim:
//! find the request in a spec, claim, edit the spec; plus the edge I/O of a
//! bundle's `config.json` (read without following symlinks, size-capped;
//! written atomically). Files touched: `<bundle>/config.json` and a temp
//! file beside it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::engine::claim::{ClaimError, ClaimedVf, Engine};
use crate::error::IoError;
use crate::integrations::hooks;
use crate::kernel::vfio::{self, DevNode};
use crate::oci::dan::{self, DanError};
use crate::oci::plan::{ContainerPlan, PlanError};
use crate::oci::spec::{self, DeviceNode, Spec, SpecEdit, SpecError};
use crate::policy::config::{Config, GuestMode, Mode};
use crate::policy::request::RequestError;
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
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

/// The spec edit for claimed VFs; `vfio` is the host's `/dev/vfio/vfio`,
/// resolved before the claim when the plan has VFIO nodes; `poststop`:
/// whether to add the releasing poststop hook; `confirm`: whether to add
/// the createRuntime hook that ties a precreate claim to its container.
pub fn spec_edit(
    cfg: &Config,
    owner: &str,
    claimed: &[ClaimedVf],
    vfio: Option<DevNode>,
    poststop: bool,
    confirm: bool,
) -> Result<SpecEdit, FlowError> {
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
        let c = vfio.ok_or_else(|| {
            FlowError::Other("the VFIO container node was not resolved before the claim".into())
        })?;
        devices.push(DeviceNode {
            path: spec::VFIO_CONTAINER.into(),
            major: c.major,
            minor: c.minor,
        });
    }
    let guest = claimed
        .iter()
        .filter(|c| c.guest == GuestMode::Helper && c.mode == Mode::Vfio)
        .map(ClaimedVf::guest_network)
        .collect();
    let hook = |mode| {
        let mut h = hooks::injected(&cfg.hook.binary, cfg.source.as_deref(), mode);
        h.timeout = Some(cfg.hook.timeout);
        h
    };
    Ok(SpecEdit {
        owner: owner.to_owned(),
        devices,
        guest,
        poststop: poststop.then(|| hook("poststop")),
        create_runtime: confirm.then(|| hook("create-runtime")),
    })
}

/// Claims what `plan` asks for under `owner` and edits `spec` to match,
/// for `hook precreate` (hooks.d: the poststop hook is added unless
/// `[hook] poststop = false`). Ok(None): nothing asked, spec untouched.
/// Everything that can fail without a claim (the spec's shape, the VFIO
/// container node) is checked first; a failure after the claim releases
/// it again.
pub fn claim_into_spec(
    engine: &Engine<'_>,
    spec: &mut Spec,
    plan: &ContainerPlan,
) -> Result<Option<Vec<ClaimedVf>>, FlowError> {
    let poststop = engine.cfg.hook.precreate_poststop();
    claim_edit(engine, spec, plan, poststop)
}

fn claim_edit(
    engine: &Engine<'_>,
    spec: &mut Spec,
    plan: &ContainerPlan,
    poststop: bool,
) -> Result<Option<Vec<ClaimedVf>>, FlowError> {
    if !plan.asks() {
        return Ok(None);
    }
    let owner = plan.owner.as_str();
    if owner.is_empty() {
        return Err(FlowError::Other("the container's plan has no owner".into()));
    }
    let vfio = match plan.vfio_nodes {
        true => Some(vfio::container_node(&engine.cfg.dev_root).map_err(ClaimError::from)?),
        false => None,
    };
    let claimed = engine.claim_checked(
        owner,
        &plan.requests,
        plan.check.clone(),
        plan.dan_file.as_deref(),
    )?;
    let confirm = matches!(plan.check, OwnerCheck::Precreate { .. });
    let edited = spec_edit(engine.cfg, owner, &claimed, vfio, poststop, confirm)
        .and_then(|edit| Ok(spec.apply(&edit)?));
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

/// The shim's `start`: [`claim_into_spec`] without a host hook unless
/// `[hook] poststop = true` (the shim's `delete` releases when the
/// delegate exits; under Kata's runtime-rs any host hook switches off the
/// guest hooks), plus, for `guest = "dan"` pools, Kata's DAN file for the
/// sandbox (named by the plan, recorded in the leases by the claim
/// itself). A foreign DAN file is refused before anything is claimed; a
/// failure after the claim releases it.
pub fn claim_for_shim(
    engine: &Engine<'_>,
    spec: &mut Spec,
    plan: &ContainerPlan,
) -> Result<Option<Vec<ClaimedVf>>, FlowError> {
    let owner = plan.owner.as_str();
    let existed = match &plan.dan_file {
        Some(p) => {
            let existed = fs::symlink_metadata(p).is_ok();
            if existed && !engine.owns_dan_file(owner, p)? {
                return Err(DanError::Foreign { path: p.clone() }.into());
            }
            existed
        }
        None => false,
    };
    let poststop = engine.cfg.hook.shim_poststop();
    let claimed = claim_edit(engine, spec, plan, poststop)?;
    let (Some(p), Some(vfs)) = (&plan.dan_file, claimed.as_ref()) else {
        return Ok(claimed);
    };
    let ours: Vec<&ClaimedVf> = vfs.iter().filter(|c| c.guest == GuestMode::Dan).collect();
    let written = dan::document(&ours).and_then(|doc| dan::write(p, &doc, existed));
    match written {
        Ok(()) => Ok(claimed),
        Err(e) => {
            // Never let a release delete a file we did not write.
            if matches!(e, DanError::Foreign { .. }) {
                let _ = engine.set_dan_file(owner, None);
            }
            let _ = engine.release(owner);
            Err(e.into())
        }
    }
}

/// Reads `<bundle>/config.json`: the bundle must exist, the file must not
/// be a symlink, and at most 4 MiB is read.
pub fn read_bundle_config(bundle: &Path) -> Result<Spec, FlowError> {
    if !bundle.is_dir() {
        return Err(FlowError::Refused {
            path: bundle.to_owned(),
            reason: "bundle directory does not exist".into(),
        });
    }
    let path = bundle.join("config.json");
    let f = crate::file::read_regular(&path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            FlowError::Refused {
                path: path.clone(),
                reason: "is a symlink; refusing to follow it".into(),
            }
        } else if e.kind() == std::io::ErrorKind::InvalidData {
            FlowError::Refused {
                path: path.clone(),
                reason: e.to_string(),
            }
        } else {
            FlowError::from(IoError::at("opening", &path)(e))
        }
    })?;
    Ok(spec::read_spec(f)?)
}

/// Replaces `<bundle>/config.json` atomically (temp file, fsync, rename,
/// fsync of the bundle), keeping the file's mode.
pub fn write_bundle_config(bundle: &Path, spec: &Spec) -> Result<(), FlowError> {
    let path = bundle.join("config.json");
    let mode = fs::symlink_metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    atomic::write(&path, spec.text().as_bytes(), mode, Place::Replace).map_err(FlowError::Io)
}
