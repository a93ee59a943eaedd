//! Test support: fake sysfs trees built as data in a directory, and a fake
//! driver binder that moves the `driver` links of such a tree the way the
//! kernel would. Used by this crate's tests, by the other crates' tests and
//! by the benchmarks; production code never constructs these (they only act
//! on the directory they are given). Also the small pieces the tests of
//! several crates share: veth pairs standing in for VFs' netdevs, a sample
//! lease, the count of lease files, a JSON array's strings.

mod links;
mod netlink;
pub use links::{add_vf_veths, del_vf_veths};
pub use netlink::{Call, RecordingNetlink};

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::guestnet::L3Config;
use crate::kernel::netlink::{
    NetlinkError, PfView, VfNetlink, VfSetting, VfSettingKind, VfSettings,
};
use crate::kernel::sysfs::SysfsRoot;
use crate::kernel::vfio::{DriverBinder, VfioError};
use crate::pci::{IfName, PciAddress};
use crate::policy::config::Mode;
use crate::rtnl::RtnlError;
use crate::state::ledger::{now_secs, Lease, LeaseState, OwnerCheck};

/// A PCI device to put into a fake tree.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    pub addr: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
    /// IOMMU group; None: a new group of its own (unless the IOMMU is off).
    pub group: Option<u32>,
}

impl FakeDevice {
    pub fn endpoint(addr: &str) -> Self {
        FakeDevice {
            addr: addr.into(),
            vendor: 0x8086,
            device: 0x1572,
            class: 0x020000,
            driver: Some("i40e".into()),
            group: None,
        }
    }
    pub fn bridge(addr: &str) -> Self {
        FakeDevice {
            class: 0x060400,
            device: 0x2030,
            driver: Some("pcieport".into()),
            ..FakeDevice::endpoint(addr)
        }
    }
    pub fn in_group(mut self, g: u32) -> Self {
        self.group = Some(g);
        self
    }
}

/// A fake `/sys` under a directory.
pub struct FakeSysfs {
    dir: PathBuf,
    next_group: AtomicU32,
    iommu: bool,
}

fn write(path: &Path, content: &str) {
    if let Some(p) = path.parent() {
        let _ = fs::create_dir_all(p);
    }
    let _ = fs::write(path, content);
}

fn relink_at(link: &Path, target: &str) {
    let _ = fs::remove_file(link);
    if let Some(p) = link.parent() {
        let _ = fs::create_dir_all(p);
    }
    let _ = symlink(target, link);
}

fn ensure_driver(dir: &Path, name: &str) {
    let d = dir.join("bus/pci/drivers").join(name);
    if !d.exists() {
        write(&d.join("bind"), "");
        write(&d.join("unbind"), "");
    }
}

/// Points a device's `driver` link (in the tree under `dir`) at `driver`,
/// or removes it, as the kernel does on bind and unbind.
fn set_driver_link(dir: &Path, addr: PciAddress, driver: Option<&str>) {
    let link = dir.join(format!("bus/pci/devices/{addr}/driver"));
    match driver {
        Some(drv) => {
            ensure_driver(dir, drv);
            relink_at(&link, &format!("../../drivers/{drv}"));
        }
        None => {
            let _ = fs::remove_file(&link);
        }
    }
}

/// A lease of `vf` to `owner` in the states' usual shape: pool `fast`, a
/// vfio VF 0 of PF 0000:3b:00.0 (ens1f0), claiming, from iavf, IOMMU group 12.
pub fn sample_lease(vf: &str, owner: &str) -> Lease {
    Lease {
        owner: owner.into(),
        pool: "fast".into(),
        mode: Mode::Vfio,
        pf: "0000:3b:00.0".parse().unwrap_or_else(|e| panic!("{e}")),
        pf_netdev: Some("ens1f0".parse().unwrap_or_else(|e| panic!("{e}"))),
        vf_index: 0,
        vf: vf.parse().unwrap_or_else(|e| panic!("{vf}: {e}")),
        pci_id: "8086:154c".parse().unwrap_or_else(|e| panic!("{e}")),
        state: LeaseState::Claiming,
        original_driver: Some("iavf".into()),
        original_settings: None,
        settings: vec![],
        mac: None,
        iommu_group: Some(12),
        l3: L3Config::default(),
        owner_check: OwnerCheck::None,
        dan_file: None,
        netdev_move: None,
        pod: None,
        pods: Vec::new(),
        created: now_secs(),
        updated: now_secs(),
    }
}

