//! ResourceSlices: what this node offers the scheduler. One DRA pool per
//! kata-sriov pool (`<node>/<pool>`), one device per VF that can be
//! claimed (a VF of one of the pool's PFs, alone in its IOMMU group, on a
//! driver the pool can use: the engine's own check), plus the VFs that
//! Kubernetes claims hold now (they stay published while allocated); VFs
//! held by any other kata-sriov owner are left out. At most 128 devices per
//! slice. The inventory is pure reading of sysfs and the ledger; the
//! publisher compares it with what it published and bumps the pool's
//! generation when the set changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kata_sriov::chain;
use kata_sriov::engine::claim::ClaimError;
use kata_sriov::kernel::sysfs::SysfsRoot;
use kata_sriov::pci::PciAddress;
use kata_sriov::policy::config::Mode;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::host::{Host, Settings};
use crate::names::{self, MAX_DEVICES_PER_SLICE};

/// The attribute with the PCIe root complex, standardized by Kubernetes.
pub const PCIE_ROOT_ATTRIBUTE: &str = "resource.kubernetes.io/pcieRoot";

#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("scanning pool {pool:?}")]
    Scan {
        pool: String,
        source: Box<ClaimError>,
    },
    #[error("reading the ledger: {0}")]
    Ledger(Box<ClaimError>),
    #[error("reading node {node} from the API server")]
    Node { node: String, source: kube::Error },
    #[error("{op} ResourceSlice {name}")]
    Api {
        op: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("listing this node's ResourceSlices: {0}")]
    List(kube::Error),
    #[error("the sysfs scan did not finish: {0}")]
    Task(tokio::task::JoinError),
    #[error("node {0} has no UID")]
    NoNodeUid(String),
}

/// One publishable VF.
#[derive(Debug, Clone, PartialEq)]
pub struct VfDevice {
    pub vf: PciAddress,
    pub attributes: BTreeMap<String, DeviceAttribute>,
}

/// The devices of one DRA pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDevices {
    pub kata_pool: String,
    pub dra_pool: String,
    pub devices: Vec<VfDevice>,
}

fn string(s: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.into()),
        ..DeviceAttribute::default()
    }
}

fn int(i: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    }
}

/// The PCIe root complex of a device (`pci0000:3a`), from where its sysfs
/// entry really lives (`/sys/devices/pci0000:3a/...`); None when unknown.
pub fn pcie_root(sysfs: &SysfsRoot, addr: PciAddress) -> Option<String> {
    let real = std::fs::canonicalize(sysfs.device(addr)).ok()?;
    real.components()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| c.starts_with("pci") && c.len() > 3 && c[3..].contains(':'))
        .map(str::to_owned)
}

/// The NUMA node of a device; None when the kernel reports none (-1).
pub fn numa_node(sysfs: &SysfsRoot, addr: PciAddress) -> Option<i64> {
    let p = sysfs.device(addr).join("numa_node");
    let n: i64 = kata_sriov::kernel::sysfs::read_attr(&p)
        .ok()?
        .parse()
        .ok()?;
    (n >= 0).then_some(n)
}

/// What a scan found: the publishable VFs per pool, and the PFs that could
/// not be read (their VFs are not offered until they can).
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub pools: Vec<PoolDevices>,
    pub problems: Vec<String>,
}

