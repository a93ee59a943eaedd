//! Driver binding with a per-device `driver_override` (never vfio-pci's
//! `new_id`, which would grab every device with the same IDs), and the VFIO
//! group device nodes.
//!
//! Kernel files touched, under the sysfs root: `bus/pci/devices/<addr>/
//! {driver,driver_override}`, `bus/pci/drivers/<drv>/unbind`,
//! `bus/pci/drivers_probe`, `bus/pci/drivers/vfio-pci` (presence). Under the
//! dev root: `vfio/<group>` and `vfio/vfio`. Under `/proc`: `<pid>/fd/*`
//! links, to see who holds a group open. Loads the vfio-pci module with
//! `modprobe` when its driver directory is missing.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kernel::sysfs::{SysfsError, SysfsRoot};
use crate::pci::PciAddress;

pub const VFIO_PCI: &str = "vfio-pci";

/// How long to wait for a driver link or a device node to appear.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error("{addr}: asked to bind to {driver}, but the device is on {now:?} (see dmesg)")]
    BindFailed {
        addr: PciAddress,
        driver: String,
        now: Option<String>,
    },
    #[error("the vfio-pci driver is not available and `modprobe vfio-pci` failed: {0}; install the kernel's vfio modules")]
    NoVfioPci(String),
    #[error("{path} did not appear within {timeout:?} after binding group {group} to vfio-pci (is devtmpfs/udev running?)")]
    NoDeviceNode {
        path: PathBuf,
        group: u32,
        timeout: Duration,
    },
    #[error("{path}: {reason}")]
    BadDeviceNode { path: PathBuf, reason: String },
}

/// Moves a PCI device between drivers. One real implementation over sysfs;
/// tests use [`crate::testing::FakeBinder`].
pub trait DriverBinder: Send + Sync {
    /// Binds `addr` to `driver`, or leaves it on no driver (`None`), and
    /// verifies that the kernel did it.
    fn bind(&self, addr: PciAddress, driver: Option<&str>) -> Result<(), VfioError>;
}

/// Sleeps between polls of something the kernel finishes soon: 1 ms, then
/// doubling up to 16 ms, so a wait that ends early costs little more than
/// the kernel's own time (a fixed 20 ms poll added up to 20 ms per bind).
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn sleep(&mut self) {
        std::thread::sleep(
            Duration::from_millis(1u64 << self.0.min(4)).min(Duration::from_millis(20)),
        );
        self.0 += 1;
    }
}

/// Binding through sysfs `driver_override`, `unbind` and `drivers_probe`.
pub struct SysfsBinder {
    pub root: SysfsRoot,
    pub settle: Duration,
}

impl SysfsBinder {
    pub fn new(root: SysfsRoot) -> Self {
        SysfsBinder {
            root,
            settle: SETTLE_TIMEOUT,
        }
    }