/// How many lease files (`leases/*.json`) the state dir `state_dir` holds.
pub fn lease_files(state_dir: &Path) -> usize {
    fs::read_dir(state_dir.join("leases"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// The strings of a JSON array (a hook's `args`); panics on anything else.
pub fn json_strs(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|a| a.as_str().unwrap_or_else(|| panic!("not a string: {a}")))
        .collect()
}

/// The address of VF `i` of a PF: routing id PF + 0x80 + i, as many NICs do.
pub fn vf_address(pf: PciAddress, i: u32) -> PciAddress {
    let rid =
        (u32::from(pf.bus) << 8 | u32::from(pf.device) << 3 | u32::from(pf.function)) + 0x80 + i;
    PciAddress {
        domain: pf.domain + (rid >> 16),
        bus: (rid >> 8) as u8,
        device: ((rid >> 3) & 0x1f) as u8,
        function: (rid & 7) as u8,
    }
}

impl FakeSysfs {
    /// A tree with the IOMMU on.
    pub fn new(dir: &Path) -> Self {
        let f = FakeSysfs {
            dir: dir.to_owned(),
            next_group: AtomicU32::new(10),
            iommu: true,
        };
        for d in [
            "bus/pci/devices",
            "bus/pci/drivers",
            "class/net",
            "kernel/iommu_groups",
        ] {
            let _ = fs::create_dir_all(dir.join(d));
        }
        write(&dir.join("bus/pci/drivers_probe"), "");
        f
    }

    /// A tree whose kernel runs without an IOMMU: no groups at all.
    pub fn without_iommu(dir: &Path) -> Self {
        FakeSysfs {
            iommu: false,
            ..FakeSysfs::new(dir)
        }
    }

    pub fn root(&self) -> SysfsRoot {
        SysfsRoot::new(&self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_driver(&self, name: &str) {
        ensure_driver(&self.dir, name);
    }

    /// Puts `addr` into IOMMU group `g`.
    pub fn set_group(&self, addr: PciAddress, g: u32) {
        let gdir = self.dir.join(format!("kernel/iommu_groups/{g}/devices"));
        let _ = fs::create_dir_all(&gdir);
        relink_at(
            &gdir.join(addr.to_string()),
            &format!("../../../../bus/pci/devices/{addr}"),
        );
        relink_at(
            &self.dir.join(format!("bus/pci/devices/{addr}/iommu_group")),
            &format!("../../../../kernel/iommu_groups/{g}"),
        );
    }

    /// Adds a device; returns its address.
    pub fn add_device(&self, dev: FakeDevice) -> PciAddress {
        let addr: PciAddress = dev.addr.parse().unwrap_or(PciAddress {
            domain: 0,
            bus: 0,
            device: 0,
            function: 0,
        });
        let d = self.dir.join("bus/pci/devices").join(addr.to_string());
        let _ = fs::create_dir_all(&d);
        write(&d.join("vendor"), &format!("0x{:04x}\n", dev.vendor));
        write(&d.join("device"), &format!("0x{:04x}\n", dev.device));
        write(&d.join("class"), &format!("0x{:06x}\n", dev.class));
        write(&d.join("driver_override"), "(null)\n");
        if let Some(drv) = &dev.driver {
            self.set_driver(addr, Some(drv));
        }
        if self.iommu {
            let g = dev
                .group
                .unwrap_or_else(|| self.next_group.fetch_add(1, Ordering::Relaxed));
            self.set_group(addr, g);
        }
        addr
    }

    /// Points a device's `driver` link at `driver` (or removes it).
    pub fn set_driver(&self, addr: PciAddress, driver: Option<&str>) {
        set_driver_link(&self.dir, addr, driver);
    }

    /// Adds a network interface to a device.
    pub fn add_netdev(&self, addr: PciAddress, name: &str) {
        let _ = fs::create_dir_all(self.dir.join(format!("bus/pci/devices/{addr}/net/{name}")));
        relink_at(
            &self.dir.join(format!("class/net/{name}/device")),
            &format!("../../../bus/pci/devices/{addr}"),
        );
    }

    /// A PF with `num` VFs on iavf (netdevs `<pf>v<i>`), `total` possible.
    pub fn add_pf(&self, addr: &str, netdev: &str, num: u32, total: u32) -> PciAddress {
        self.add_pf_with(addr, netdev, num, total, Some("iavf"))
    }

    /// A PF whose VFs are bound to `vf_driver` (a VF on vfio-pci or on no
    /// driver has no netdev).
    pub fn add_pf_with(
        &self,
        addr: &str,
        netdev: &str,
        num: u32,
        total: u32,
        vf_driver: Option<&str>,
    ) -> PciAddress {
        let pf = self.add_device(FakeDevice {
            device: 0x1593,
            driver: Some("ice".into()),
            ..FakeDevice::endpoint(addr)
        });
        let d = self.dir.join(format!("bus/pci/devices/{pf}"));
        write(&d.join("sriov_totalvfs"), &format!("{total}\n"));
        write(&d.join("sriov_numvfs"), &format!("{num}\n"));
        write(&d.join("sriov_drivers_autoprobe"), "1\n");
        self.add_netdev(pf, netdev);
        if let Some(drv) = vf_driver {
            self.ensure_driver(drv);
        }
        for i in 0..num {
            let vf = vf_address(pf, i);
            self.add_device(FakeDevice {
                addr: vf.to_string(),
                device: 0x154c,
                driver: vf_driver.map(str::to_owned),
                ..FakeDevice::endpoint("")
            });
            relink_at(&d.join(format!("virtfn{i}")), &format!("../{vf}"));
            relink_at(
                &self.dir.join(format!("bus/pci/devices/{vf}/physfn")),
                &format!("../{pf}"),
            );
            if vf_driver.is_some_and(|v| v != "vfio-pci") {
                self.add_netdev(vf, &format!("{netdev}v{i}"));
            }
        }
        pf
    }

    /// Replaces a symlink (path relative to the tree) with one to `target`.
    pub fn relink(&self, rel: &str, target: &str) {
        relink_at(&self.dir.join(rel), target);
    }

    /// Creates `vfio/vfio` (10:196) and a `vfio/<group>` character node
    /// (major 240) for every IOMMU group of the tree under `dev_root`, as
    /// devtmpfs would once the groups are bound to vfio-pci. Needs root.
    pub fn make_vfio_nodes(&self, dev_root: &Path) -> std::io::Result<()> {
        self.make_vfio_nodes_as(dev_root, None)
    }

    /// Like [`FakeSysfs::make_vfio_nodes`], but every group node gets the
    /// given numbers: `Some((1, 3))`, the null device, opens like a free
    /// VFIO group, so a release sees it free without scanning `/proc` (as
    /// on a real host); 240:N nodes have no driver and are scanned for.
    pub fn make_vfio_nodes_as(
        &self,
        dev_root: &Path,
        numbers: Option<(u64, u64)>,
    ) -> std::io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let dir = dev_root.join("vfio");
        fs::create_dir_all(&dir)?;
        let mk = |name: &str, major: u64, minor: u64| -> std::io::Result<()> {
            let p = dir.join(name);
            if p.exists() {
                return Ok(());
            }
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )
            .map_err(std::io::Error::from)
        };
        mk("vfio", 10, 196)?;
        for g in fs::read_dir(self.dir.join("kernel/iommu_groups"))?.flatten() {
            let name = g.file_name().to_string_lossy().into_owned();
            if let Ok(n) = name.parse::<u64>() {
                let (major, minor) = numbers.unwrap_or((240, n));
                mk(&name, major, minor)?;
            }
        }
        Ok(())
    }

    /// Writes a file (path relative to the tree).
    pub fn write(&self, rel: &str, content: &str) {
        write(&self.dir.join(rel), content);
    }
}

/// A [`DriverBinder`] for fake trees: moves the `driver` link as the kernel
/// would, after an optional delay (standing in for a VF's function-level
/// reset), and fails on demand.
pub struct FakeBinder {
    root: PathBuf,
    pub delay: Duration,
    fail_driver: Mutex<Option<String>>,
    binds: AtomicU32,
}

impl FakeBinder {
    pub fn new(fake: &FakeSysfs) -> Self {
        FakeBinder {
            root: fake.dir.clone(),
            delay: Duration::ZERO,
            fail_driver: Mutex::new(None),
            binds: AtomicU32::new(0),
        }
    }
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Every bind to `driver` fails from now on (None: none fails).
    pub fn fail_binding_to(&self, driver: Option<&str>) {
        if let Ok(mut f) = self.fail_driver.lock() {
            *f = driver.map(str::to_owned);
        }
    }
    /// How many binds were done.
    pub fn binds(&self) -> u32 {
        self.binds.load(Ordering::Relaxed)
    }
}

impl DriverBinder for FakeBinder {
    fn bind(&self, addr: PciAddress, driver: Option<&str>) -> Result<(), VfioError> {
        std::thread::sleep(self.delay);
        let fail = self.fail_driver.lock().ok().and_then(|f| f.clone());
        if driver.is_some() && fail.as_deref() == driver {
            return Err(VfioError::BindFailed {
                addr,
                driver: driver.unwrap_or_default().to_owned(),
                now: None,
            });
        }
        self.binds.fetch_add(1, Ordering::Relaxed);
        set_driver_link(&self.root, addr, driver);
        Ok(())
    }
}

/// A [`VfNetlink`] fake whose state lives in files under a directory (one
/// JSON file per PF, updated under a lock), so that several processes see
/// the same VFs: for multi-process and kill tests. VFs start with a zero
/// MAC, no VLAN, spoof checking on, trust off, link state auto.
pub struct FileNetlink {
    dir: PathBuf,
    /// Settings this "driver" refuses, with the errno it answers.
    pub refuse: Vec<(VfSettingKind, i32)>,
}

type PfState = std::collections::BTreeMap<u32, VfSettings>;

impl FileNetlink {
    pub fn new(dir: &Path) -> Self {
        let _ = fs::create_dir_all(dir);
        FileNetlink {
            dir: dir.to_owned(),
            refuse: Vec::new(),
        }
    }

    /// Declares a PF with `num` VFs in their default state.
    pub fn add_pf(&self, pf: &str, num: u32) {
        let st: PfState = (0..num).map(|i| (i, VfSettings::default())).collect();
        let _ = fs::write(
            self.dir.join(format!("{pf}.json")),
            serde_json::to_vec(&st).unwrap_or_default(),
        );
    }

    fn with_state<T>(
        &self,
        pf: &IfName,
        f: impl FnOnce(&mut PfState) -> Result<T, NetlinkError>,
    ) -> Result<T, NetlinkError> {
        let path = self.dir.join(format!("{pf}.json"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{pf}.lock")))
            .map_err(|e| fake_err(pf, 0, &e.to_string()))?;
        let _l = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| fake_err(pf, 0, &e.to_string()))?;
        let mut st: PfState = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| fake_err(pf, 0, "no such PF"))?;
        let r = f(&mut st)?;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(&st).unwrap_or_default())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| fake_err(pf, 0, &e.to_string()))?;
        Ok(r)
    }

    /// The current settings of a VF.
    pub fn get(&self, pf: &str, vf: u32) -> Option<VfSettings> {
        let pf: IfName = pf.parse().ok()?;
        self.with_state(&pf, |st| Ok(st.get(&vf).cloned())).ok()?
    }
}

