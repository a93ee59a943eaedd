//! Cold plug of a pod's DRA-prepared VFs into its Kata sandbox: at the
//! sandbox's `start`, the shim finds the VFs the DRA agent prepared for
//! this pod (leases recording the pod, through the engine) and adds them
//! to the sandbox's spec (the VFIO nodes, their cgroup rules, the guest
//! annotation), so that Kata cold-plugs them when it creates the VM and the
//! guest helper configures them.
//!
//! The pod is named only by what containerd's CRI writes into the
//! sandbox's spec: `io.kubernetes.cri.container-type` = `sandbox`,
//! `io.kubernetes.cri.sandbox-namespace` and `io.kubernetes.cri.sandbox-uid`.
//! containerd's CRI writes these itself; a pod's own annotations reach the
//! spec only through the runtime's `pod_annotations` (which must not list
//! `io.kubernetes.cri.*`); no annotation of ours is read. A lease
//! is picked only when it records exactly this pod (namespace and UID). The
//! VFs stay the claim's: the sandbox's `delete` never releases them, the
//! agent's unprepare does.

use serde_json::Value;

use crate::engine::claim::{ClaimError, ClaimedVf, Engine};
use crate::integrations::flow::{self, FlowError};
use crate::kernel::vfio;
use crate::oci::plan::CRI_CONTAINER_TYPE;
use crate::oci::spec::Spec;
use crate::state::ledger::PodRef;

/// `io.kubernetes.cri.sandbox-uid`: the pod's UID, on CRI specs.
pub const CRI_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// `io.kubernetes.cri.sandbox-namespace`: the pod's namespace.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";

/// The pod whose sandbox `spec` is: only a CRI sandbox spec names one.
pub fn sandbox_pod(spec: &Spec) -> Option<PodRef> {
    let ann = spec.annotations();
    let text = |k: &str| {
        ann.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if text(CRI_CONTAINER_TYPE).as_deref() != Some("sandbox") {
        return None;
    }
    Some(PodRef {
        namespace: text(CRI_SANDBOX_NAMESPACE)?,
        uid: text(CRI_SANDBOX_UID)?,
    })
}

/// Adds the VFs prepared for the pod of sandbox spec `spec` to it. `own`:
/// the VFs the shim claimed for this spec itself (already in it), whose
/// guest entries are kept first in the guest annotation. Returns the
/// pod's VFs; none (or no pod) leaves `spec` untouched.
pub fn into_sandbox(
    engine: &Engine<'_>,
    spec: &mut Spec,
    own: &[ClaimedVf],
) -> Result<Vec<ClaimedVf>, FlowError> {
    let Some(pod) = sandbox_pod(spec) else {
        return Ok(Vec::new());
    };
    let vfs = engine.pod_vfs(&pod)?;
    if vfs.is_empty() {
        return Ok(vfs);
    }
    let container = vfio::container_node(&engine.cfg.dev_root).map_err(ClaimError::from)?;
    let all: Vec<ClaimedVf> = own.iter().chain(&vfs).cloned().collect();
    // The same devices and guest entries a claim of these VFs would write;
    // the owner token is not used.
    let edit = flow::spec_edit(engine.cfg, "-", &all, Some(container), false, false)?;
    *spec = spec.add_pod_devices(&edit.devices, &edit.guest)?;
    Ok(vfs)
}