    /// Loads vfio-pci (`modprobe`) unless its driver directory exists,
    /// and waits (bounded) for the directory.
    pub fn ensure_vfio_pci(&self) -> Result<(), VfioError> {
        if self.root.driver_dir(VFIO_PCI).is_dir() {
            return Ok(());
        }
        let out = Command::new("modprobe")
            .arg(VFIO_PCI)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .map_err(|e| VfioError::NoVfioPci(e.to_string()))?;
        if !out.status.success() {
            return Err(VfioError::NoVfioPci(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        let deadline = Instant::now() + self.settle;
        while !self.root.driver_dir(VFIO_PCI).is_dir() {
            if Instant::now() > deadline {
                return Err(VfioError::NoVfioPci(
                    "modprobe succeeded but bus/pci/drivers/vfio-pci did not appear".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn wait_driver(&self, addr: PciAddress, driver: Option<&str>) -> Result<(), VfioError> {
        let deadline = Instant::now() + self.settle;
        let mut pause = Backoff::default();
        loop {
            let now = self.root.driver(addr)?;
            if now.as_deref() == driver {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(VfioError::BindFailed {
                    addr,
                    driver: driver.unwrap_or("no driver").to_owned(),
                    now,
                });
            }
            pause.sleep();
        }
    }
}

impl DriverBinder for SysfsBinder {
    fn bind(&self, addr: PciAddress, driver: Option<&str>) -> Result<(), VfioError> {
        let dev = self.root.device(addr);
        let current = self.root.driver(addr)?;
        if driver == Some(VFIO_PCI) {
            self.ensure_vfio_pci()?;
        }
        let over = dev.join("driver_override");
        if current.as_deref() != driver {
            // The override makes drivers_probe pick exactly this driver for
            // exactly this device; "\n" clears it.
            self.root.write(&over, driver.unwrap_or("\n"))?;
            if let Some(cur) = &current {
                self.root
                    .write(&self.root.driver_dir(cur).join("unbind"), &addr.to_string())?;
            }
            if driver.is_some() {
                self.root.write(
                    &self.root.path().join("bus/pci/drivers_probe"),
                    &addr.to_string(),
                )?;
            }
            self.wait_driver(addr, driver)?;
        }
        // vfio-pci keeps its override so that a re-probe leaves the device
        // there; a host driver does not need one.
        let want_override = driver == Some(VFIO_PCI);
        let has_override = !matches!(
            crate::kernel::sysfs::read_attr(&over).as_deref(),
            Ok("(null)") | Ok("")
        );
        if !want_override && has_override {
            self.root.write(&over, "\n")?;
        }
        Ok(())
    }
}

/// A character device node: its path and numbers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevNode {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

/// Reads a character device node's numbers.
pub fn dev_node(path: &Path) -> Result<DevNode, VfioError> {
    let md = fs::symlink_metadata(path).map_err(|e| VfioError::BadDeviceNode {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !md.file_type().is_char_device() {
        return Err(VfioError::BadDeviceNode {
            path: path.to_owned(),
            reason: "not a character device".into(),
        });
    }
    let rdev = md.rdev();
    Ok(DevNode {
        path: path.to_owned(),
        major: libc::major(rdev),
        minor: libc::minor(rdev),
    })
}

/// `<dev_root>/vfio/<group>`, waited for (bounded) since devtmpfs or udev
/// creates it just after the bind.
pub fn group_node(dev_root: &Path, group: u32, timeout: Duration) -> Result<DevNode, VfioError> {
    let path = dev_root.join("vfio").join(group.to_string());
    let deadline = Instant::now() + timeout;
    let mut pause = Backoff::default();
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(VfioError::NoDeviceNode {
                path,
                group,
                timeout,
            });
        }
        pause.sleep();
    }
    dev_node(&path)
}

/// `<dev_root>/vfio/vfio`, the VFIO container node.
pub fn container_node(dev_root: &Path) -> Result<DevNode, VfioError> {
    dev_node(&dev_root.join("vfio/vfio"))
}

/// Whether a VFIO group is held open, for a release waiting on the
/// hypervisor: None when free, else the holders' pids (empty when the node
/// is busy but no holder could be named). A group node opens only once at a
/// time, so an open that succeeds proves it free and an open that answers
/// EBUSY proves it held, without scanning every process's fds; only when
/// the open fails otherwise (a node with no driver behind it) is `/proc`
/// scanned. The probe open is closed at once.
pub fn group_busy(proc_root: &Path, node: &Path) -> Option<Vec<u32>> {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(node);
    match probe {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Some(holders(proc_root, node)),
        Err(_) => {
            let pids = holders(proc_root, node);
            (!pids.is_empty()).then_some(pids)
        }
    }
}

/// The pids under `proc_root` that hold `node` open.
pub fn holders(proc_root: &Path, node: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir(proc_root) else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == node))
        {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeSysfs;

    #[test]
    fn binder_writes_override_unbind_probe() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 1, 4);
        let vf = fake.root().vf_addr(pf, 0).unwrap();
        fake.write("bus/pci/drivers/vfio-pci/bind", "");
        let mut b = SysfsBinder::new(fake.root());
        b.settle = Duration::from_millis(100);
        // The fake kernel does not move the driver link: the bind is
        // reported as failed, after the right files were written.
        let e = b.bind(vf, Some(VFIO_PCI)).unwrap_err();
        assert!(
            matches!(&e, VfioError::BindFailed { now: Some(d), .. } if d == "iavf"),
            "{e}"
        );
        let dev = fake.root().device(vf);
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("bus/pci/drivers/iavf/unbind")).unwrap(),
            vf.to_string()
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("bus/pci/drivers_probe")).unwrap(),
            vf.to_string()
        );
    }

    #[test]
    fn binder_is_a_no_op_when_already_bound() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_pf_with("0000:3b:00.0", "ens1f0", 1, 4, Some(VFIO_PCI));
        let vf = fake.root().vf_addr(pf, 0).unwrap();
        SysfsBinder::new(fake.root())
            .bind(vf, Some(VFIO_PCI))
            .unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("bus/pci/drivers_probe")).unwrap(),
            ""
        );
    }

    #[test]
    fn device_nodes_and_holders() {
        let dir = tempfile::tempdir().unwrap();
        let e = group_node(dir.path(), 7, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("vfio/7"), "{e}");
        fs::create_dir_all(dir.path().join("vfio")).unwrap();
        fs::write(dir.path().join("vfio/7"), "").unwrap();
        assert!(matches!(
            group_node(dir.path(), 7, Duration::ZERO),
            Err(VfioError::BadDeviceNode { .. })
        ));
        // A real character device: /dev/null is 1:3.
        let n = dev_node(Path::new("/dev/null")).unwrap();
        assert_eq!((n.major, n.minor), (1, 3));
        // This process holds a file open: holders() finds it.
        let f = dir.path().join("held");
        let _h = fs::File::create(&f).unwrap();
        let me = std::process::id();
        assert!(holders(Path::new("/proc"), &f).contains(&me));
        assert!(!holders(Path::new("/proc"), &dir.path().join("nothing")).contains(&me));
        // A node that opens is free; one that does not is scanned for.
        assert_eq!(group_busy(Path::new("/proc"), Path::new("/dev/null")), None);
        assert_eq!(group_busy(Path::new("/proc"), &f), None);
        // A node that cannot be opened read-write (here a directory, EISDIR)
        // falls back to the scan, which finds this process holding it.
        let held = dir.path().join("held-dir");
        fs::create_dir(&held).unwrap();
        let _d = fs::File::open(&held).unwrap();
        assert_eq!(group_busy(Path::new("/proc"), &held), Some(vec![me]));
        assert!(group_busy(Path::new("/proc"), &dir.path().join("nothing")).is_none());
    }
}
