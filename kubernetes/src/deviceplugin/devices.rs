//! What the device plugin offers the kubelet: per pool, one device per VF
//! that can be claimed or that the plugin holds (device ID = the VF's PCI
//! address), with its NUMA node and a real health: present, alone in its
//! IOMMU group (vfio mode), its PF up (`operstate` "up" or "unknown"), on a
//! driver the pool can use. VFs held by any other kata-sriov owner are
//! left out. Pure reading of sysfs and the ledger; also the choice of a
//! preferred allocation (NUMA node first, then spread or pack across PFs).

use std::collections::{BTreeMap, HashMap};

use kata_sriov::chain;
use kata_sriov::engine::claim::ClaimError;
use kata_sriov::kernel::iommu;
use kata_sriov::kernel::sysfs::{self, SysfsRoot};
use kata_sriov::pci::PciAddress;
use kata_sriov::policy::config::{Allocation, Mode};

use crate::host::Host;
use crate::names;
use crate::slices::numa_node;

/// The kubelet's health values.
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("reading the ledger: {0}")]
    Ledger(Box<ClaimError>),
}

/// One device of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfDevice {
    pub vf: PciAddress,
    pub pf: PciAddress,
    pub numa: Option<i64>,
    /// None: healthy; else why not.
    pub unhealthy: Option<String>,
}

impl VfDevice {
    pub fn health(&self) -> &'static str {
        if self.unhealthy.is_none() {
            HEALTHY
        } else {
            UNHEALTHY
        }
    }
}

/// Per pool name: its devices in PF, VF order; and the PFs that could not
/// be read (their VFs are not offered until they can).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    pub pools: BTreeMap<String, Vec<VfDevice>>,
    pub problems: Vec<String>,
}

/// Whether a PF's network interface is up: `operstate` "up", or "unknown"
/// (drivers that do not report it), read from `class/net/<if>/operstate`.
fn pf_down(root: &SysfsRoot, netdev: Option<&str>) -> Option<String> {
    let Some(n) = netdev else {
        return Some("its PF has no network interface".into());
    };
    let p = root.path().join("class/net").join(n).join("operstate");
    match sysfs::read_attr(&p) {
        Ok(s) if s == "up" || s == "unknown" => None,
        Ok(s) => Some(format!("PF {n} is {s}")),
        Err(e) => Some(format!("PF {n}: {ec}", ec = chain(&e))),
    }
}

/// Reads every pool's devices.
pub fn scan(host: &Host) -> Result<Devices, DevicesError> {
    let _serial = host.serial();
    let engine = host
        .engine()
        .map_err(|e| DevicesError::Ledger(Box::new(e)))?;
    let entries = engine
        .ledger
        .list()
        .map_err(|e| DevicesError::Ledger(Box::new(e.into())))?;
    let mut out = Devices::default();
    for pool in &host.cfg.pools {
        let mut devices = Vec::new();
        for pf_name in &pool.pfs {
            let root = &engine.sysfs;
            let (pf, info) = match root
                .resolve_pf(pf_name)
                .and_then(|pf| Ok((pf, root.pf_info(pf)?)))
            {
                Ok(r) => r,
                Err(e) => {
                    out.problems.push(format!(
                        "pool {:?}: PF {pf_name:?}: {ec}",
                        pool.name,
                        ec = chain(&e)
                    ));
                    continue;
                }
            };
            let down = pf_down(root, info.netdev().map(|n| n.as_str()));
            for index in 0..info.num_vfs {
                let Ok(vf) = root.vf_addr(pf, index) else {
                    continue;
                };
                let why = match entries.iter().find(|e| e.vf == vf) {
                    Some(e) => {
                        let ours = e.lease.as_ref().is_ok_and(|l| {
                            names::parse_dp_owner(&l.owner)
                                .is_some_and(|(p, v)| p == pool.name && v == vf)
                        });
                        if !ours {
                            continue;
                        }
                        held_problem(root, pool.mode, vf)
                    }
                    None => match engine.usable(pool, vf) {
                        Ok(Ok(_)) => None,
                        Ok(Err(why)) => Some(why),
                        Err(e) => Some(chain(&e)),
                    },
                };
                devices.push(VfDevice {
                    vf,
                    pf,
                    numa: numa_node(root, vf),
                    unhealthy: down.clone().or(why),
                });
            }
        }
        out.pools.insert(pool.name.clone(), devices);
    }
    Ok(out)
}

/// What is wrong with a VF this plugin holds (it is on vfio-pci and
/// perhaps open by a VM, so the free-VF check does not apply).
fn held_problem(root: &SysfsRoot, mode: Mode, vf: PciAddress) -> Option<String> {
    if !root.device(vf).exists() {
        return Some(format!("{vf} is gone"));
    }
    if mode == Mode::Vfio {
        if let Err(e) = iommu::check_isolated(root, vf) {
            return Some(chain(&e));
        }
    }
    None
}

