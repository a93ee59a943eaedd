//! IOMMU group safety: a VF may be passed through only when its IOMMU group
//! holds nothing but itself and PCI bridges (VFIO hands a VM the whole
//! group, and Kata's cold plug attaches only the group's first device).
//!
//! Kernel files read, under the sysfs root: `kernel/iommu_groups/`,
//! `kernel/iommu_groups/<n>/devices/`, `bus/pci/devices/<addr>/{iommu_group,class}`.

use std::fs;

use crate::error::IoError;
use crate::kernel::sysfs::{SysfsError, SysfsRoot};
use crate::pci::PciAddress;

#[derive(Debug, thiserror::Error)]
pub enum IommuError {
    #[error("the IOMMU is off ({path} is empty): add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line, enable VT-d/AMD-Vi in the firmware, and reboot")]
    Off { path: String },
    #[error("{0} has no IOMMU group although the IOMMU is on; it cannot be passed through")]
    NoGroup(PciAddress),
    #[error("{addr} shares IOMMU group {group} with {others}: passing it through would hand those to the VM too; use a VF alone in its group (check ACS support, or the PF's slot)")]
    Shared {
        addr: PciAddress,
        group: u32,
        others: String,
    },
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// PCI class code of a PCI-to-PCI bridge (base class 06, subclass 04).
fn is_bridge(class: u32) -> bool {
    class >> 8 == 0x0604
}

/// Whether the kernel has any IOMMU group at all.
pub fn enabled(root: &SysfsRoot) -> bool {
    fs::read_dir(root.iommu_groups()).is_ok_and(|mut rd| rd.next().is_some())
}

/// The devices in IOMMU group `group`, sorted.
pub fn group_devices(root: &SysfsRoot, group: u32) -> Result<Vec<PciAddress>, SysfsError> {
    let dir = root.iommu_groups().join(group.to_string()).join("devices");
    let rd = fs::read_dir(&dir)
        .map_err(|source| SysfsError::Io(IoError::new("listing", dir.clone(), source)))?;
    let mut out: Vec<PciAddress> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    out.sort();
    Ok(out)
}

/// Returns `addr`'s IOMMU group when the group holds only `addr` and PCI
/// bridges; otherwise an error naming what else is there.
pub fn check_isolated(root: &SysfsRoot, addr: PciAddress) -> Result<u32, IommuError> {
    // A device with a group proves the IOMMU on; only without one is the
    // groups directory read (it has one entry per group: reading it for
    // every VF made a scan of N VFs cost N times the directory).
    let group = match root.iommu_group(addr)? {
        Some(g) => g,
        None if !enabled(root) => {
            return Err(IommuError::Off {
                path: root.iommu_groups().display().to_string(),
            })
        }
        None => return Err(IommuError::NoGroup(addr)),
    };
    let mut others = Vec::new();
    for dev in group_devices(root, group)? {
        if dev == addr {
            continue;
        }
        // A device whose class cannot be read counts as an endpoint: fail closed.
        if !root.class(dev).is_ok_and(is_bridge) {
            let drv = root.driver(dev).ok().flatten();
            others.push(match drv {
                Some(d) => format!("{dev} ({d})"),
                None => dev.to_string(),
            });
        }
    }
    if others.is_empty() {
        Ok(group)
    } else {
        Err(IommuError::Shared {
            addr,
            group,
            others: others.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDevice, FakeSysfs};

    #[test]
    fn alone_in_group_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 2, 4);
        let root = fake.root();
        let vf = root.vf_addr(pf, 0).unwrap();
        let g = check_isolated(&root, vf).unwrap();
        assert_eq!(Some(g), root.iommu_group(vf).unwrap());
    }

    #[test]
    fn bridge_in_group_is_ok_endpoint_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 2, 4);
        let root = fake.root();
        let vf0 = root.vf_addr(pf, 0).unwrap();
        let vf1 = root.vf_addr(pf, 1).unwrap();
        let g = root.iommu_group(vf0).unwrap().unwrap();
        fake.add_device(FakeDevice::bridge("0000:00:01.0").in_group(g));
        assert_eq!(check_isolated(&root, vf0).unwrap(), g);
        fake.add_device(FakeDevice::endpoint("0000:5e:00.0").in_group(g));
        fake.set_group(vf1, g);
        let e = check_isolated(&root, vf0).unwrap_err().to_string();
        assert!(
            e.contains("0000:5e:00.0 (i40e)") && e.contains(&vf1.to_string()),
            "{e}"
        );
        assert!(!e.contains("0000:00:01.0"), "{e}");
    }

    #[test]
    fn iommu_off_names_the_kernel_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::without_iommu(dir.path());
        let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 1, 4);
        let root = fake.root();
        assert!(!enabled(&root));
        let vf = root.vf_addr(pf, 0).unwrap();
        let e = check_isolated(&root, vf).unwrap_err().to_string();
        assert!(
            e.contains("intel_iommu=on") && e.contains("amd_iommu=on"),
            "{e}"
        );
    }
}
