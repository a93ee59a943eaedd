//! kata-sriov: the VF engine. Claims SR-IOV Virtual Functions from pools,
//! configures them on their PF, binds them to vfio-pci and edits the OCI
//! spec so that a container (above all a Kata VM) gets the VF.

pub mod admin;
pub mod engine;
pub mod error;
pub mod guestnet;
pub mod ifconf;
pub mod integrations;
pub mod json;
pub mod kernel;
pub mod log;
pub mod oci;
pub mod pci;
pub mod policy;
pub mod rtnl;
pub mod state;
#[cfg(any(test, feature = "fakes"))]
pub mod testing;