/// The preferred allocation of `size` devices among `available`, with
/// `must` first: VFs on the NUMA node of the first `must` device that has
/// one (else the node with the most available devices) first, then across
/// PFs as `policy` says; unknown IDs last. Never more than `available`.
pub fn preferred(
    devices: &[VfDevice],
    available: &[String],
    must: &[String],
    size: usize,
    policy: Allocation,
) -> Vec<String> {
    let info: HashMap<String, &VfDevice> = devices.iter().map(|d| (d.vf.to_string(), d)).collect();
    let mut out: Vec<String> = Vec::new();
    for id in must {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    let mut rest: Vec<&String> = available.iter().filter(|id| !out.contains(id)).collect();
    rest.dedup();
    let numa = must
        .iter()
        .find_map(|id| info.get(id).and_then(|d| d.numa))
        .or_else(|| {
            let mut count: BTreeMap<i64, usize> = BTreeMap::new();
            for id in &rest {
                if let Some(n) = info.get(*id).and_then(|d| d.numa) {
                    *count.entry(n).or_default() += 1;
                }
            }
            // Most devices; among equals the lowest node.
            count
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(n, _)| n)
        });
    let pf_of = |id: &str| info.get(id).map(|d| d.pf);
    let mut left_on: HashMap<PciAddress, usize> = HashMap::new();
    for id in &rest {
        if let Some(pf) = pf_of(id) {
            *left_on.entry(pf).or_default() += 1;
        }
    }
    while out.len() < size && !rest.is_empty() {
        let used = |pf: PciAddress| out.iter().filter(|o| pf_of(o) == Some(pf)).count();
        let key = |id: &String| {
            let d = info.get(id.as_str());
            let off_node = match (numa, d.and_then(|d| d.numa)) {
                (Some(want), Some(n)) => n != want,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let (pf_rank, pf) = match d {
                None => (i64::MAX, None),
                Some(d) => {
                    let u = used(d.pf) as i64;
                    let rank = match policy {
                        Allocation::Spread => u,
                        // Fill used PFs first, then the one with the most left.
                        Allocation::Pack => -(u * 1_000_000 + left_on[&d.pf] as i64),
                    };
                    (rank, Some(d.pf))
                }
            };
            (d.is_none(), off_node, pf_rank, pf, d.map(|d| d.vf))
        };
        let Some((i, _)) = rest.iter().enumerate().min_by_key(|(_, id)| key(id)) else {
            break;
        };
        let id = rest.remove(i);
        if let Some(pf) = pf_of(id) {
            if let Some(n) = left_on.get_mut(&pf) {
                *n -= 1;
            }
        }
        out.push(id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dev(vf: &str, pf: &str, numa: i64) -> VfDevice {
        VfDevice {
            vf: vf.parse().unwrap(),
            pf: pf.parse().unwrap(),
            numa: Some(numa),
            unhealthy: None,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn numa_first_then_spread_or_pack() {
        // PF a (node 0): a1 a2 a3; PF b (node 0): b1 b2; PF c (node 1): c1 c2 c3 c4.
        let (pa, pb, pc) = ("0000:3b:00.0", "0000:3c:00.0", "0000:5e:00.0");
        let devs = vec![
            dev("0000:3b:10.1", pa, 0),
            dev("0000:3b:10.2", pa, 0),
            dev("0000:3b:10.3", pa, 0),
            dev("0000:3c:10.1", pb, 0),
            dev("0000:3c:10.2", pb, 0),
            dev("0000:5e:10.1", pc, 1),
            dev("0000:5e:10.2", pc, 1),
            dev("0000:5e:10.3", pc, 1),
            dev("0000:5e:10.4", pc, 1),
        ];
        let all: Vec<String> = devs.iter().map(|d| d.vf.to_string()).collect();
        // No must: node 0 has the most devices (5 against 4).
        let got = preferred(&devs, &all, &[], 2, Allocation::Spread);
        assert_eq!(got, ids(&["0000:3b:10.1", "0000:3c:10.1"]));
        let got = preferred(&devs, &all, &[], 3, Allocation::Pack);
        assert_eq!(got, ids(&["0000:3b:10.1", "0000:3b:10.2", "0000:3b:10.3"]));
        // A must device on node 1 pulls the rest there.
        let must = ids(&["0000:5e:10.3"]);
        let got = preferred(&devs, &all, &must, 3, Allocation::Spread);
        assert_eq!(got, ids(&["0000:5e:10.3", "0000:5e:10.1", "0000:5e:10.2"]));
        // More than the node has: the other node fills up, spread over PFs.
        let got = preferred(&devs, &all, &must, 6, Allocation::Spread);
        assert_eq!(
            got,
            ids(&[
                "0000:5e:10.3",
                "0000:5e:10.1",
                "0000:5e:10.2",
                "0000:5e:10.4",
                "0000:3b:10.1",
                "0000:3c:10.1"
            ])
        );
        // Pack prefers the PF with the most devices left on the node.
        let avail = ids(&["0000:3b:10.1", "0000:3c:10.1", "0000:3c:10.2"]);
        let got = preferred(&devs, &avail, &[], 2, Allocation::Pack);
        assert_eq!(got, ids(&["0000:3c:10.1", "0000:3c:10.2"]));
        let got = preferred(&devs, &avail, &[], 2, Allocation::Spread);
        assert_eq!(got, ids(&["0000:3b:10.1", "0000:3c:10.1"]));
        // Never more than available; unknown IDs last.
        let odd = ids(&["x", "0000:3b:10.1"]);
        assert_eq!(
            preferred(&devs, &odd, &[], 5, Allocation::Spread),
            ids(&["0000:3b:10.1", "x"])
        );
    }
}
