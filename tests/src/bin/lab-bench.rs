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
//! Each prints the mean milliseconds per cycle.

use std::path::Path;
use std::time::Instant;

use kata_sriov::engine::claim::Engine;
use kata_sriov::kernel::netlink::{KernelNetlink, VfNetlink, VfSetting};
use kata_sriov::kernel::sysfs::SysfsRoot;
use kata_sriov::kernel::vfio::{DriverBinder, SysfsBinder, VFIO_PCI};
use kata_sriov::pci::{IfName, MacAddr, PciAddress, Qos, VlanId, VlanProto};
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::parse_request;
use kata_sriov::state::ledger::OwnerCheck;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let start = Instant::now();
    let n = match a.get(1).map(String::as_str) {
        Some("floor") => floor(&a[2..])?,
        Some("engine") => engine(&a[2..])?,
        _ => anyhow::bail!(
            "usage: lab-bench floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES | engine CONFIG POOL CYCLES"
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

fn floor(a: &[String]) -> anyhow::Result<u32> {
    let [pf, vf, idx, n] = a else {
        anyhow::bail!("usage: lab-bench floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES");
    };
    let pf: IfName = pf.parse()?;
    let vf: PciAddress = vf.parse()?;
    let idx: u32 = idx.parse()?;
    let n: u32 = n.parse()?;
    let nl = KernelNetlink::new()?;
    let binder = SysfsBinder::new(SysfsRoot::default());
    let host = SysfsRoot::default().driver(vf)?;
    // Read once, outside the timed loop, so the VF ends as it began.
    let orig = nl.vf_settings(&pf, idx)?;
    let vlan = VlanId::new(100).ok_or_else(|| anyhow::anyhow!("vlan"))?;
    for _ in 0..n {
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
            nl.set_vf(&pf, idx, s)?;
        }
        binder.bind(vf, Some(VFIO_PCI))?;
        binder.bind(vf, None)?;
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
            nl.set_vf(&pf, idx, s)?;
        }
        binder.bind(vf, host.as_deref())?;
    }
    Ok(n)
}
