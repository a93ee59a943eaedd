//! kata-sriov: the VF engine. Claims SR-IOV Virtual Functions from pools,
//! configures them on their PF, binds them to vfio-pci and edits the OCI
//! spec so that a container (above all a Kata VM) gets the VF.
//!
//! The modules are layers; each uses only those below it
//! (`tests/layers.rs` checks it). `docs/design.md` has the full map.
//!
//! ```text
//!  6  integrations   flow (shim start), hooks, netdev, docker     admin: setup, check, status, configure
//!  5  oci            spec (pure edits), state (hook state), plan (one per container), dan
//!  4  engine         claim, release, gc; leases (the one lease writer); mac
//!  3  policy         config, request, owner
//!  2  state          ledger, atomic writes
//!  1  kernel         sysfs, vfio, iommu, netlink (PF VF settings), netns, random
//!  0  pci, guestnet, ifconf, rtnl (from kata-sriov-guest), error, json, log
//! ```
//!
//! The types most callers need are re-exported here.

pub mod admin;
pub mod engine;
pub mod error;
pub mod file;
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

pub use engine::claim::{ClaimError, ClaimedVf, Engine, GcReport};
pub use engine::leases::HeldLease;
pub use error::{chain, IoError};
pub use kernel::netlink::{KernelNetlink, VfNetlink};
pub use kernel::sysfs::SysfsRoot;
pub use kernel::vfio::{DriverBinder, SysfsBinder};
pub use oci::plan::ContainerPlan;
pub use pci::{IfName, MacAddr, PciAddress, PciId};
pub use policy::config::Config;
pub use policy::request::NetworkRequest;
pub use state::ledger::{Lease, OwnerCheck};
