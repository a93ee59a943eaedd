//! `kata-sriov setup`: prepares the host from the config, safe to re-run.
//!
//! For each PF of each pool, in order: `sriov_drivers_autoprobe` = 1 (VFs
//! come up on their host driver; a claim moves one to vfio-pci); the VF
//! count from the pool's `num_vfs` (through [`SysfsRoot::set_num_vfs`],
//! which writes 0 first when changing a non-zero count), refused while any
//! VF of that PF is leased; the PF's link up; then every free VF (no
//! lease, and not held open through `/dev/vfio/N` by another tool) in a
//! clean default state: spoof checking on, not trusted, no VLAN, and a MAC
//! per the pool's policy: `generate`/`request` give a VF whose MAC is
//! 00:00:00:00:00:00 a fresh locally administered MAC unique on the host
//! and keep a non-zero MAC (so a second run changes nothing and MACs stay
//! stable across runs); `keep` leaves it alone (and wins when pools that
//! share a PF disagree). Pools that share a PF must agree on `num_vfs`,
//! else the count is left alone and reported. vfio-pci is loaded first
//! when a pool uses `mode = "vfio"`, and Kata's DAN directory is created
//! for `guest = "dan"` pools. A setting the driver does not support is
//! reported and skipped.
//!
//! Kernel interfaces: sysfs `bus/pci/devices/<pf>/{sriov_numvfs,
//! sriov_drivers_autoprobe,virtfnN}`, `class/net/<if>/{flags,address}`,
//! `bus/pci/drivers/vfio-pci`; VF settings and link up through
//! [`VfNetlink`]; the ledger's lease files (read only); `/proc/*/fd` to
//! see who holds a VFIO group. Progress lines go to the writer given.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use crate::engine::mac;
use crate::error::chain;
use crate::kernel::netlink::{apply_verified, VfNetlink, VfSetting, VfSettings};
use crate::kernel::sysfs::{read_attr, SysfsRoot};
use crate::kernel::vfio::{self, VfioError, VFIO_PCI};
use crate::pci::{IfName, MacAddr, PciAddress, Qos, VlanId, VlanProto};
use crate::policy::config::{Config, GuestMode, MacPolicy, Mode};
use crate::state::ledger::{Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("writing progress: {0}")]
    Output(std::io::Error),
}

// Not `#[from]`: the message already shows it, so it is not a source.
impl From<std::io::Error> for SetupError {
    fn from(e: std::io::Error) -> Self {
        SetupError::Output(e)
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetupReport {
    /// Changes made (0: the host was already set up).
    pub changes: usize,
    /// What could not be done, one line each.
    pub failures: Vec<String>,
    /// Things left alone on purpose (leased VFs, unsupported settings).
    pub skipped: Vec<String>,
}

/// Records and prints a failure as it happens.
fn fail(out: &mut dyn Write, list: &mut Vec<String>, msg: String) -> std::io::Result<()> {
    writeln!(out, "FAILED: {msg}")?;
    list.push(msg);
    Ok(())
}

/// Records a change as it is made: prints `done` and counts it, or records
/// the failure as `what: <error>`. Returns whether it was made.
fn change<E: std::error::Error + 'static>(
    out: &mut dyn Write,
    r: &mut SetupReport,
    res: Result<(), E>,
    what: &str,
    done: String,
) -> std::io::Result<bool> {
    match res {
        Ok(()) => {
            writeln!(out, "{done}")?;
            r.changes += 1;
            Ok(true)
        }
        Err(e) => {
            fail(
                out,
                &mut r.failures,
                format!("{what}: {ec}", ec = chain(&e)),
            )?;
            Ok(false)
        }
    }
}

/// Records and prints something left alone on purpose.
fn skip(out: &mut dyn Write, list: &mut Vec<String>, msg: String) -> std::io::Result<()> {
    writeln!(out, "skipped: {msg}")?;
    list.push(msg);
    Ok(())
}

/// One PF and what the pools want of it.
struct PfPlan {
    name: String,
    pools: Vec<String>,
    num_vfs: Option<u32>,
    keep_mac: bool,
}

/// The setup run's inputs.
pub struct Setup<'a> {
    pub cfg: &'a Config,
    pub sysfs: SysfsRoot,
    pub nl: &'a dyn VfNetlink,
    /// Loads vfio-pci (production: [`vfio::SysfsBinder::ensure_vfio_pci`]).
    pub load_vfio: &'a dyn Fn() -> Result<(), VfioError>,
    pub proc_root: PathBuf,
}

