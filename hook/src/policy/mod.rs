//! Layer 3, policy: the admin's config, what a container may ask for, and
//! the owner rules.

pub mod config;
pub mod owner;
pub mod request;
