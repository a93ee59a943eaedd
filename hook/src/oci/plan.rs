//! One plan per container: what the host side needs from a container's
//! spec, parsed once (the request, the owner rules' inputs, the CRI kind,
//! the sandbox id, the DAN file), and checked against the config before
//! anything is claimed. The shim and every hook mode start from a plan.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::engine::claim::{check_requests, ClaimError};
use crate::oci::dan::{self, DanError};
use crate::oci::spec::Spec;
use crate::policy::config::{Config, GuestMode, Mode, PoolName};
use crate::policy::request::{self, NetworkRequest, RequestError};
use crate::state::ledger::OwnerCheck;

/// `io.kubernetes.cri.container-type`: `sandbox` or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// `io.kubernetes.cri.sandbox-id`: the pod sandbox a CRI container is in.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Claim(Box<ClaimError>),
    #[error(transparent)]
    Dan(#[from] DanError),
    #[error("config: defaults.networks: {0:?} is not a pool name")]
    BadDefault(String, #[source] crate::pci::ParseError),
    #[error("pools with guest = \"dan\" work only through containerd-shim-kata-sriov-v2 (Kata reads the DAN file when it creates the sandbox, which a hook cannot name)")]
    DanNeedsShim,
}

impl From<ClaimError> for PlanError {
    fn from(e: ClaimError) -> Self {
        PlanError::Claim(Box::new(e))
    }
}

/// What the CRI says the container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriKind {
    /// Not a CRI container (`ctr run`, Docker, podman).
    None,
    /// A pod's sandbox (the pause container; Kata creates the VM for it).
    Sandbox,
    /// A container of an existing pod.
    Container,
}

/// Everything decided from a spec before anything is claimed.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// What is asked (the annotation, else the admin's default pools),
    /// checked against the config; empty: nothing asked.
    pub requests: Vec<NetworkRequest>,
    pub cri: CriKind,
    /// The CRI sandbox id annotation, as given (unvalidated).
    pub sandbox_id: Option<String>,
    /// Kata's DAN file for the sandbox, when a request goes to a
    /// `guest = "dan"` pool (shim plans only).
    pub dan_file: Option<PathBuf>,
    /// Whether a request goes to a netdev pool.
    pub netdev: bool,
    /// Whether the spec gets `/dev/vfio/*` nodes (a vfio pool whose guest
    /// is the helper).
    pub vfio_nodes: bool,
    /// The token the claim is recorded under and how gc tells that its
    /// owner is gone ([`ContainerPlan::owned_by`]; empty until set).
    pub owner: String,
    pub check: OwnerCheck,
}

fn annotations(spec: &Spec) -> &Map<String, Value> {
    spec.annotations()
}

impl ContainerPlan {
    /// The plan of `hook precreate`, which cannot serve DAN pools (a hook
    /// cannot name the sandbox Kata creates).
    pub fn for_hook(cfg: &Config, spec: &Spec) -> Result<Self, PlanError> {
        let plan = Self::from_spec(cfg, spec)?;
        if plan.wants(cfg, GuestMode::Dan) {
            return Err(PlanError::DanNeedsShim);
        }
        Ok(plan)
    }

    /// The plan of the shim's `start` (`shim_id` is its `-id`):
    /// [`ContainerPlan::from_spec`] then [`ContainerPlan::resolve_dan`].
    pub fn for_shim(cfg: &Config, spec: &Spec, shim_id: &str) -> Result<Self, PlanError> {
        let mut plan = Self::from_spec(cfg, spec)?;
        plan.resolve_dan(cfg, spec, shim_id)?;
        Ok(plan)
    }

    /// Names Kata's DAN file when a request goes to a `guest = "dan"` pool.
    /// A pod's non-sandbox container (Kata reads the file only when it
    /// creates the sandbox), a route without a gateway or a sandbox id that
    /// cannot name a file are refused.
    pub fn resolve_dan(
        &mut self,
        cfg: &Config,
        spec: &Spec,
        shim_id: &str,
    ) -> Result<(), PlanError> {
        if !self.wants(cfg, GuestMode::Dan) {
            return Ok(());
        }
        let sid = dan::sandbox_id(annotations(spec), shim_id)?;
        // Kata names the file by the sandbox being created: this shim's
        // own id. A spec naming another sandbox is refused.
        if sid != shim_id {
            return Err(DanError::OtherSandbox {
                named: sid,
                id: shim_id.to_owned(),
            }
            .into());
        }
        for r in &self.requests {
            if let Some(route) = r.l3.routes.iter().find(|x| x.via.is_none()) {
                return Err(DanError::RouteWithoutGateway {
                    dst: route.dst.to_string(),
                }
                .into());
            }
        }
        self.dan_file = Some(dan::path(&cfg.dan.dir, &sid));
        Ok(())
    }

    /// The plan of any container, without a DAN file.
    pub fn from_spec(cfg: &Config, spec: &Spec) -> Result<Self, PlanError> {
        let ann = annotations(spec);
        let requests = match request::request_from_annotations(ann)? {
            Some(r) => r,
            None => {
                let mut out = Vec::new();
                for n in &cfg.defaults.networks {
                    let name: PoolName =
                        n.parse().map_err(|e| PlanError::BadDefault(n.clone(), e))?;
                    out.push(NetworkRequest::plain(name));
                }
                out
            }
        };
        check_requests(cfg, &requests)?;
        let cri = match ann.get(CRI_CONTAINER_TYPE).and_then(Value::as_str) {
            None => CriKind::None,
            Some("sandbox") => CriKind::Sandbox,
            Some(_) => CriKind::Container,
        };
        let sandbox_id = ann
            .get(CRI_SANDBOX_ID)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut plan = ContainerPlan {
            requests,
            cri,
            sandbox_id,
            dan_file: None,
            netdev: false,
            vfio_nodes: false,
            owner: String::new(),
            check: OwnerCheck::None,
        };
        let netdev = plan.pools(cfg).any(|(m, _)| m == Mode::Netdev);
        let vfio_nodes = plan
            .pools(cfg)
            .any(|(m, g)| m == Mode::Vfio && g == GuestMode::Helper);
        plan.netdev = netdev;
        plan.vfio_nodes = vfio_nodes;
        Ok(plan)
    }

    /// Mode and guest mode of each requested pool.
    fn pools<'c>(&'c self, cfg: &'c Config) -> impl Iterator<Item = (Mode, GuestMode)> + 'c {
        self.requests
            .iter()
            .filter_map(|r| cfg.pool(r.pool.as_str()))
            .map(|p| (p.mode, cfg.guest_mode(p)))
    }

    /// Sets who the claim is for: the shim's `<namespace>/<id>` tied to
    /// its bundle, precreate's generated token.
    pub fn owned_by(&mut self, owner: String, check: OwnerCheck) {
        self.owner = owner;
        self.check = check;
    }

    /// Whether anything is asked.
    pub fn asks(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Whether a request goes to a pool whose guest mode is `g`.
    pub fn wants(&self, cfg: &Config, g: GuestMode) -> bool {
        self.pools(cfg).any(|(_, x)| x == g)
    }
}
