//! `kata-sriov setup` on fake sysfs trees, with the netlink fakes standing
//! in for the PF's driver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::HashSet;
use std::fs;
use std::path::Path;

use kata_sriov::admin::setup::{Setup, SetupReport};
use kata_sriov::kernel::netlink::{
    NetlinkError, PfView, VfNetlink, VfSetting, VfSettingKind, VfSettings,
};
use kata_sriov::kernel::vfio::VfioError;
use kata_sriov::pci::{IfName, MacAddr, PciAddress, VlanId};
use kata_sriov::policy::config::Config;
use kata_sriov::state::ledger::{Lease, LeaseState, Ledger};
use kata_sriov::testing::{sample_lease, FakeSysfs, FileNetlink};
use kata_sriov::testing::{Call, RecordingNetlink};

/// FileNetlink plus the PF's `flags` file, which link_up sets like the kernel.
struct Nl {
    inner: FileNetlink,
    sys: std::path::PathBuf,
}

impl VfNetlink for Nl {
    fn vf_settings(&self, pf: &IfName, vf: u32) -> Result<VfSettings, NetlinkError> {
        self.inner.vf_settings(pf, vf)
    }
    fn pf_view(&self, pf: &IfName, vf: u32) -> Result<PfView, NetlinkError> {
        self.inner.pf_view(pf, vf)
    }
    fn set_vf(&self, pf: &IfName, vf: u32, s: VfSetting) -> Result<(), NetlinkError> {
        self.inner.set_vf(pf, vf, s)
    }
    fn link_up(&self, ifname: &IfName) -> Result<(), NetlinkError> {
        fs::write(
            self.sys.join(format!("class/net/{ifname}/flags")),
            "0x1003\n",
        )
        .unwrap();
        Ok(())
    }
}

struct Lab {
    dir: tempfile::TempDir,
    fake: FakeSysfs,
    pf: PciAddress,
}

/// A PF ens1f0 with 4 VFs present in the tree but `sriov_numvfs` saying
/// `now` (so that writing 4 makes the tree consistent, as the kernel
/// would), autoprobe off and the link down.
fn lab(now: u32) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let fake = FakeSysfs::new(&sys);
    let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 4, 8);
    fake.write(
        &format!("bus/pci/devices/{pf}/sriov_numvfs"),
        &format!("{now}\n"),
    );
    fake.write(
        &format!("bus/pci/devices/{pf}/sriov_drivers_autoprobe"),
        "0\n",
    );
    fake.write("class/net/ens1f0/flags", "0x1002\n");
    fake.write("class/net/ens1f0/address", "3c:fd:fe:00:00:01\n");
    Lab { dir, fake, pf }
}