fn fake_err(pf: &IfName, vf: u32, reason: &str) -> NetlinkError {
    NetlinkError::Malformed {
        pf: pf.clone(),
        vf,
        reason: format!("file-backed fake: {reason}"),
    }
}

impl VfNetlink for FileNetlink {
    fn vf_settings(&self, pf: &IfName, vf: u32) -> Result<VfSettings, NetlinkError> {
        self.with_state(pf, |st| {
            st.get(&vf).cloned().ok_or(NetlinkError::NoSuchVf {
                pf: pf.clone(),
                vf,
                num_vfs: st.len() as u32,
            })
        })
    }

    fn pf_view(&self, pf: &IfName, vf: u32) -> Result<PfView, NetlinkError> {
        self.with_state(pf, |st| {
            let settings = st.get(&vf).cloned().ok_or(NetlinkError::NoSuchVf {
                pf: pf.clone(),
                vf,
                num_vfs: st.len() as u32,
            })?;
            let macs = st
                .values()
                .map(|v| v.mac)
                .filter(|m| !m.is_zero())
                .collect();
            Ok(PfView { vf: settings, macs })
        })
    }

    fn set_vf(&self, pf: &IfName, vf: u32, setting: VfSetting) -> Result<(), NetlinkError> {
        if let Some((_, errno)) = self.refuse.iter().find(|(k, _)| *k == setting.kind()) {
            return Err(NetlinkError::Set {
                pf: pf.clone(),
                vf,
                setting,
                hint: format!("the fake refuses {}", setting.kind()),
                cause: RtnlError::Kernel {
                    request: "RTM_SETLINK (fake)".into(),
                    errno: *errno,
                    message: None,
                },
            });
        }
        self.with_state(pf, |st| {
            let s = st
                .get_mut(&vf)
                .ok_or_else(|| fake_err(pf, vf, "no such VF"))?;
            s.apply(setting);
            Ok(())
        })
    }

    fn link_up(&self, _ifname: &IfName) -> Result<(), NetlinkError> {
        Ok(())
    }
}
