//! PF and VF discovery under a sysfs root (`/sys` in production, a temp dir
//! in tests).
//!
//! Kernel files read: `bus/pci/devices/<addr>/{sriov_totalvfs,sriov_numvfs,
//! sriov_drivers_autoprobe,virtfnN,physfn,driver,driver_override,iommu_group,
//! vendor,device,class,net/}` and `class/net/<name>/device`. Written:
//! `sriov_numvfs`, `sriov_drivers_autoprobe` (and, through [`write_bounded`],
//! whatever the `vfio` module writes). Every write is bounded in time.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::IoError;
use crate::pci::{IfName, ParseError, PciAddress, PciId};

/// How long one sysfs write may take before the caller gives up on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing `sriov_numvfs` returns only once every VF was created and
/// probed by its driver: seconds per VF on some NICs (and in an emulator).
pub const NUMVFS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("writing {data:?} to {path} did not finish within {timeout:?}; the device may be stuck (check dmesg)")]
    WriteTimeout {
        path: PathBuf,
        data: String,
        timeout: Duration,
    },
    #[error("{path}: unexpected content {content:?}: {reason}")]
    Content {
        path: PathBuf,
        content: String,
        reason: String,
    },
    #[error("no PCI device {0} (no {1})")]
    NoDevice(PciAddress, PathBuf),
    #[error("{0} is not an SR-IOV physical function (no sriov_totalvfs)")]
    NotSriov(PciAddress),
    #[error("no network interface or PCI address {0:?} names an SR-IOV PF; known PFs: {1}")]
    UnknownPf(String, String),
    #[error("PF {pf}: {link} does not point at a VF of this PF ({reason})")]
    BadVirtfn {
        pf: PciAddress,
        link: PathBuf,
        reason: String,
    },
    #[error("PF {pf} has {num} VFs; VF index {index} does not exist")]
    NoVf {
        pf: PciAddress,
        index: u32,
        num: u32,
    },
    #[error("PF {pf}: cannot set {want} VFs, the device supports at most {total}")]
    TooManyVfs {
        pf: PciAddress,
        want: u32,
        total: u32,
    },
    #[error("{0}")]
    Parse(ParseError),
}

// Not `#[from]`: the message already shows it, so it is not a source.
impl From<ParseError> for SysfsError {
    fn from(e: ParseError) -> Self {
        SysfsError::Parse(e)
    }
}

/// Reads a small sysfs attribute, without its trailing newline.
pub fn read_attr(path: &Path) -> Result<String, SysfsError> {
    let s = fs::read_to_string(path).map_err(IoError::at("reading", path))?;
    Ok(s.trim_end_matches('\n').to_owned())
}

/// Reads a decimal attribute.
pub fn read_u32(path: &Path) -> Result<u32, SysfsError> {
    let s = read_attr(path)?;
    s.trim().parse().map_err(|_| SysfsError::Content {
        path: path.to_owned(),
        content: s.clone(),
        reason: "expected a decimal number".into(),
    })
}

/// The last component of a symlink's target (`driver` → `igbvf`), or None
/// when the link does not exist.
pub fn link_name(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_link(path) {
        Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SysfsError::Io(IoError::new(
            "reading link",
            path.to_owned(),
            e,
        ))),
    }
}

/// The entries of directory `path`; none when it does not exist.
fn list_dir(path: &Path) -> Result<Vec<fs::DirEntry>, SysfsError> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::at("listing", path)(e).into()),
    };
    rd.map(|e| e.map_err(|e| IoError::at("listing", path)(e).into()))
        .collect()
}

/// Writes `data` to a sysfs attribute in one write(2), giving up after
/// `timeout` (a driver can block a write for a long time; the writing
/// thread is then left behind, and the error names the file).
pub fn write_bounded(path: &Path, data: &str, timeout: Duration) -> Result<(), SysfsError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_owned();
    let d = data.to_owned();
    std::thread::Builder::new()
        .name("sysfs-write".into())
        .spawn(move || {
            let r = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
                .and_then(|mut f| f.write_all(d.as_bytes()));
            // The receiver may be gone after a timeout: nothing to tell then.
            let _ = tx.send(r);
        })
        .map_err(IoError::at("starting a writer thread for", path))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => Ok(r.map_err(IoError::at("writing", path))?),
        Err(_) => Err(SysfsError::WriteTimeout {
            path: path.to_owned(),
            data: data.to_owned(),
            timeout,
        }),
    }
}

/// The root under which every sysfs path is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot {
    root: PathBuf,
    /// Bound on each write.
    pub write_timeout: Duration,
}

