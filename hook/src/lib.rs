//! kata-sriov: the VF engine. Claims SR-IOV Virtual Functions from pools,
//! configures them on their PF, binds them to vfio-pci and edits the OCI
//! spec so that a container (above all a Kata VM) gets the VF. See
//! `DESIGN.md` in the repository for the module map.

pub mod guestnet;
pub mod pci;
