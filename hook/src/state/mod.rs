//! Layer 2, state: the ledger of leases under the state directory and the
//! atomic-write helper every file we own goes through.

pub mod atomic;
pub mod ledger;
