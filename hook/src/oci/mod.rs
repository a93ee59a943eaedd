//! Layer 5, OCI: pure spec edits, hook state, and Kata's DAN file.

pub mod cdi;
pub mod dan;
pub mod plan;
pub mod spec;
pub mod state;
