//! kata-sriov's Kubernetes node agent: a DRA driver over the kata-sriov
//! engine. It publishes this node's VFs as ResourceSlices, registers with
//! the kubelet and serves NodePrepareResources / NodeUnprepareResources,
//! claiming exactly the VF the scheduler allocated and handing it to the
//! runtime as a CDI device; or, in the `device-plugin` mode
//! ([`deviceplugin`]), a kubelet device plugin over the same engine. See
//! the README's Kubernetes section.

pub mod agent;
pub mod deviceplugin;
pub mod host;
pub mod names;
pub mod prepare;
pub mod proto;
pub mod server;
pub mod slices;
#[cfg(feature = "fakes")]
pub mod testing;