impl<'a> Setup<'a> {
    pub fn new(
        cfg: &'a Config,
        nl: &'a dyn VfNetlink,
        load_vfio: &'a dyn Fn() -> Result<(), VfioError>,
    ) -> Self {
        Setup {
            cfg,
            sysfs: SysfsRoot::new(&cfg.sysfs_root),
            nl,
            load_vfio,
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// Runs setup, printing one line per step to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<SetupReport, SetupError> {
        let mut r = SetupReport::default();
        let ledger = Ledger::open(&self.cfg.state_dir)?;
        if self.cfg.pools.is_empty() {
            writeln!(out, "no pools in the config: nothing to set up")?;
        }
        if self.cfg.pools.iter().any(|p| p.mode == Mode::Vfio) {
            self.vfio(out, &mut r)?;
        }
        let mut used = self.macs_in_use(&ledger);
        for (addr, plan) in self.plans(out, &mut r)? {
            self.pf(out, &mut r, &ledger, addr, &plan, &mut used)?;
        }
        if self
            .cfg
            .pools
            .iter()
            .any(|p| self.cfg.guest_mode(p) == GuestMode::Dan)
        {
            let d = &self.cfg.dan.dir;
            if !d.is_dir() {
                let made = fs::DirBuilder::new().recursive(true).mode(0o755).create(d);
                change(
                    out,
                    &mut r,
                    made,
                    &format!("creating {}", d.display()),
                    format!("created Kata's DAN directory {}", d.display()),
                )?;
            }
        }
        if r.changes == 0 && r.failures.is_empty() {
            writeln!(out, "setup: nothing to change, the host is already set up")?;
        } else {
            writeln!(
                out,
                "setup: {} change(s), {} failure(s)",
                r.changes,
                r.failures.len()
            )?;
        }
        Ok(r)
    }

    fn vfio(&self, out: &mut dyn Write, r: &mut SetupReport) -> Result<(), SetupError> {
        if self.sysfs.driver_dir(VFIO_PCI).is_dir() {
            writeln!(out, "vfio-pci: loaded")?;
            return Ok(());
        }
        writeln!(out, "vfio-pci: loading ...")?;
        match (self.load_vfio)() {
            Ok(()) => {
                writeln!(out, "vfio-pci: loaded")?;
                r.changes += 1;
            }
            Err(e) => fail(out, &mut r.failures, chain(&e))?,
        }
        Ok(())
    }

    /// The PFs to set up, resolved and merged across pools.
    fn plans(
        &self,
        out: &mut dyn Write,
        r: &mut SetupReport,
    ) -> std::io::Result<BTreeMap<PciAddress, PfPlan>> {
        let mut plans: BTreeMap<PciAddress, PfPlan> = BTreeMap::new();
        let mut conflicts = HashSet::new();
        for pool in &self.cfg.pools {
            for name in &pool.pfs {
                let addr = match self.sysfs.resolve_pf(name) {
                    Ok(a) => a,
                    Err(e) => {
                        fail(
                            out,
                            &mut r.failures,
                            format!("pool {:?}: {ec}", pool.name, ec = chain(&e)),
                        )?;
                        continue;
                    }
                };
                let p = plans.entry(addr).or_insert_with(|| PfPlan {
                    name: name.clone(),
                    pools: Vec::new(),
                    num_vfs: None,
                    keep_mac: false,
                });
                p.pools.push(pool.name.clone());
                p.keep_mac |= pool.mac == MacPolicy::Keep;
                match (p.num_vfs, pool.num_vfs) {
                    (Some(a), Some(b)) if a != b && conflicts.insert(addr) => {
                        fail(out, &mut r.failures, format!(
                            "PF {addr}: pools {} ask for different num_vfs ({a} and {b}); the count is left alone",
                            p.pools.join(", ")
                        ))?;
                    }
                    (None, Some(b)) => p.num_vfs = Some(b),
                    _ => {}
                }
            }
        }
        for a in conflicts {
            if let Some(p) = plans.get_mut(&a) {
                p.num_vfs = None;
            }
        }
        Ok(plans)
    }

    /// MACs of the host's interfaces and of every lease.
    fn macs_in_use(&self, ledger: &Ledger) -> HashSet<MacAddr> {
        let mut used: HashSet<MacAddr> = ledger
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.lease.ok().and_then(|l| l.mac))
            .collect();
        if let Ok(rd) = fs::read_dir(self.sysfs.path().join("class/net")) {
            used.extend(rd.flatten().filter_map(|e| {
                read_attr(&e.path().join("address"))
                    .ok()?
                    .parse::<MacAddr>()
                    .ok()
            }));
        }
        used
    }