impl Default for SysfsRoot {
    fn default() -> Self {
        SysfsRoot::new("/sys")
    }
}

/// A VF as discovered under its PF.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VfInfo {
    pub pf: PciAddress,
    pub index: u32,
    pub addr: PciAddress,
    pub pci_id: PciId,
    /// Bound driver, if any.
    pub driver: Option<String>,
    pub netdev: Option<IfName>,
    pub iommu_group: Option<u32>,
}

/// An SR-IOV physical function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PfInfo {
    pub addr: PciAddress,
    pub netdevs: Vec<IfName>,
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub driver: Option<String>,
}

impl PfInfo {
    /// The PF's (first) network interface, the one VF settings go through.
    pub fn netdev(&self) -> Option<&IfName> {
        self.netdevs.first()
    }
}

impl SysfsRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SysfsRoot {
            root: root.into(),
            write_timeout: WRITE_TIMEOUT,
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `bus/pci/devices/<addr>`.
    pub fn device(&self, addr: PciAddress) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr.to_string())
    }

    /// `bus/pci/drivers/<name>`.
    pub fn driver_dir(&self, name: &str) -> PathBuf {
        self.root.join("bus/pci/drivers").join(name)
    }

    /// `kernel/iommu_groups`.
    pub fn iommu_groups(&self) -> PathBuf {
        self.root.join("kernel/iommu_groups")
    }

    pub fn write(&self, path: &Path, data: &str) -> Result<(), SysfsError> {
        write_bounded(path, data, self.write_timeout)
    }

    fn existing_device(&self, addr: PciAddress) -> Result<PathBuf, SysfsError> {
        let d = self.device(addr);
        if d.is_dir() {
            Ok(d)
        } else {
            Err(SysfsError::NoDevice(addr, d))
        }
    }

    /// The driver bound to a device, if any.
    pub fn driver(&self, addr: PciAddress) -> Result<Option<String>, SysfsError> {
        link_name(&self.existing_device(addr)?.join("driver"))
    }

    /// The device's IOMMU group number, if it has one.
    pub fn iommu_group(&self, addr: PciAddress) -> Result<Option<u32>, SysfsError> {
        let p = self.existing_device(addr)?.join("iommu_group");
        match link_name(&p)? {
            None => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| SysfsError::Content {
                path: p,
                content: n,
                reason: "IOMMU group link does not end in a number".into(),
            }),
        }
    }

    pub fn pci_id(&self, addr: PciAddress) -> Result<PciId, SysfsError> {
        let d = self.existing_device(addr)?;
        Ok(PciId::from_sysfs(
            &read_attr(&d.join("vendor"))?,
            &read_attr(&d.join("device"))?,
        )?)
    }

    /// The 24-bit PCI class code (`0x020000` for Ethernet).
    pub fn class(&self, addr: PciAddress) -> Result<u32, SysfsError> {
        let p = self.existing_device(addr)?.join("class");
        let s = read_attr(&p)?;
        s.strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(SysfsError::Content {
                path: p,
                content: s,
                reason: "expected 0xhhhhhh".into(),
            })
    }

    /// The network interfaces of a device (`net/`), sorted.
    pub fn netdevs(&self, addr: PciAddress) -> Result<Vec<IfName>, SysfsError> {
        let p = self.existing_device(addr)?.join("net");
        let mut out = Vec::new();
        for e in list_dir(&p)? {
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every SR-IOV capable PCI device (one with `sriov_totalvfs`), sorted.
    pub fn list_pfs(&self) -> Result<Vec<PciAddress>, SysfsError> {
        let p = self.root.join("bus/pci/devices");
        let mut out = Vec::new();
        for e in list_dir(&p)? {
            let Some(addr) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if e.path().join("sriov_totalvfs").exists() {
                out.push(addr);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Resolves a PF given by PCI address or network interface name.
    pub fn resolve_pf(&self, name: &str) -> Result<PciAddress, SysfsError> {
        let addr = match name.parse::<PciAddress>() {
            Ok(a) => Some(a),
            Err(_) => match name.parse::<IfName>() {
                Ok(ifn) => {
                    let link = self
                        .root
                        .join("class/net")
                        .join(ifn.as_str())
                        .join("device");
                    link_name(&link)?.and_then(|n| n.parse().ok())
                }
                Err(_) => None,
            },
        };
        match addr {
            Some(a) if self.device(a).join("sriov_totalvfs").exists() => Ok(a),
            Some(a) if self.device(a).is_dir() => Err(SysfsError::NotSriov(a)),
            _ => {
                let known: Vec<String> = self
                    .list_pfs()?
                    .into_iter()
                    .map(|a| {
                        let nets = self.netdevs(a).unwrap_or_default();
                        match nets.first() {
                            Some(n) => format!("{a} ({n})"),
                            None => a.to_string(),
                        }
                    })
                    .collect();
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                Err(SysfsError::UnknownPf(
                    name.chars().take(64).collect(),
                    known,
                ))
            }
        }
    }

    pub fn pf_info(&self, pf: PciAddress) -> Result<PfInfo, SysfsError> {
        let d = self.existing_device(pf)?;
        let total = d.join("sriov_totalvfs");
        if !total.exists() {
            return Err(SysfsError::NotSriov(pf));
        }
        Ok(PfInfo {
            addr: pf,
            netdevs: self.netdevs(pf)?,
            total_vfs: read_u32(&total)?,
            num_vfs: read_u32(&d.join("sriov_numvfs"))?,
            driver: self.driver(pf)?,
        })
    }

    /// The PCI address of VF `index` of `pf`, checked: the `virtfnN` link
    /// must name a PCI device whose `physfn` points back at `pf`.
    pub fn vf_addr(&self, pf: PciAddress, index: u32) -> Result<PciAddress, SysfsError> {
        let d = self.existing_device(pf)?;
        let link = d.join(format!("virtfn{index}"));
        let bad = |reason: String| SysfsError::BadVirtfn {
            pf,
            link: link.clone(),
            reason,
        };
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let num = read_u32(&d.join("sriov_numvfs")).unwrap_or(0);
                return Err(SysfsError::NoVf { pf, index, num });
            }
            Err(e) => return Err(IoError::at("reading link", &link)(e).into()),
        };
        let parent_ok = target.parent().is_some_and(|p| {
            p.components()
                .all(|c| matches!(c, std::path::Component::ParentDir))
                || p.ends_with("devices")
        });
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad(format!("target {} has no name", target.display())))?;
        let vf: PciAddress = name
            .parse()
            .map_err(|_| bad(format!("target {} is not a PCI address", target.display())))?;
        if !parent_ok || !self.device(vf).is_dir() {
            return Err(bad(format!(
                "target {} is not a PCI device",
                target.display()
            )));
        }
        let back = link_name(&self.device(vf).join("physfn"))?;
        if back.as_deref() != Some(pf.to_string().as_str()) {
            return Err(bad(format!("{vf}'s physfn is {back:?}, not {pf}")));
        }
        Ok(vf)
    }

    /// Everything about VF `index` of `pf`.
    pub fn vf_info(&self, pf: PciAddress, index: u32) -> Result<VfInfo, SysfsError> {
        let addr = self.vf_addr(pf, index)?;
        Ok(VfInfo {
            pf,
            index,
            addr,
            pci_id: self.pci_id(addr)?,
            driver: self.driver(addr)?,
            netdev: self.netdevs(addr)?.into_iter().next(),
            iommu_group: self.iommu_group(addr)?,
        })
    }

    /// Every VF of `pf`, in index order.
    pub fn vfs(&self, pf: PciAddress) -> Result<Vec<VfInfo>, SysfsError> {
        let num = self.pf_info(pf)?.num_vfs;
        (0..num).map(|i| self.vf_info(pf, i)).collect()
    }

    /// Sets the number of VFs of `pf`. The kernel refuses to change a
    /// non-zero count directly, so this writes 0 first. `autoprobe`, when
    /// given, is written to `sriov_drivers_autoprobe` before the VFs are
    /// created. Returns whether anything changed.
    pub fn set_num_vfs(
        &self,
        pf: PciAddress,
        n: u32,
        autoprobe: Option<bool>,
    ) -> Result<bool, SysfsError> {
        let info = self.pf_info(pf)?;
        if n > info.total_vfs {
            return Err(SysfsError::TooManyVfs {
                pf,
                want: n,
                total: info.total_vfs,
            });
        }
        let d = self.device(pf);
        let mut changed = false;
        if let Some(a) = autoprobe {
            let p = d.join("sriov_drivers_autoprobe");
            let want = if a { "1" } else { "0" };
            if read_attr(&p)? != want {
                self.write(&p, want)?;
                changed = true;
            }
        }
        if info.num_vfs == n {
            return Ok(changed);
        }
        let p = d.join("sriov_numvfs");
        if info.num_vfs != 0 {
            write_bounded(&p, "0", NUMVFS_TIMEOUT)?;
        }
        if n != 0 {
            write_bounded(&p, &n.to_string(), NUMVFS_TIMEOUT)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDevice, FakeSysfs};

    fn two_vf_tree() -> (tempfile::TempDir, FakeSysfs, PciAddress) {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 2, 7);
        (dir, fake, pf)
    }

    #[test]
    fn discovers_pf_and_vfs() {
        let (_d, fake, pf) = two_vf_tree();
        let root = fake.root();
        assert_eq!(root.list_pfs().unwrap(), vec![pf]);
        assert_eq!(root.resolve_pf("ens1f0").unwrap(), pf);
        assert_eq!(root.resolve_pf("0000:3b:00.0").unwrap(), pf);
        let info = root.pf_info(pf).unwrap();
        assert_eq!((info.total_vfs, info.num_vfs), (7, 2));
        assert_eq!(info.netdev().unwrap().as_str(), "ens1f0");
        let vfs = root.vfs(pf).unwrap();
        assert_eq!(vfs.len(), 2);
        assert_eq!(vfs[1].addr.to_string(), "0000:3b:10.1");
        assert_eq!(vfs[1].driver.as_deref(), Some("iavf"));
        assert_eq!(vfs[1].pci_id.to_string(), "8086:154c");
        assert!(vfs[0].netdev.is_some());
        assert!(vfs[0].iommu_group.is_some());
        assert_ne!(vfs[0].iommu_group, vfs[1].iommu_group);
    }

    #[test]
    fn unknown_pf_names_known_ones() {
        let (_d, fake, _pf) = two_vf_tree();
        let e = fake.root().resolve_pf("eth9").unwrap_err().to_string();
        assert!(
            e.contains("eth9") && e.contains("0000:3b:00.0 (ens1f0)"),
            "{e}"
        );
        let e = fake
            .root()
            .resolve_pf("../../proc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no network interface"), "{e}");
    }

    #[test]
    fn non_sriov_device_is_refused() {
        let (_d, fake, _pf) = two_vf_tree();
        let a = fake.add_device(FakeDevice::endpoint("0000:5e:00.0"));
        assert!(matches!(
            fake.root().resolve_pf("0000:5e:00.0"),
            Err(SysfsError::NotSriov(x)) if x == a
        ));
    }

    #[test]
    fn virtfn_pointing_outside_is_refused() {
        let (_d, fake, pf) = two_vf_tree();
        let other = fake.add_device(FakeDevice::endpoint("0000:5e:00.0"));
        // virtfn1 now points at an unrelated device whose physfn is not the PF.
        fake.relink(
            &format!("bus/pci/devices/{pf}/virtfn1"),
            &format!("../{other}"),
        );
        let e = fake.root().vf_info(pf, 1).unwrap_err();
        assert!(matches!(e, SysfsError::BadVirtfn { .. }), "{e}");
        fake.relink(
            &format!("bus/pci/devices/{pf}/virtfn1"),
            "../../../../proc/self",
        );
        assert!(matches!(
            fake.root().vf_info(pf, 1),
            Err(SysfsError::BadVirtfn { .. })
        ));
        assert!(matches!(
            fake.root().vf_info(pf, 5),
            Err(SysfsError::NoVf { num: 2, .. })
        ));
    }

    #[test]
    fn vf_without_netdev_and_on_vfio() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_pf_with("0000:3b:00.0", "ens1f0", 1, 4, Some("vfio-pci"));
        let vf = fake.root().vf_info(pf, 0).unwrap();
        assert_eq!(vf.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(vf.netdev, None);
    }

    #[test]
    fn set_num_vfs_changes_count_and_autoprobe() {
        let (_d, fake, pf) = two_vf_tree();
        let root = fake.root();
        assert!(!root.set_num_vfs(pf, 2, None).unwrap());
        assert!(root.set_num_vfs(pf, 4, Some(false)).unwrap());
        assert_eq!(
            read_attr(&root.device(pf).join("sriov_numvfs")).unwrap(),
            "4"
        );
        assert_eq!(
            read_attr(&root.device(pf).join("sriov_drivers_autoprobe")).unwrap(),
            "0"
        );
        assert!(matches!(
            root.set_num_vfs(pf, 8, None),
            Err(SysfsError::TooManyVfs { total: 7, .. })
        ));
    }

    #[test]
    fn hanging_write_times_out_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("driver_override");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = write_bounded(&fifo, "vfio-pci", Duration::from_millis(100)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("driver_override") && msg.contains("vfio-pci"),
            "{msg}"
        );
        // Unblock the leaked writer thread.
        let _ = fs::File::open(&fifo);
    }
}