/// Reads the node's publishable VFs, per pool.
pub fn inventory(host: &Host, s: &Settings) -> Result<Inventory, SliceError> {
    let _serial = host.serial();
    let engine = host.engine().map_err(|e| SliceError::Ledger(Box::new(e)))?;
    let entries = engine
        .ledger
        .list()
        .map_err(|e| SliceError::Ledger(Box::new(e.into())))?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for pool in &host.cfg.pools {
        let scan = |e: ClaimError| SliceError::Scan {
            pool: pool.name.clone(),
            source: Box::new(e),
        };
        let mut devices = Vec::new();
        for pf_name in &pool.pfs {
            let sysfs = &engine.sysfs;
            let read = sysfs
                .resolve_pf(pf_name)
                .and_then(|pf| Ok((pf, sysfs.pf_info(pf)?)));
            let (pf, info) = match read {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!(
                        "pool {:?}: PF {pf_name:?}: {ec}",
                        pool.name,
                        ec = chain(&e)
                    ));
                    continue;
                }
            };
            for index in 0..info.num_vfs {
                // A VF that vanished mid-scan is simply not offered.
                let Ok(vf) = sysfs.vf_addr(pf, index) else {
                    continue;
                };
                let publish = match entries.iter().find(|e| e.vf == vf) {
                    // Held by a Kubernetes claim: stays while allocated.
                    Some(e) => e
                        .lease
                        .as_ref()
                        .is_ok_and(|l| names::is_claim_owner(&l.owner) && l.pool == pool.name),
                    None => engine.usable(pool, vf).map_err(scan)?.is_ok(),
                };
                if !publish {
                    continue;
                }
                let mut a = BTreeMap::new();
                a.insert("pool".into(), string(&pool.name));
                if let Some(n) = info.netdev() {
                    a.insert("pfName".into(), string(n.as_str()));
                }
                a.insert("pfPciAddress".into(), string(pf.to_string()));
                a.insert("vfIndex".into(), int(i64::from(index)));
                a.insert("pciAddress".into(), string(vf.to_string()));
                if let Ok(id) = sysfs.pci_id(vf) {
                    a.insert("pciVendorDevice".into(), string(id.to_string()));
                }
                if let Some(n) = numa_node(sysfs, vf) {
                    a.insert("numaNode".into(), int(n));
                }
                if let Some(r) = pcie_root(sysfs, vf) {
                    a.insert(PCIE_ROOT_ATTRIBUTE.into(), string(r));
                }
                if let Ok(Some(g)) = sysfs.iommu_group(vf) {
                    a.insert("iommuGroup".into(), int(i64::from(g)));
                }
                a.insert(
                    "mode".into(),
                    string(match pool.mode {
                        Mode::Vfio => "vfio",
                        Mode::Netdev => "netdev",
                    }),
                );
                devices.push(VfDevice { vf, attributes: a });
            }
        }
        out.push(PoolDevices {
            kata_pool: pool.name.clone(),
            dra_pool: names::dra_pool(&s.node, &pool.name),
            devices,
        });
    }
    Ok(Inventory {
        pools: out,
        problems,
    })
}

/// The slices of one pool at `generation`, owned by the Node.
pub fn build_slices(
    s: &Settings,
    node_uid: &str,
    pool: &PoolDevices,
    generation: i64,
) -> Vec<ResourceSlice> {
    let chunks: Vec<&[VfDevice]> = if pool.devices.is_empty() {
        // An empty pool is still published, so the scheduler sees it.
        vec![&[]]
    } else {
        pool.devices.chunks(MAX_DEVICES_PER_SLICE).collect()
    };
    let count = chunks.len() as i64;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, devs)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(names::slice_name(&s.node, &pool.kata_pool, i)),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: s.node.clone(),
                    uid: node_uid.to_owned(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..ObjectMeta::default()
            },
            spec: ResourceSliceSpec {
                driver: s.driver.clone(),
                node_name: Some(s.node.clone()),
                pool: ResourcePool {
                    name: pool.dra_pool.clone(),
                    generation,
                    resource_slice_count: count,
                },
                devices: Some(
                    devs.iter()
                        .map(|d| Device {
                            name: names::device_name(d.vf),
                            attributes: Some(d.attributes.clone()),
                            ..Device::default()
                        })
                        .collect(),
                ),
                ..ResourceSliceSpec::default()
            },
        })
        .collect()
}

