//! Layer 4, the claim engine: claim, release and gc, in a crash-consistent
//! order; the one writer of leases.

pub mod claim;
pub mod leases;
pub mod mac;
