//! The node: the admin's config and the kernel interfaces the engine works
//! through, shared by every request the agent serves.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kata_sriov::engine::claim::{ClaimError, Engine};
use kata_sriov::kernel::netlink::VfNetlink;
use kata_sriov::kernel::vfio::DriverBinder;
use kata_sriov::policy::config::Config;

/// What the DRA driver needs to know about itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The DRA driver name (`spec.driver` of its slices, `driver` of its
    /// allocation results).
    pub driver: String,
    /// This node's name.
    pub node: String,
    /// Where CDI specs are written.
    pub cdi_dir: PathBuf,
    /// The kubelet's plugin registration directory.
    pub plugins_registry: PathBuf,
    /// The kubelet's plugin directory (the DRA socket is `<dir>/<driver>/dra.sock`).
    pub plugins_dir: PathBuf,
    /// How often sysfs and the ledger are rescanned for slice changes.
    pub rescan: Duration,
    /// How a prepared VFIO VF reaches its pod.
    pub plug: Plug,
}

/// How a prepared VFIO VF reaches its pod (`--plug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plug {
    /// Into the pod's sandbox, by our shim at the sandbox's start (Kata
    /// cold plug: `cold_plug_vfio = "root-port"`): prepare records the
    /// pods the claim is reserved for, and the CDI edits carry only the
    /// guest description (no device node, so Kata never hot-plugs the VF
    /// a second time into the same VM).
    #[default]
    Cold,
    /// Into each container that references the claim, by the runtime
    /// applying the CDI edits' `/dev/vfio` nodes (runc; Kata hot plug:
    /// runtime-rs `pcie_root_port` > 0, Go `hot_plug_vfio = "root-port"`).
    Hot,
}

impl std::str::FromStr for Plug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cold" => Ok(Plug::Cold),
            "hot" => Ok(Plug::Hot),
            _ => Err(format!("{s:?}: expected \"cold\" or \"hot\"")),
        }
    }
}

impl Settings {
    /// `<plugins_registry>/<driver>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.plugins_registry
            .join(format!("{}-reg.sock", self.driver))
    }
    /// `<plugins_dir>/<driver>/dra.sock`.
    pub fn dra_socket(&self) -> PathBuf {
        self.plugins_dir.join(&self.driver).join("dra.sock")
    }
}

/// The config and kernel interfaces; engines are made from it per request.
pub struct Host {
    pub cfg: Config,
    pub nl: Arc<dyn VfNetlink>,
    pub binder: Arc<dyn DriverBinder>,
    /// Overrides the engine's wait for `/dev/vfio/N` (tests: zero).
    pub node_wait: Option<Duration>,
    /// Serializes prepares, unprepares and rescans of this agent.
    serial: Mutex<()>,
}

impl Host {
    pub fn new(cfg: Config, nl: Arc<dyn VfNetlink>, binder: Arc<dyn DriverBinder>) -> Self {
        Host {
            cfg,
            nl,
            binder,
            node_wait: None,
            serial: Mutex::new(()),
        }
    }

    /// An engine over this host.
    pub fn engine(&self) -> Result<Engine<'_>, ClaimError> {
        let mut e = Engine::new(&self.cfg, &*self.nl, &*self.binder)?;
        if let Some(w) = self.node_wait {
            e.node_wait = w;
        }
        Ok(e)
    }

    /// Held while one operation of this agent runs.
    pub fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configured pool names.
    pub fn pool_names(&self) -> Vec<String> {
        self.cfg.pools.iter().map(|p| p.name.clone()).collect()
    }
}
