//! kata-sriov: the VF engine. Claims SR-IOV Virtual Functions from pools,
//! configures them on their PF, binds them to vfio-pci and edits the OCI
//! spec so that a container (above all a Kata VM) gets the VF. See
//! `DESIGN.md` in the repository for the module map.

pub mod atomic;
pub mod cdi;
pub mod check;
pub mod claim;
pub mod config;
pub mod configure;
pub mod dan;
pub mod docker;
pub mod flow;
pub mod guestnet;
pub mod ifconf;
pub mod iommu;
pub mod ledger;
pub mod log;
pub mod netdev;
pub mod netlink;
pub mod pci;
pub mod request;
pub mod rtnl;
pub mod setup;
pub mod spec;
pub mod status;
pub mod sysfs;
pub mod testing;
pub mod vfio;