    /// The VFs of `pf` that have a lease, with their owners.
    fn leased(&self, ledger: &Ledger, pf: PciAddress, num: u32) -> Vec<(PciAddress, String)> {
        let vfs: HashSet<PciAddress> = (0..num)
            .filter_map(|i| self.sysfs.vf_addr(pf, i).ok())
            .collect();
        ledger
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| match e.lease {
                Ok(l) if l.pf == pf || vfs.contains(&e.vf) => Some((e.vf, l.owner)),
                Err(_) if vfs.contains(&e.vf) => Some((e.vf, "an unreadable lease".into())),
                _ => None,
            })
            .collect()
    }

    fn pf(
        &self,
        out: &mut dyn Write,
        r: &mut SetupReport,
        ledger: &Ledger,
        addr: PciAddress,
        plan: &PfPlan,
        used: &mut HashSet<MacAddr>,
    ) -> Result<(), SetupError> {
        let info = match self.sysfs.pf_info(addr) {
            Ok(i) => i,
            Err(e) => {
                fail(out, &mut r.failures, chain(&e))?;
                return Ok(());
            }
        };
        let label = match info.netdev() {
            Some(n) => format!("PF {addr} ({n})"),
            None => format!("PF {addr} ({})", plan.name),
        };
        // Autoprobe: VFs come up on their host driver.
        let ap = self.sysfs.device(addr).join("sriov_drivers_autoprobe");
        match read_attr(&ap) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => {
                change(
                    out,
                    r,
                    self.sysfs.write(&ap, "1"),
                    &label,
                    format!("{label}: sriov_drivers_autoprobe {} -> 1", v.trim()),
                )?;
            }
            Err(e) => skip(
                out,
                &mut r.skipped,
                format!("{label}: no sriov_drivers_autoprobe ({ec})", ec = chain(&e)),
            )?,
        }
        // The VF count.
        let mut num = info.num_vfs;
        match plan.num_vfs {
            None => writeln!(
                out,
                "{label}: {num} VFs (num_vfs not set in pool {}: count left alone)",
                plan.pools.join(", ")
            )?,
            Some(want) if want == num => writeln!(out, "{label}: {num} VFs, as configured")?,
            Some(want) => {
                let leased = self.leased(ledger, addr, num);
                if !leased.is_empty() {
                    let who: Vec<String> = leased
                        .iter()
                        .map(|(vf, o)| format!("{vf} (owner {o})"))
                        .collect();
                    fail(out, &mut r.failures, format!(
                        "{label}: not changing the VF count from {num} to {want}: leased VFs would be destroyed: {}; release them first",
                        who.join(", ")
                    ))?;
                } else {
                    let how = if num == 0 {
                        String::new()
                    } else {
                        " (writing 0 first)".to_owned()
                    };
                    writeln!(out, "{label}: setting {want} VFs, was {num}{how} ...")?;
                    out.flush()?;
                    let set = self.sysfs.set_num_vfs(addr, want, None).map(|_| ());
                    if change(out, r, set, &label, format!("{label}: {want} VFs"))? {
                        num = want;
                    }
                }
            }
        }
        let Some(netdev) = info.netdev().cloned() else {
            skip(
                out,
                &mut r.skipped,
                format!("{label}: no network interface: link and VF settings left alone"),
            )?;
            return Ok(());
        };
        self.link_up(out, r, &label, &netdev)?;
        self.free_vfs(
            out,
            r,
            ledger,
            addr,
            &label,
            &netdev,
            num,
            plan.keep_mac,
            used,
        )
    }

    fn link_up(
        &self,
        out: &mut dyn Write,
        r: &mut SetupReport,
        label: &str,
        netdev: &IfName,
    ) -> Result<(), SetupError> {
        let flags = self
            .sysfs
            .path()
            .join("class/net")
            .join(netdev.as_str())
            .join("flags");
        let up = read_attr(&flags)
            .ok()
            .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
            .map(|f| f & libc::IFF_UP as u32 != 0);
        if up == Some(true) {
            return Ok(());
        }
        match self.nl.link_up(netdev) {
            Ok(()) => {
                if up == Some(false) {
                    writeln!(out, "{label}: link set up")?;
                    r.changes += 1;
                }
            }
            Err(e) => fail(
                out,
                &mut r.failures,
                format!("{label}: {ec}", ec = chain(&e)),
            )?,
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn free_vfs(
        &self,
        out: &mut dyn Write,
        r: &mut SetupReport,
        ledger: &Ledger,
        pf: PciAddress,
        label: &str,
        netdev: &IfName,
        num: u32,
        keep_mac: bool,
        used: &mut HashSet<MacAddr>,
    ) -> Result<(), SetupError> {
        let leased: HashSet<PciAddress> = self
            .leased(ledger, pf, num)
            .into_iter()
            .map(|(vf, _)| vf)
            .collect();
        let mut current: Vec<(u32, PciAddress, VfSettings)> = Vec::new();
        for i in 0..num {
            let vf = match self.sysfs.vf_addr(pf, i) {
                Ok(v) => v,
                Err(e) => {
                    fail(
                        out,
                        &mut r.failures,
                        format!("{label}: {ec}", ec = chain(&e)),
                    )?;
                    continue;
                }
            };
            if leased.contains(&vf) {
                skip(
                    out,
                    &mut r.skipped,
                    format!("{label}: VF {i} ({vf}) is leased: left alone"),
                )?;
                continue;
            }
            if self.held_open(vf) {
                skip(out, &mut r.skipped, format!(
                    "{label}: VF {i} ({vf}) is on vfio-pci and held open by another process: left alone"
                ))?;
                continue;
            }
            match self.nl.vf_settings(netdev, i) {
                Ok(s) => {
                    if !s.mac.is_zero() {
                        used.insert(s.mac);
                    }
                    current.push((i, vf, s));
                }
                Err(e) => fail(
                    out,
                    &mut r.failures,
                    format!("{label}: VF {i} ({vf}): {ec}", ec = chain(&e)),
                )?,
            }
        }
        for (i, vf, s) in current {
            let mut want = Vec::new();
            if !keep_mac && s.mac.is_zero() {
                match mac::generate(|m| used.contains(m)) {
                    Ok(m) => {
                        used.insert(m);
                        want.push(VfSetting::Mac(m));
                    }
                    Err(e) => fail(
                        out,
                        &mut r.failures,
                        format!(
                            "{label}: VF {i} ({vf}): cannot generate a MAC: {ec}",
                            ec = chain(&e)
                        ),
                    )?,
                }
            }
            if s.vlan != VlanId::NONE || s.qos != Qos::default() {
                want.push(VfSetting::Vlan {
                    vlan: VlanId::NONE,
                    qos: Qos::default(),
                    proto: VlanProto::Dot1Q,
                });
            }
            if s.spoofchk == Some(false) {
                want.push(VfSetting::SpoofChk(true));
            }
            if s.trust == Some(true) {
                want.push(VfSetting::Trust(false));
            }
            let mut done = Vec::new();
            for setting in want {
                match apply_verified(self.nl, netdev, i, setting) {
                    Ok(()) => done.push(setting.to_string()),
                    Err(e) if e.is_unsupported() => skip(
                        out,
                        &mut r.skipped,
                        format!("{label}: VF {i} ({vf}): {setting} not supported by the driver"),
                    )?,
                    Err(e) => fail(
                        out,
                        &mut r.failures,
                        format!("{label}: VF {i} ({vf}): {ec}", ec = chain(&e)),
                    )?,
                }
            }
            if !done.is_empty() {
                writeln!(out, "{label}: VF {i} ({vf}): {}", done.join(", "))?;
                r.changes += done.len();
            }
        }
        Ok(())
    }

    /// A VF on vfio-pci whose group some process has open (another tool's VM).
    fn held_open(&self, vf: PciAddress) -> bool {
        if self.sysfs.driver(vf).ok().flatten().as_deref() != Some(VFIO_PCI) {
            return false;
        }
        let Ok(Some(g)) = self.sysfs.iommu_group(vf) else {
            return false;
        };
        let node = self.cfg.dev_root.join("vfio").join(g.to_string());
        !vfio::holders(&self.proc_root, &node).is_empty()
    }
}
