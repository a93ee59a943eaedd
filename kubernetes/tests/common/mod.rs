//! Test support for the agent's tests: a fake node (sysfs tree, /dev
//! nodes, state dir, config), plus the stand-in API server and the
//! kubelet's gRPC side from `kata_sriov_k8s::testing` (feature `fakes`).
//! Nothing of Kubernetes itself runs here (no kubelet or kube-apiserver is
//! packaged for these machines).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod kubelet_dp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kata_sriov::pci::PciAddress;
use kata_sriov::policy::config::Config;
use kata_sriov::testing::{FakeBinder, FakeSysfs, FileNetlink};
use kata_sriov_k8s::agent::{self, AgentError};
use kata_sriov_k8s::host::{Host, Settings};
pub use kata_sriov_k8s::testing::*;
use serde_json::Value;

/// A fake node: sysfs tree, /dev nodes, state dir, config.
pub struct FakeNode {
    pub dir: tempfile::TempDir,
    pub fake: FakeSysfs,
    pub cfg: Config,
    pub config_path: PathBuf,
    pub pf: PciAddress,
    pub nl_dir: PathBuf,
}

impl FakeNode {
    /// `vfs` VFs of PF ens1f0 on `vf_driver`, in pool "fast" (`pool_extra`
    /// appended to its table).
    pub fn new(vfs: u32, vf_driver: &str, pool_extra: &str) -> FakeNode {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        let fake = FakeSysfs::new(&sys);
        let pf = fake.add_pf_with("0000:3b:00.0", "ens1f0", vfs, vfs.max(8), Some(vf_driver));
        fake.make_vfio_nodes(&dev).unwrap();
        let text = format!(
            "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\n{pool_extra}\n",
            dir.path().join("state"),
            sys,
            dev
        );
        let config_path = dir.path().join("kata-sriov.toml");
        std::fs::write(&config_path, &text).unwrap();
        let cfg = Config::parse(&text, &config_path).unwrap();
        let nl_dir = dir.path().join("nl");
        let nl = FileNetlink::new(&nl_dir);
        nl.add_pf("ens1f0", vfs);
        FakeNode {
            dir,
            fake,
            cfg,
            config_path,
            pf,
            nl_dir,
        }
    }

    /// Starts the agent (in the current tokio runtime) on this node, with
    /// its fake netlink and binder and no wait for `/dev` nodes, against `api`.
    pub fn start_agent(&self, api: &ApiServer, settings: &Settings) -> RunningAgent {
        let mut host = Host::new(
            self.cfg.clone(),
            Arc::new(self.nl()),
            Arc::new(self.binder()),
        );
        host.node_wait = Some(Duration::ZERO);
        let host = Arc::new(host);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(agent::run_dra(
            host.clone(),
            settings.clone(),
            api.client(),
            kata_sriov::log::discard(),
            stopped,
        ));
        RunningAgent { host, stop, task }
    }

    pub fn nl(&self) -> FileNetlink {
        FileNetlink::new(&self.nl_dir)
    }

    pub fn binder(&self) -> FakeBinder {
        FakeBinder::new(&self.fake)
    }

    pub fn vf(&self, i: u32) -> PciAddress {
        self.fake.root().vf_addr(self.pf, i).unwrap()
    }

    pub fn driver(&self, i: u32) -> Option<String> {
        self.fake.root().driver(self.vf(i)).unwrap()
    }

    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    pub fn cdi_dir(&self) -> PathBuf {
        self.dir.path().join("cdi")
    }

    pub fn settings(&self) -> kata_sriov_k8s::host::Settings {
        kata_sriov_k8s::host::Settings {
            driver: DRIVER.into(),
            node: NODE.into(),
            cdi_dir: self.cdi_dir(),
            plugins_registry: self.kubelet_dir().join("plugins_registry"),
            plugins_dir: self.kubelet_dir().join("plugins"),
            rescan: Duration::from_millis(100),
            plug: kata_sriov_k8s::host::Plug::Hot,
        }
    }

    /// The lease files: (vf, owner, state).
    pub fn leases(&self) -> Vec<(String, String, String)> {
        let d = self.cfg.state_dir.join("leases");
        let mut out: Vec<(String, String, String)> = std::fs::read_dir(&d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .map(|e| {
                        let v: Value =
                            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
                        (
                            v["vf"].as_str().unwrap().to_owned(),
                            v["owner"].as_str().unwrap().to_owned(),
                            v["state"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// An agent a test started ([`FakeNode::start_agent`]).
pub struct RunningAgent {
    pub host: Arc<Host>,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), AgentError>>,
}
