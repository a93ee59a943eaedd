//! `kata-sriov status`: what the host has (PFs, VFs, drivers, IOMMU groups,
//! VF settings read back from the PF) beside what the ledger says (leases,
//! owners, states, quarantined VFs). Reads only.
//!
//! The JSON form (`status --json`) is stable:
//! `{"pfs":[{"pf","netdevs","total_vfs","num_vfs","driver","pools",
//! "vfs":[{"index","vf","pci_id","driver","netdev","iommu_group",
//! "settings"|null,"settings_error"?,"lease"|null,"unclaimable"?}]}],
//! "leases":[{"vf","owner","pool","state","mac","pf","vf_index","created","pod"?}],
//! "quarantined":[{"vf","path","reason"}]}`.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::claim::ClaimError;
use crate::error::{chain, printable};
use crate::kernel::iommu;
use crate::kernel::netlink::{VfNetlink, VfSettings};
use crate::kernel::sysfs::SysfsRoot;
use crate::kernel::vfio::VFIO_PCI;
use crate::pci::{IfName, MacAddr, PciAddress, PciId};
use crate::policy::config::{Config, Mode};
use crate::state::ledger::{Lease, LeaseState, Ledger};

#[derive(Debug, Serialize)]
pub struct LeaseSummary {
    pub vf: PciAddress,
    pub owner: String,
    pub pool: String,
    pub state: LeaseState,
    pub mac: Option<MacAddr>,
    pub pf: PciAddress,
    pub vf_index: u32,
    pub created: u64,
    /// The Kubernetes pod holding a device plugin's VF, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl From<&Lease> for LeaseSummary {
    fn from(l: &Lease) -> Self {
        LeaseSummary {
            vf: l.vf,
            owner: l.owner.clone(),
            pool: l.pool.clone(),
            state: l.state,
            mac: l.mac,
            pf: l.pf,
            vf_index: l.vf_index,
            created: l.created,
            pod: l.pod.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VfStatus {
    pub index: u32,
    pub vf: Option<PciAddress>,
    pub pci_id: Option<PciId>,
    pub driver: Option<String>,
    pub netdev: Option<IfName>,
    pub iommu_group: Option<u32>,
    pub settings: Option<VfSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub lease: Option<LeaseSummary>,
    /// Why no pool of its PF can claim this VF (shared IOMMU group, a
    /// driver the pool cannot use), when that is so and it has no lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unclaimable: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PfStatus {
    pub pf: PciAddress,
    pub netdevs: Vec<IfName>,
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub driver: Option<String>,
    pub pools: Vec<String>,
    pub vfs: Vec<VfStatus>,
}

#[derive(Debug, Serialize)]
pub struct Quarantined {
    pub vf: PciAddress,
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pfs: Vec<PfStatus>,
    pub leases: Vec<LeaseSummary>,
    pub quarantined: Vec<Quarantined>,
    /// Pool PFs that could not be resolved, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Gathers the status. PFs: every SR-IOV PF on the host; VF settings are
/// read only when `nl` is given.
pub fn gather(
    cfg: &Config,
    ledger: &Ledger,
    nl: Option<&dyn VfNetlink>,
) -> Result<Status, ClaimError> {
    let sysfs = SysfsRoot::new(&cfg.sysfs_root);
    let mut leases: HashMap<PciAddress, Lease> = HashMap::new();
    let mut quarantined = Vec::new();
    for e in ledger.list()? {
        match e.lease {
            Ok(l) => {
                leases.insert(e.vf, l);
            }
            Err(reason) => quarantined.push(Quarantined {
                vf: e.vf,
                path: e.path.display().to_string(),
                reason,
            }),
        }
    }
    let mut pools_of: HashMap<PciAddress, Vec<String>> = HashMap::new();
    let mut errors = Vec::new();
    for p in &cfg.pools {
        for name in &p.pfs {
            match sysfs.resolve_pf(name) {
                Ok(a) => pools_of.entry(a).or_default().push(p.name.clone()),
                Err(e) => errors.push(format!("pool {:?}: {ec}", p.name, ec = chain(&e))),
            }
        }
    }
    let mut pfs = Vec::new();
    for pf in sysfs.list_pfs()? {
        let info = match sysfs.pf_info(pf) {
            Ok(i) => i,
            Err(e) => {
                errors.push(chain(&e));
                continue;
            }
        };
        let mut vfs = Vec::new();
        for index in 0..info.num_vfs {
            let mut st = VfStatus {
                index,
                vf: None,
                pci_id: None,
                driver: None,
                netdev: None,
                iommu_group: None,
                settings: None,
                settings_error: None,
                error: None,
                lease: None,
                unclaimable: None,
            };
            match sysfs.vf_info(pf, index) {
                Ok(v) => {
                    st.vf = Some(v.addr);
                    st.pci_id = Some(v.pci_id);
                    st.driver = v.driver;
                    st.netdev = v.netdev;
                    st.iommu_group = v.iommu_group;
                    st.lease = leases.get(&v.addr).map(LeaseSummary::from);
                    if st.lease.is_none() {
                        let pools = pools_of.get(&pf).map(Vec::as_slice).unwrap_or_default();
                        st.unclaimable = unclaimable(cfg, &sysfs, pools, v.addr, &st.driver);
                    }
                }
                Err(e) => st.error = Some(chain(&e)),
            }
            if let (Some(nl), Some(ifn)) = (nl, info.netdev()) {
                match nl.vf_settings(ifn, index) {
                    Ok(s) => st.settings = Some(s),
                    Err(e) => st.settings_error = Some(chain(&e)),
                }
            }
            vfs.push(st);
        }
        pfs.push(PfStatus {
            pf,
            pools: pools_of.remove(&pf).unwrap_or_default(),
            netdevs: info.netdevs,
            total_vfs: info.total_vfs,
            num_vfs: info.num_vfs,
            driver: info.driver,
            vfs,
        });
    }
    let mut all: Vec<LeaseSummary> = leases.values().map(LeaseSummary::from).collect();
    all.sort_by_key(|l| l.vf);
    Ok(Status {
        pfs,
        leases: all,
        quarantined,
        errors,
    })
}

/// Why none of `pools` (the pools of the VF's PF) can claim `vf`, or None
/// when one can (or there is none: then it is no pool's VF). The checks
/// of the claim that need no lease: alone in its IOMMU group for `vfio`
/// pools, on a netdev driver for `netdev` pools.
fn unclaimable(
    cfg: &Config,
    sysfs: &SysfsRoot,
    pools: &[String],
    vf: PciAddress,
    driver: &Option<String>,
) -> Option<String> {
    let mut why = Vec::new();
    for p in pools.iter().filter_map(|n| cfg.pool(n)) {
        let reason = match p.mode {
            Mode::Vfio => iommu::check_isolated(sysfs, vf).err().map(|e| chain(&e)),
            Mode::Netdev => match driver.as_deref() {
                Some(d) if d != VFIO_PCI && sysfs.netdevs(vf).is_ok_and(|n| !n.is_empty()) => None,
                d => Some(format!(
                    "on {}, which gives it no netdev",
                    d.unwrap_or("no driver")
                )),
            },
        };
        match reason {
            None => return None,
            Some(r) => why.push(format!("pool {}: {r}", p.name)),
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The human form.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    if s.pfs.is_empty() {
        out.push_str("no SR-IOV PF found\n");
    }
    for pf in &s.pfs {
        let nets: Vec<&str> = pf.netdevs.iter().map(IfName::as_str).collect();
        let _ = writeln!(
            out,
            "PF {} ({}) driver {} VFs {}/{} pools [{}]",
            pf.pf,
            if nets.is_empty() {
                "-".into()
            } else {
                nets.join(",")
            },
            printable(pf.driver.as_deref().unwrap_or("-")),
            pf.num_vfs,
            pf.total_vfs,
            pf.pools.join(",")
        );
        for v in &pf.vfs {
            let addr = v.vf.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
            let mut line = format!(
                "  vf {:<3} {addr} {:<9} group {:<4} netdev {:<10}",
                v.index,
                printable(v.driver.as_deref().unwrap_or("-")),
                v.iommu_group.map(|g| g.to_string()).unwrap_or("-".into()),
                v.netdev.as_ref().map(IfName::as_str).unwrap_or("-"),
            );
            if let Some(st) = &v.settings {
                let _ = write!(
                    line,
                    " mac {} vlan {} qos {} spoofchk {} trust {}",
                    st.mac,
                    st.vlan.get(),
                    st.qos.get(),
                    onoff(st.spoofchk),
                    onoff(st.trust)
                );
            }
            match &v.lease {
                Some(l) => {
                    let _ = write!(
                        line,
                        " leased to {} ({:?}, pool {})",
                        printable(&l.owner),
                        l.state,
                        l.pool
                    );
                    if let Some(p) = &l.pod {
                        let _ = write!(line, " for pod {}", printable(p));
                    }
                }
                None => match &v.unclaimable {
                    None => line.push_str(" free"),
                    Some(why) => {
                        let _ = write!(line, " unclaimable: {}", printable(why));
                    }
                },
            }
            if let Some(e) = &v.error {
                let _ = write!(line, " error: {}", printable(e));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    for q in &s.quarantined {
        let _ = writeln!(
            out,
            "QUARANTINED {}: {} ({})",
            q.vf,
            printable(&q.reason),
            printable(&q.path)
        );
    }
    for e in &s.errors {
        let _ = writeln!(out, "error: {}", printable(e));
    }
    out
}

fn onoff(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    }
}
