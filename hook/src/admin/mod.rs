//! Layer 6, admin: setup, check, status and configure.

pub mod check;
pub mod configure;
pub mod setup;
pub mod status;