/// Publishes the inventory, republishing a pool (generation + 1) whenever
/// its devices changed.
pub struct Publisher {
    client: kube::Client,
    settings: Settings,
    node_uid: Option<String>,
    /// Per DRA pool: what was published, at which generation.
    published: BTreeMap<String, (PoolDevices, i64)>,
    /// Generations found on the API server at start.
    seen: Option<BTreeMap<String, i64>>,
    /// Publications skipped since the API server was last read.
    idle: u32,
}

/// An unchanged inventory is checked against the API server (slices
/// deleted or changed by someone else are put back) only every this many
/// rescans, so that an idle node costs the API server nothing most of the
/// time.
pub const RESYNC_EVERY: u32 = 30;

/// What one publication did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// DRA pools written, with their new generation.
    pub pools: Vec<(String, i64)>,
    /// Slices deleted (no longer needed).
    pub deleted: Vec<String>,
}

impl Publisher {
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Publisher {
            client,
            settings,
            node_uid: None,
            published: BTreeMap::new(),
            seen: None,
            idle: 0,
        }
    }

    fn slices(&self) -> Api<ResourceSlice> {
        Api::all(self.client.clone())
    }

    async fn ours(&self) -> Result<Vec<ResourceSlice>, SliceError> {
        let lp = ListParams::default().fields(&format!(
            "spec.nodeName={},spec.driver={}",
            self.settings.node, self.settings.driver
        ));
        // The field selector is the server's filter; check it again here.
        Ok(self
            .slices()
            .list(&lp)
            .await
            .map_err(SliceError::List)?
            .items
            .into_iter()
            .filter(|s| {
                s.spec.driver == self.settings.driver
                    && s.spec.node_name.as_deref() == Some(self.settings.node.as_str())
            })
            .collect())
    }

    /// Publishes `inv`: pools whose devices changed get generation + 1 and
    /// all their slices rewritten; slices of ours no pool needs are deleted.
    pub async fn publish(&mut self, inv: Vec<PoolDevices>) -> Result<Published, SliceError> {
        let unchanged = self.published.len() == inv.len()
            && inv
                .iter()
                .all(|p| self.published.get(&p.dra_pool).is_some_and(|(q, _)| q == p));
        if unchanged && self.idle + 1 < RESYNC_EVERY {
            self.idle += 1;
            return Ok(Published::default());
        }
        self.idle = 0;
        let node_uid = match &self.node_uid {
            Some(u) => u.clone(),
            None => {
                let node = Api::<Node>::all(self.client.clone())
                    .get(&self.settings.node)
                    .await
                    .map_err(|source| SliceError::Node {
                        node: self.settings.node.clone(),
                        source,
                    })?;
                let uid = node
                    .metadata
                    .uid
                    .ok_or_else(|| SliceError::NoNodeUid(self.settings.node.clone()))?;
                self.node_uid = Some(uid.clone());
                uid
            }
        };
        let existing = self.ours().await?;
        if self.seen.is_none() {
            let mut seen = BTreeMap::new();
            for s in &existing {
                let g = seen.entry(s.spec.pool.name.clone()).or_insert(0);
                *g = (*g).max(s.spec.pool.generation);
            }
            self.seen = Some(seen);
        }
        let mut report = Published::default();
        let mut wanted: Vec<String> = Vec::new();
        for pool in inv {
            let names_now: Vec<String> = build_slices(&self.settings, &node_uid, &pool, 0)
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            wanted.extend(names_now.iter().cloned());
            let unchanged = self
                .published
                .get(&pool.dra_pool)
                .is_some_and(|(p, _)| *p == pool);
            let all_present = names_now
                .iter()
                .all(|n| existing.iter().any(|e| e.metadata.name.as_ref() == Some(n)));
            if unchanged && all_present {
                continue;
            }
            let last = self
                .published
                .get(&pool.dra_pool)
                .map(|(_, g)| *g)
                .or_else(|| {
                    self.seen
                        .as_ref()
                        .and_then(|s| s.get(&pool.dra_pool).copied())
                })
                .unwrap_or(0);
            let generation = last + 1;
            for slice in build_slices(&self.settings, &node_uid, &pool, generation) {
                let name = slice.metadata.name.clone().unwrap_or_default();
                let current = existing
                    .iter()
                    .find(|e| e.metadata.name.as_deref() == Some(name.as_str()));
                match current {
                    Some(cur) => {
                        let mut s = slice;
                        s.metadata.resource_version = cur.metadata.resource_version.clone();
                        self.slices()
                            .replace(&name, &PostParams::default(), &s)
                            .await
                            .map_err(|source| SliceError::Api {
                                op: "replacing",
                                name: name.clone(),
                                source,
                            })?;
                    }
                    None => {
                        self.slices()
                            .create(&PostParams::default(), &slice)
                            .await
                            .map_err(|source| SliceError::Api {
                                op: "creating",
                                name: name.clone(),
                                source,
                            })?;
                    }
                }
            }
            report.pools.push((pool.dra_pool.clone(), generation));
            self.published
                .insert(pool.dra_pool.clone(), (pool, generation));
        }
        for e in existing {
            let Some(name) = e.metadata.name else {
                continue;
            };
            if wanted.contains(&name) {
                continue;
            }
            match self.slices().delete(&name, &DeleteParams::default()).await {
                Ok(_) => report.deleted.push(name),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(SliceError::Api {
                        op: "deleting",
                        name,
                        source,
                    })
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn settings() -> Settings {
        Settings {
            driver: "kata-sriov.io".into(),
            node: "n1".into(),
            cdi_dir: PathBuf::new(),
            plugins_registry: PathBuf::new(),
            plugins_dir: PathBuf::new(),
            plug: Default::default(),
            rescan: Duration::from_secs(1),
        }
    }

    #[test]
    fn slices_hold_at_most_128_devices_and_count_themselves() {
        let pf: PciAddress = "0000:3b:00.0".parse().unwrap();
        let devices: Vec<VfDevice> = (0..300)
            .map(|i| VfDevice {
                vf: kata_sriov::testing::vf_address(pf, i),
                attributes: BTreeMap::new(),
            })
            .collect();
        let pool = PoolDevices {
            kata_pool: "fast".into(),
            dra_pool: "n1/fast".into(),
            devices,
        };
        let slices = build_slices(&settings(), "node-uid", &pool, 7);
        let sizes: Vec<usize> = slices
            .iter()
            .map(|s| s.spec.devices.as_ref().unwrap().len())
            .collect();
        assert_eq!(sizes, [128, 128, 44]);
        for s in &slices {
            assert_eq!(s.spec.pool.resource_slice_count, 3);
            assert_eq!(s.spec.pool.generation, 7);
            let o = &s.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!((o.kind.as_str(), o.uid.as_str()), ("Node", "node-uid"));
        }
        let empty = PoolDevices {
            devices: vec![],
            ..pool
        };
        assert_eq!(build_slices(&settings(), "u", &empty, 1).len(), 1);
    }

    #[test]
    fn pcie_root_and_numa_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let real = d
            .path()
            .join("devices/pci0000:3a/0000:3a:00.0/0000:3b:10.0");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(d.path().join("bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("bus/pci/devices/0000:3b:10.0")).unwrap();
        std::fs::write(real.join("numa_node"), "1\n").unwrap();
        let root = SysfsRoot::new(d.path());
        let vf: PciAddress = "0000:3b:10.0".parse().unwrap();
        assert_eq!(pcie_root(&root, vf).as_deref(), Some("pci0000:3a"));
        assert_eq!(numa_node(&root, vf), Some(1));
        std::fs::write(real.join("numa_node"), "-1\n").unwrap();
        assert_eq!(numa_node(&root, vf), None);
    }
}