impl Lab {
    fn cfg(&self, pool: &str) -> Config {
        let text = format!(
            "state_dir = \"{}\"\nsysfs_root = \"{}\"\ndev_root = \"{}\"\n{pool}",
            self.dir.path().join("state").display(),
            self.fake.dir().display(),
            self.dir.path().join("dev").display(),
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }
    fn attr(&self, name: &str) -> String {
        fs::read_to_string(
            self.fake
                .dir()
                .join(format!("bus/pci/devices/{}/{name}", self.pf)),
        )
        .unwrap()
        .trim()
        .to_owned()
    }
    fn file_nl(&self) -> Nl {
        let inner = FileNetlink::new(&self.dir.path().join("nl"));
        inner.add_pf("ens1f0", 4);
        Nl {
            inner,
            sys: self.fake.dir().to_owned(),
        }
    }
}

const POOL: &str =
    "[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nnum_vfs = 4\nmode = \"netdev\"\n";

fn no_vfio() -> Result<(), VfioError> {
    panic!("vfio-pci must not be loaded for netdev pools")
}

fn run(cfg: &Config, nl: &dyn VfNetlink) -> (SetupReport, String) {
    let mut out = Vec::new();
    let r = Setup::new(cfg, nl, &no_vfio).run(&mut out).unwrap();
    (r, String::from_utf8(out).unwrap())
}

fn pf_if() -> IfName {
    "ens1f0".parse().unwrap()
}

#[test]
fn sets_count_autoprobe_link_and_clean_vf_state_then_changes_nothing() {
    let lab = lab(2);
    let cfg = lab.cfg(POOL);
    let nl = lab.file_nl();
    // A VF left dirty by someone: VLAN 5, trust on, spoof checking off, a MAC.
    let pf = pf_if();
    let kept_mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
    for s in [
        VfSetting::Vlan {
            vlan: VlanId::new(5).unwrap(),
            qos: Default::default(),
            proto: Default::default(),
        },
        VfSetting::Trust(true),
        VfSetting::SpoofChk(false),
        VfSetting::Mac(kept_mac),
    ] {
        nl.inner.set_vf(&pf, 1, s).unwrap();
    }

    let (r, out) = run(&cfg, &nl);
    assert!(r.failures.is_empty(), "{r:?}\n{out}");
    assert_eq!(lab.attr("sriov_numvfs"), "4");
    assert_eq!(lab.attr("sriov_drivers_autoprobe"), "1");
    assert!(
        out.contains("setting 4 VFs, was 2 (writing 0 first)"),
        "{out}"
    );
    assert!(out.contains("sriov_drivers_autoprobe 0 -> 1"), "{out}");
    assert!(out.contains("link set up"), "{out}");
    let mut macs = HashSet::new();
    for i in 0..4 {
        let s = nl.inner.get("ens1f0", i).unwrap();
        assert!(s.mac.is_assignable(), "VF {i}: {}", s.mac);
        assert_eq!(s.mac.0[0] & 0x03, 0x02, "locally administered unicast");
        assert!(macs.insert(s.mac), "MACs unique");
        assert_eq!(s.vlan, VlanId::NONE);
        assert_eq!((s.spoofchk, s.trust), (Some(true), Some(false)));
    }
    // A non-zero MAC is kept (documented policy: stable across runs).
    assert_eq!(nl.inner.get("ens1f0", 1).unwrap().mac, kept_mac);
    assert!(!macs.contains(&"3c:fd:fe:00:00:01".parse().unwrap()));
    // 1 autoprobe + 1 count + 1 link + 3 MACs + VF 1's vlan, spoofchk, trust.
    assert_eq!(r.changes, 9, "{out}");

    let before: Vec<VfSettings> = (0..4).map(|i| nl.inner.get("ens1f0", i).unwrap()).collect();
    let (r2, out2) = run(&cfg, &nl);
    assert_eq!(r2.changes, 0, "{out2}");
    assert!(r2.failures.is_empty(), "{out2}");
    assert!(out2.contains("nothing to change"), "{out2}");
    assert!(out2.contains("4 VFs, as configured"), "{out2}");
    let after: Vec<VfSettings> = (0..4).map(|i| nl.inner.get("ens1f0", i).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn second_run_makes_no_netlink_set_call() {
    let lab = lab(4);
    lab.fake.write("class/net/ens1f0/flags", "0x1003\n");
    let cfg = lab.cfg(POOL);
    let nl = RecordingNetlink::new();
    nl.add_pf(&pf_if(), 4);
    let (r, out) = run(&cfg, &nl);
    assert!(r.failures.is_empty(), "{out}");
    // Fresh VFs only need a MAC each: the rest is already the default.
    let sets: Vec<VfSetting> = (0..4).flat_map(|i| nl.set_calls(&pf_if(), i)).collect();
    assert_eq!(sets.len(), 4, "{sets:?}");
    assert!(sets.iter().all(|s| matches!(s, VfSetting::Mac(_))));
    nl.clear_calls();
    let (r2, out2) = run(&cfg, &nl);
    assert_eq!(r2.changes, 0, "{out2}");
    let calls = nl.calls();
    assert!(
        calls.iter().all(|c| matches!(c, Call::VfSettings { .. })),
        "{calls:?}"
    );
    // The link was already up: never touched.
    assert!(!nl.is_up(&pf_if()));
}

fn lease(lab: &Lab, index: u32) -> Lease {
    let vf = lab.fake.root().vf_addr(lab.pf, index).unwrap();
    Lease {
        mode: kata_sriov::policy::config::Mode::Netdev,
        pf: lab.pf,
        pf_netdev: Some(pf_if()),
        vf_index: index,
        vf,
        state: LeaseState::Claimed,
        mac: Some("02:aa:bb:cc:dd:ee".parse().unwrap()),
        iommu_group: None,
        ..sample_lease(&vf.to_string(), "default/ctr1")
    }
}

#[test]
fn refuses_to_change_the_count_while_a_vf_is_leased_and_leaves_that_vf_alone() {
    let lab = lab(4);
    let cfg = lab.cfg(&POOL.replace("num_vfs = 4", "num_vfs = 6"));
    let ledger = Ledger::open(&cfg.state_dir).unwrap();
    ledger.create(&lease(&lab, 0)).unwrap();
    let nl = lab.file_nl();
    nl.inner
        .set_vf(&pf_if(), 0, VfSetting::Trust(true))
        .unwrap();
    let (r, out) = run(&cfg, &nl);
    assert_eq!(lab.attr("sriov_numvfs"), "4", "count unchanged");
    assert_eq!(r.failures.len(), 1, "{out}");
    let f = &r.failures[0];
    assert!(
        f.contains("from 4 to 6") && f.contains("default/ctr1") && f.contains("0000:3b:10.0"),
        "{f}"
    );
    assert!(out.contains("FAILED"), "{out}");
    // The leased VF keeps its settings; the free ones are cleaned.
    let s0 = nl.inner.get("ens1f0", 0).unwrap();
    assert_eq!((s0.trust, s0.mac), (Some(true), MacAddr::ZERO));
    assert!(r
        .skipped
        .iter()
        .any(|s| s.contains("VF 0") && s.contains("leased")));
    for i in 1..4 {
        assert!(!nl.inner.get("ens1f0", i).unwrap().mac.is_zero());
    }
    // The lease's MAC is never generated for another VF.
    let macs: Vec<MacAddr> = (1..4)
        .map(|i| nl.inner.get("ens1f0", i).unwrap().mac)
        .collect();
    assert!(!macs.contains(&"02:aa:bb:cc:dd:ee".parse().unwrap()));
    // With the lease gone the count changes.
    ledger
        .remove(lab.fake.root().vf_addr(lab.pf, 0).unwrap())
        .unwrap();
    lab.fake
        .write(&format!("bus/pci/devices/{}/sriov_totalvfs", lab.pf), "8\n");
    let (r, out) = run(&cfg, &nl);
    assert_eq!(lab.attr("sriov_numvfs"), "6", "{out}");
    // The fake tree has no virtfn4/5: reported, not hidden.
    assert!(r.failures.iter().any(|f| f.contains("VF index 4")), "{r:?}");
}

#[test]
fn keep_policy_leaves_the_mac_and_unsupported_settings_are_skipped() {
    let lab = lab(4);
    let cfg = lab.cfg(&format!("{POOL}mac = \"keep\"\n"));
    let mut nl = lab.file_nl();
    nl.inner
        .set_vf(&pf_if(), 2, VfSetting::Trust(true))
        .unwrap();
    nl.inner.refuse = vec![(VfSettingKind::Trust, libc::EOPNOTSUPP)];
    let (r, out) = run(&cfg, &nl);
    assert!(r.failures.is_empty(), "{out}");
    for i in 0..4 {
        assert!(nl.inner.get("ens1f0", i).unwrap().mac.is_zero());
    }
    assert!(
        r.skipped
            .iter()
            .any(|s| s.contains("VF 2") && s.contains("trust off not supported")),
        "{r:?}"
    );
}

#[test]
fn loads_vfio_pci_for_vfio_pools_once_and_creates_the_dan_dir() {
    let lab = lab(4);
    lab.fake.write("class/net/ens1f0/flags", "0x1003\n");
    let dan = lab.dir.path().join("dans");
    let cfg = lab.cfg(&format!(
        "[dan]\ndir = \"{}\"\n[[pools]]\nname = \"fast\"\npfs = [\"0000:3b:00.0\"]\nguest = \"dan\"\n",
        dan.display()
    ));
    let nl = lab.file_nl();
    let calls = Cell::new(0);
    let drv = lab.fake.dir().join("bus/pci/drivers/vfio-pci");
    let load = || -> Result<(), VfioError> {
        calls.set(calls.get() + 1);
        fs::create_dir_all(&drv).unwrap();
        Ok(())
    };
    let mut out = Vec::new();
    let r = Setup::new(&cfg, &nl, &load).run(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(r.failures.is_empty(), "{out}");
    assert_eq!(calls.get(), 1);
    assert!(dan.is_dir());
    assert!(
        out.contains("vfio-pci: loading") && out.contains("num_vfs not set"),
        "{out}"
    );
    assert_eq!(lab.attr("sriov_numvfs"), "4");
    let mut out = Vec::new();
    let r = Setup::new(&cfg, &nl, &load).run(&mut out).unwrap();
    assert_eq!((calls.get(), r.changes), (1, 0), "{r:?}");

    // A failing modprobe is a failure of the run, not a panic.
    fs::remove_dir(&drv).unwrap();
    let broken = || -> Result<(), VfioError> { Err(VfioError::NoVfioPci("no module".into())) };
    let r = Setup::new(&cfg, &nl, &broken).run(&mut Vec::new()).unwrap();
    assert!(r.failures.iter().any(|f| f.contains("no module")), "{r:?}");
}

#[test]
fn unknown_pf_and_conflicting_counts_are_failures() {
    let lab = lab(4);
    let cfg = lab.cfg(
        "[[pools]]\nname = \"a\"\npfs = [\"ens1f0\"]\nnum_vfs = 2\nmode = \"netdev\"\n\
         [[pools]]\nname = \"b\"\npfs = [\"0000:3b:00.0\"]\nnum_vfs = 3\nmode = \"netdev\"\n\
         [[pools]]\nname = \"c\"\npfs = [\"eth9\"]\nmode = \"netdev\"\n",
    );
    let nl = lab.file_nl();
    let (r, out) = run(&cfg, &nl);
    assert_eq!(lab.attr("sriov_numvfs"), "4", "{out}");
    assert!(r.failures.iter().any(|f| f.contains("eth9")), "{r:?}");
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("different num_vfs (2 and 3)")),
        "{r:?}"
    );
}
