//! Layer 6, integrations: the shim's flow, the hook modes, netdev mode and
//! the Docker network driver, each over the engine.

pub mod cdi;
pub mod coldplug;
pub mod docker;
pub mod flow;
pub mod hooks;
pub mod netdev;
