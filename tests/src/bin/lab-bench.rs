//! The lab's latency benchmark, run inside the lab VM on real VFs.
//!
//! `lab-bench floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES`: the floor,
//! the kernel operations of one claim and one release of a VF (VF settings
//! on the PF over netlink, driver_override + unbind + drivers_probe to
//! vfio-pci and back, settings restored), with no ledger, no locks, no
//! checks and no read-back.
//!
//! `lab-bench engine CONFIG POOL CYCLES`: the same through the engine
//! (`Engine::claim` + `Engine::release`) in one process, so the ratio to the
//! floor is the engine's bookkeeping, without process start-up.
//!
//! `lab-bench compare CONFIG POOL PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES`:
//! both on the same VF (the engine's request is pinned to it), one floor
//! cycle and one engine cycle alternately, so that load on the machine
//! falls on both. Prints `FLOOR_MS ENGINE_MS` (medians per cycle) on
//! stdout and the per-phase breakdown of each (medians) on stderr.
//!
//! The others print the mean milliseconds per cycle.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use std::path::Path;
use std::time::Instant;

use kata_sriov::engine::claim::{Engine, Step};
use kata_sriov::kernel::netlink::{KernelNetlink, VfNetlink, VfSetting};
use kata_sriov::kernel::sysfs::SysfsRoot;
use kata_sriov::kernel::vfio::{DriverBinder, SysfsBinder, VFIO_PCI};
use kata_sriov::pci::{IfName, MacAddr, PciAddress, Qos, VlanId, VlanProto};
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::parse_request;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov_tests::median_ms;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let start = Instant::now();
    let n = match a.get(1).map(String::as_str) {
        Some("floor") => floor(&a[2..])?,
        Some("engine") => engine(&a[2..])?,
        Some("compare") => return compare(&a[2..]),
        _ => anyhow::bail!(
            "usage: lab-bench floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES | engine CONFIG POOL CYCLES | compare CONFIG POOL PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES"
        ),
    };
    println!("{:.1}", start.elapsed().as_secs_f64() * 1e3 / f64::from(n));
    Ok(())
}

fn engine(a: &[String]) -> anyhow::Result<u32> {
    let [config, pool, n] = a else {
        anyhow::bail!("usage: lab-bench engine CONFIG POOL CYCLES");
    };
    let n: u32 = n.parse()?;
    let cfg = Config::load(Some(Path::new(config)))?;
    let nl = KernelNetlink::new()?;
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let engine = Engine::new(&cfg, &nl, &binder)?;
    let reqs = parse_request(pool)?;
    for i in 0..n {
        let owner = format!("bench/{i}");
        engine.claim(&owner, &reqs, OwnerCheck::None)?;
        engine.release(&owner)?;
    }
    Ok(n)
}

/// Time per named phase, one sample per cycle, in first-seen order.
#[derive(Default)]
struct Phases {
    order: Vec<String>,
    samples: BTreeMap<String, Vec<Duration>>,
}

impl Phases {
    fn add(&mut self, name: &str, d: Duration) {
        if !self.samples.contains_key(name) {
            self.order.push(name.to_owned());
        }
        let v = self.samples.entry(name.to_owned()).or_default();
        v.push(d);
    }

    /// Medians per phase (TCG under load has outliers that a mean would
    /// charge to whichever phase they hit).
    fn print(&self, title: &str, totals: &[Duration]) {
        eprintln!(
            "{title}: median {:.1} ms per cycle, mean {:.1} ms, {} cycles; per phase, median:",
            median_ms(totals),
            ms(totals.iter().sum(), totals.len() as u32),
            totals.len()
        );
        for name in &self.order {
            eprintln!("  {name:<52} {:>7.2} ms", median_ms(&self.samples[name]));
        }
    }
}

fn ms(d: Duration, cycles: u32) -> f64 {
    d.as_secs_f64() * 1e3 / f64::from(cycles.max(1))
}

/// Times the phases of a run of steps: `mark(name)` closes the phase that
/// ended now under `name`.
struct Clock<'p> {
    last: Instant,
    phases: &'p mut Phases,
}

impl Clock<'_> {
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.add(name, now - self.last);
        self.last = now;
    }
}

struct Floor {
    pf: IfName,
    vf: PciAddress,
    idx: u32,
    nl: KernelNetlink,
    binder: SysfsBinder,
    host: Option<String>,
    orig: kata_sriov::kernel::netlink::VfSettings,
}

impl Floor {
    fn new(pf: &str, vf: &str, idx: &str) -> anyhow::Result<Floor> {
        let vf: PciAddress = vf.parse()?;
        let nl = KernelNetlink::new()?;
        let pf: IfName = pf.parse()?;
        let idx: u32 = idx.parse()?;
        // Read once, outside the timed loop, so the VF ends as it began.
        let orig = nl.vf_settings(&pf, idx)?;
        Ok(Floor {
            host: SysfsRoot::default().driver(vf)?,
            binder: SysfsBinder::new(SysfsRoot::default()),
            pf,
            vf,
            idx,
            nl,
            orig,
        })
    }

