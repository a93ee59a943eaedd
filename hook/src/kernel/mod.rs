//! Layer 1, kernel interfaces: one module per interface, each with a seam
//! for tests (a sysfs root, a narrow trait for netlink and for binding).
//! Nothing here knows about pools, leases or containers.

pub mod iommu;
pub mod netlink;
pub mod netns;
pub mod random;
pub mod sysfs;
pub mod vfio;
