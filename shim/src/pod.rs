//! A pod's DRA-prepared VFs in its sandbox's spec, at the sandbox's
//! `start` (`kata_sriov::integrations::coldplug`): Kata cold-plugs them
//! when it creates the VM. These VFs belong to their ResourceClaim: the
//! shim's `delete` releases only what its `start` claimed (owner
//! `<namespace>/<id>`), never these (owner: the claim's UID).

use anyhow::{Context, Result};
use kata_sriov::oci::spec::Spec;
use slog::{info, Logger};

use kata_sriov::engine::claim::{ClaimedVf, Engine};
use kata_sriov::integrations::coldplug;

/// Adds the VFs prepared for the pod of sandbox spec `spec` (`own`: what
/// this start claimed itself, already in the spec). Returns how many.
pub fn add_prepared(
    engine: &Engine<'_>,
    spec: &mut Spec,
    own: &[ClaimedVf],
    log: &Logger,
) -> Result<usize> {
    let Some(pod) = coldplug::sandbox_pod(spec) else {
        return Ok(0);
    };
    let vfs = coldplug::into_sandbox(engine, spec, own).with_context(|| {
        format!(
            "adding the VFs prepared for pod {}/{} to its sandbox",
            pod.namespace, pod.uid
        )
    })?;
    if !vfs.is_empty() {
        let list: Vec<String> = vfs
            .iter()
            .map(|c| format!("{} ({})", c.vf, c.pool))
            .collect();
        info!(log, "start: cold plug of the pod's prepared VFs"; "pod" => format!("{}/{}", pod.namespace, pod.uid), "vfs" => list.join(", "));
    }
    Ok(vfs.len())
}