    /// One claim + release of the bare kernel operations.
    fn cycle(&self, phases: &mut Phases) -> anyhow::Result<()> {
        let (pf, idx, orig) = (&self.pf, self.idx, &self.orig);
        let vlan = VlanId::new(100).ok_or_else(|| anyhow::anyhow!("vlan"))?;
        let mut c = Clock {
            last: Instant::now(),
            phases,
        };
        let claim = [
            VfSetting::Mac(MacAddr([0x02, 0, 0, 0, 0x42, 0x42])),
            VfSetting::Vlan {
                vlan,
                qos: Qos::default(),
                proto: VlanProto::Dot1Q,
            },
            VfSetting::SpoofChk(true),
            VfSetting::Trust(false),
        ];
        for s in claim {
            self.nl.set_vf(pf, idx, s)?;
            c.mark(&format!("claim: set {}", s.kind()));
        }
        self.binder.bind(self.vf, Some(VFIO_PCI))?;
        c.mark("claim: bind to vfio-pci");
        self.binder.bind(self.vf, None)?;
        c.mark("release: unbind");
        for s in [
            VfSetting::Trust(orig.trust.unwrap_or(false)),
            VfSetting::SpoofChk(orig.spoofchk.unwrap_or(true)),
            VfSetting::Vlan {
                vlan: orig.vlan,
                qos: orig.qos,
                proto: orig.vlan_proto,
            },
            VfSetting::Mac(orig.mac),
        ] {
            self.nl.set_vf(pf, idx, s)?;
            c.mark(&format!("release: restore {}", s.kind()));
        }
        self.binder.bind(self.vf, self.host.as_deref())?;
        c.mark("release: rebind host driver");
        Ok(())
    }
}

fn floor(a: &[String]) -> anyhow::Result<u32> {
    let [pf, vf, idx, n] = a else {
        anyhow::bail!("usage: lab-bench floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES");
    };
    let n: u32 = n.parse()?;
    let f = Floor::new(pf, vf, idx)?;
    let mut phases = Phases::default();
    for _ in 0..n {
        f.cycle(&mut phases)?;
    }
    Ok(n)
}

/// The name of the phase that ends at step `s`.
fn step_phase(s: Step) -> String {
    match s {
        Step::Picked => "claim: lock, pick VF, IOMMU check, read originals".into(),
        Step::LeaseWritten => "claim: write lease (claiming)".into(),
        Step::SettingApplied(i) => format!("claim: set setting {i}"),
        Step::ReadBack => "claim: read settings back".into(),
        Step::Bound => "claim: bind to vfio-pci".into(),
        Step::Described => "claim: /dev/vfio node".into(),
        Step::Claimed => "claim: write lease (claimed)".into(),
        Step::MarkedReleasing => "release: find lease, mark releasing".into(),
        Step::Unbound => "release: wait unused, unbind".into(),
        Step::SettingRestored(i) => format!("release: restore setting {i}"),
        Step::RestoreReadBack => "release: read restored settings back".into(),
        Step::Rebound => "release: rebind host driver".into(),
        Step::LeaseRemoved => "release: remove lease".into(),
    }
}

fn compare(a: &[String]) -> anyhow::Result<()> {
    let [config, pool, pf, vf, idx, n] = a else {
        anyhow::bail!(
            "usage: lab-bench compare CONFIG POOL PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES"
        );
    };
    let n: u32 = n.parse()?;
    let floor = Floor::new(pf, vf, idx)?;
    let cfg = Config::load(Some(Path::new(config)))?;
    let nl = KernelNetlink::new()?;
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let steps: Mutex<Vec<(Step, Instant)>> = Mutex::new(Vec::new());
    let probe = |s: Step| {
        if let Ok(mut v) = steps.lock() {
            v.push((s, Instant::now()));
        }
    };
    let mut engine = Engine::new(&cfg, &nl, &binder)?;
    engine.probe = Some(&probe);
    let mut reqs = parse_request(pool)?;
    for r in &mut reqs {
        r.vf = Some(floor.vf);
    }
    let (mut fp, mut ep) = (Phases::default(), Phases::default());
    let (mut ft, mut et) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        floor.cycle(&mut fp)?;
        ft.push(t.elapsed());

        let owner = format!("bench/{i}");
        steps
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clear();
        let t = Instant::now();
        engine.claim(&owner, &reqs, OwnerCheck::None)?;
        let claimed = Instant::now();
        engine.release(&owner)?;
        let end = Instant::now();
        et.push(end - t);
        let mut last = t;
        let taken = std::mem::take(&mut *steps.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        for (s, at) in taken {
            if s == Step::MarkedReleasing {
                ep.add("claim: return, release: list leases", claimed - last);
                last = claimed;
            }
            ep.add(&step_phase(s), at - last);
            last = at;
        }
        ep.add("release: return", end - last);
    }
    fp.print("floor", &ft);
    ep.print("engine", &et);
    println!("{:.1} {:.1}", median_ms(&ft), median_ms(&et));
    Ok(())
}
