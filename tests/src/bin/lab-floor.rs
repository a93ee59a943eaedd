//! The floor for the lab's latency benchmark: the kernel operations of one
//! claim and one release of a VF (VF settings on the PF over netlink,
//! driver_override + unbind + drivers_probe to vfio-pci and back, settings
//! restored), with no ledger, no locks, no checks and no read-back.
//!
//! Usage: lab-floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES

use kata_sriov::netlink::{KernelNetlink, VfNetlink, VfSetting};
use kata_sriov::pci::{IfName, MacAddr, PciAddress, Qos, VlanId, VlanProto};
use kata_sriov::sysfs::SysfsRoot;
use kata_sriov::vfio::{DriverBinder, SysfsBinder, VFIO_PCI};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let [_, pf, vf, idx, n] = a.as_slice() else {
        anyhow::bail!("usage: lab-floor PF_IFNAME VF_PCI_ADDRESS VF_INDEX CYCLES");
    };
    let pf: IfName = pf.parse()?;
    let vf: PciAddress = vf.parse()?;
    let idx: u32 = idx.parse()?;
    let n: u32 = n.parse()?;
    let nl = KernelNetlink::new()?;
    let binder = SysfsBinder::new(SysfsRoot::default());
    let host = SysfsRoot::default().driver(vf)?;
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
            VfSetting::Trust(false),
            VfSetting::SpoofChk(true),
            VfSetting::Vlan {
                vlan: VlanId::NONE,
                qos: Qos::default(),
                proto: VlanProto::Dot1Q,
            },
            VfSetting::Mac(MacAddr::ZERO),
        ] {
            nl.set_vf(&pf, idx, s)?;
        }
        binder.bind(vf, host.as_deref())?;
    }
    Ok(())
}
