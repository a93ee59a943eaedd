//! Claim / release / gc on fake sysfs trees, with the file-backed netlink
//! fake and the fake binder (which move the tree's driver links as the
//! kernel would).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kata_sriov::engine::claim::{ClaimError, Engine};
use kata_sriov::kernel::netlink::{VfNetlink, VfSettingKind, VfSettings};
use kata_sriov::pci::PciAddress;
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::{parse_request, NetworkRequest};
use kata_sriov::state::ledger::{LeaseState, OwnerCheck};
use kata_sriov::testing::{FakeBinder, FakeSysfs, FileNetlink};

struct Lab {
    dir: tempfile::TempDir,
    fake: FakeSysfs,
    cfg: Config,
    nl: FileNetlink,
    binder: FakeBinder,
    pf: PciAddress,
}

const POOL: &str = r#"
[[pools]]
name = "fast"
pfs = ["ens1f0"]
vlan = 100
qos = 2
spoofchk = false
trust = true
"#;

fn lab_with(vfs: u32, pool: &str) -> Lab {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    let fake = FakeSysfs::new(&sys);
    let pf = fake.add_pf("0000:3b:00.0", "ens1f0", vfs, vfs.max(8));
    fake.make_vfio_nodes(&dev).unwrap();
    let text = format!(
        "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n{pool}",
        dir.path().join("state"),
        sys,
        dev
    );
    let cfg = Config::parse(&text, Path::new("test.toml")).unwrap();
    let nl = FileNetlink::new(&dir.path().join("nl"));
    nl.add_pf("ens1f0", vfs);
    let binder = FakeBinder::new(&fake);
    Lab {
        dir,
        fake,
        cfg,
        nl,
        binder,
        pf,
    }
}

impl Lab {
    fn engine(&self) -> Engine<'_> {
        let mut e = Engine::new(&self.cfg, &self.nl, &self.binder).unwrap();
        e.node_wait = Duration::ZERO;
        e.release_wait = Duration::from_millis(200);
        e
    }
    fn vf(&self, i: u32) -> PciAddress {
        self.fake.root().vf_addr(self.pf, i).unwrap()
    }
    fn driver(&self, i: u32) -> Option<String> {
        self.fake.root().driver(self.vf(i)).unwrap()
    }
}

fn req(s: &str) -> Vec<NetworkRequest> {
    parse_request(s).unwrap()
}

/// `owner` claims one VF of pool "fast" asking for `mac`.
fn claim_with_mac(
    e: &Engine<'_>,
    owner: &str,
    mac: &str,
) -> Result<Vec<kata_sriov::engine::claim::ClaimedVf>, ClaimError> {
    let r = req(&format!(r#"[{{"pool":"fast","mac":"{mac}"}}]"#));
    e.claim(owner, &r, OwnerCheck::None)
}

#[test]
fn claim_configures_binds_and_release_restores() {
    let lab = lab_with(2, POOL);
    let e = lab.engine();
    let got = e
        .claim("default/c1", &req("fast"), OwnerCheck::None)
        .unwrap();
    assert_eq!(got.len(), 1);
    let c = &got[0];
    assert_eq!(c.vf, lab.vf(0));
    // What the "kernel" now has: the VF on vfio-pci, the settings on the PF.
    assert_eq!(lab.driver(0).as_deref(), Some("vfio-pci"));
    let s = lab.nl.get("ens1f0", 0).unwrap();
    assert_eq!(Some(s.mac), c.mac);
    assert!(s.mac.is_locally_administered() && s.mac.is_assignable());
    assert_eq!((s.vlan.get(), s.qos.get()), (100, 2));
    assert_eq!((s.spoofchk, s.trust), (Some(false), Some(true)));
    let node = c.dev_node.as_ref().unwrap();
    assert_eq!(node.major, 240);
    assert_eq!(Some(node.minor), c.iommu_group);
    let lease = e.ledger.read(c.vf).unwrap().unwrap();
    assert_eq!(lease.state, LeaseState::Claimed);
    assert_eq!(lease.original_driver.as_deref(), Some("iavf"));
    // The other VF is untouched.
    assert_eq!(lab.driver(1).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 1).unwrap(), VfSettings::default());

    assert_eq!(e.release("default/c1").unwrap(), vec![c.vf]);
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    assert!(e.ledger.read(c.vf).unwrap().is_none());
    // Idempotent.
    assert!(e.release("default/c1").unwrap().is_empty());
    assert!(e.release("nobody").unwrap().is_empty());
}

#[test]
fn second_claim_by_same_owner_returns_same_vfs() {
    let lab = lab_with(4, POOL);
    let e = lab.engine();
    let a = e
        .claim("ns/x", &req("fast,fast"), OwnerCheck::None)
        .unwrap();
    let b = e
        .claim("ns/x", &req("fast,fast"), OwnerCheck::None)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(e.ledger.leased().unwrap().len(), 2);
    assert!(matches!(
        e.claim("ns/x", &req("fast"), OwnerCheck::None),
        Err(ClaimError::OwnerMismatch { .. })
    ));
}

#[test]
fn exhausted_pool_changes_nothing() {
    let lab = lab_with(2, POOL);
    let e = lab.engine();
    e.claim("a", &req("fast"), OwnerCheck::None).unwrap();
    let err = e
        .claim("b", &req("fast,fast"), OwnerCheck::None)
        .unwrap_err();
    assert!(
        matches!(err, ClaimError::Exhausted { wanted: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("exhausted"), "{err}");
    assert_eq!(e.ledger.leased().unwrap().len(), 1);
    assert_eq!(lab.driver(1).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 1).unwrap(), VfSettings::default());
}

#[test]
fn unknown_pool_and_mac_policy_are_refused_before_anything() {
    let lab = lab_with(2, POOL);
    let e = lab.engine();
    let err = e.claim("a", &req("slow"), OwnerCheck::None).unwrap_err();
    assert!(err.to_string().contains("\"slow\"") && err.to_string().contains("fast"));
    let err = claim_with_mac(&e, "a", "02:00:00:00:00:09").unwrap_err();
    assert!(matches!(err, ClaimError::MacNotAllowed { .. }), "{err}");
    assert!(e.ledger.leased().unwrap().is_empty());
}

#[test]
fn refused_setting_rolls_back_the_earlier_ones() {
    let mut lab = lab_with(
        2,
        &format!("{POOL}link_state = \"enable\"\nmax_tx_rate = 100\n"),
    );
    // Like the lab's igb: link state answers EOPNOTSUPP.
    lab.nl
        .refuse
        .push((VfSettingKind::LinkState, libc::EOPNOTSUPP));
    let e = lab.engine();
    let err = e.claim("a", &req("fast"), OwnerCheck::None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rolled back"), "{msg}");
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert!(e.ledger.leased().unwrap().is_empty());
}

#[test]
fn failed_bind_rolls_back() {
    let lab = lab_with(1, POOL);
    lab.binder.fail_binding_to(Some("vfio-pci"));
    let e = lab.engine();
    assert!(e.claim("a", &req("fast"), OwnerCheck::None).is_err());
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert!(e.ledger.leased().unwrap().is_empty());
}

#[test]
fn corrupt_lease_quarantines_its_vf() {
    let lab = lab_with(2, POOL);
    let e = lab.engine();
    for (i, content) in [(0, ""), (1, "{\"owner\":")] {
        std::fs::write(e.ledger.lease_path(lab.vf(i)), content).unwrap();
    }
    let err = e.claim("a", &req("fast"), OwnerCheck::None).unwrap_err();
    assert!(matches!(err, ClaimError::Exhausted { .. }), "{err}");
    let report = e.gc().unwrap();
    assert_eq!(report.quarantined.len(), 2);
    assert!(report.released.is_empty());
    // Still there after gc.
    assert_eq!(e.ledger.leased().unwrap().len(), 2);
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
}

#[test]
fn gc_releases_gone_owners_and_keeps_live_ones() {
    let lab = lab_with(3, POOL);
    let e = lab.engine();
    let bundle = lab.dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    e.claim("gone", &req("fast"), OwnerCheck::Bundle(bundle.clone()))
        .unwrap();
    e.claim("unknown", &req("fast"), OwnerCheck::None).unwrap();
    let live = e
        .claim(
            "live",
            &req("fast"),
            kata_sriov::state::ledger::this_process(),
        )
        .unwrap();
    assert_eq!(e.gc().unwrap().released.len(), 0);
    std::fs::remove_dir(&bundle).unwrap();
    let r = e.gc().unwrap();
    assert_eq!(r.released.len(), 1);
    assert_eq!(r.released[0].1, "gone");
    assert_eq!(r.kept, 2);
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    assert!(e.ledger.read(live[0].vf).unwrap().is_some());
}

#[test]
fn iommu_shared_group_is_skipped() {
    let lab = lab_with(2, POOL);
    // VF 0 shares its group with an unrelated endpoint.
    let g = lab.fake.root().iommu_group(lab.vf(0)).unwrap().unwrap();
    lab.fake
        .add_device(kata_sriov::testing::FakeDevice::endpoint("0000:5e:00.0").in_group(g));
    let e = lab.engine();
    let got = e.claim("a", &req("fast"), OwnerCheck::None).unwrap();
    assert_eq!(got[0].vf, lab.vf(1));
    let err = e.claim("b", &req("fast"), OwnerCheck::None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("0000:5e:00.0"), "{msg}");
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
}

#[test]
fn release_racing_release_one_does_the_work() {
    let lab = Arc::new(lab_with(2, POOL));
    lab.engine()
        .claim("pod", &req("fast,fast"), OwnerCheck::None)
        .unwrap();
    let done: Vec<Vec<PciAddress>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let lab = Arc::clone(&lab);
                s.spawn(move || {
                    let e = lab.engine();
                    if i == 2 {
                        let r = e.gc();
                        assert!(r.is_ok());
                        Vec::new()
                    } else {
                        e.release("pod").unwrap()
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<PciAddress> = done.into_iter().flatten().collect();
    let uniq: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), uniq.len(), "a VF was released twice: {all:?}");
    let e = lab.engine();
    assert!(e.ledger.leased().unwrap().is_empty());
    for i in 0..2 {
        assert_eq!(lab.driver(i).as_deref(), Some("iavf"));
        assert_eq!(lab.nl.get("ens1f0", i).unwrap(), VfSettings::default());
    }
}

#[test]
fn pool_without_settings_makes_no_netlink_call_and_prebound_vfs_stay() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    let fake = FakeSysfs::new(&sys);
    let pf = fake.add_pf_with("0000:3b:00.0", "ens1f0", 2, 2, Some("vfio-pci"));
    fake.make_vfio_nodes(&dev).unwrap();
    let text = format!(
        "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n[[pools]]\nname = \"p\"\npfs = [\"ens1f0\"]\nmac = \"keep\"\n",
        dir.path().join("state"),
        sys,
        dev
    );
    let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
    // A netlink fake with no PF at all: any call would fail.
    let nl = FileNetlink::new(&dir.path().join("nl"));
    let binder = FakeBinder::new(&fake);
    let e = Engine::new(&cfg, &nl, &binder).unwrap();
    let got = e.claim("o", &req("p"), OwnerCheck::None).unwrap();
    assert_eq!(got[0].mac, None);
    assert!(nl.vf_settings(&"ens1f0".parse().unwrap(), 0).is_err());
    e.release("o").unwrap();
    assert_eq!(binder.binds(), 0);
    assert_eq!(
        fake.root()
            .driver(fake.root().vf_addr(pf, 0).unwrap())
            .unwrap()
            .as_deref(),
        Some("vfio-pci")
    );
}

#[test]
fn a_setting_the_driver_silently_ignores_is_caught_by_the_read_back() {
    let lab = lab_with(1, POOL);
    let nl = kata_sriov::testing::RecordingNetlink::new();
    let pf: kata_sriov::pci::IfName = "ens1f0".parse().unwrap();
    nl.add_pf(&pf, 1);
    nl.ignore_setting(VfSettingKind::Trust);
    let mut e = Engine::new(&lab.cfg, &nl, &lab.binder).unwrap();
    e.node_wait = Duration::ZERO;
    let err = e.claim("a", &req("fast"), OwnerCheck::None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("reads back") && msg.contains("rolled back"),
        "{msg}"
    );
    assert_eq!(nl.state(&pf, 0).unwrap(), VfSettings::default());
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert!(e.ledger.leased().unwrap().is_empty());
}

#[test]
fn netdev_vf_is_reset_after_its_mac_is_set_on_the_pf() {
    // igbvf takes an admin MAC only at reset and refuses other changes:
    // the claim (and the release, restoring the MAC) rebinds the VF.
    let lab = lab_with(
        1,
        "[[pools]]\nname = \"nd\"\npfs = [\"ens1f0\"]\nmode = \"netdev\"\nvlan = 100\n",
    );
    let e = lab.engine();
    let got = e.claim("c", &req("nd"), OwnerCheck::None).unwrap();
    assert_eq!(lab.binder.binds(), 2, "unbind + bind to reset the VF");
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert!(got[0].netdev.is_some());
    e.release("c").unwrap();
    assert_eq!(lab.binder.binds(), 4);
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    // A pool that keeps the MAC needs no reset.
    let keep = lab_with(
        1,
        "[[pools]]\nname = \"nd\"\npfs = [\"ens1f0\"]\nmode = \"netdev\"\nmac = \"keep\"\nvlan = 100\n",
    );
    let e = keep.engine();
    e.claim("c", &req("nd"), OwnerCheck::None).unwrap();
    e.release("c").unwrap();
    assert_eq!(keep.binder.binds(), 0);
}

/// A request for `pool` pinned to exactly `vf` (what the Kubernetes agent
/// sends for the VF the scheduler allocated).
fn pinned(pool: &str, vf: PciAddress) -> Vec<NetworkRequest> {
    let mut r = NetworkRequest::plain(pool.parse().unwrap());
    r.vf = Some(vf);
    vec![r]
}

#[test]
fn pinned_claim_takes_exactly_that_vf_and_is_idempotent() {
    let lab = lab_with(4, POOL);
    let e = lab.engine();
    let got = e
        .claim("uid-1", &pinned("fast", lab.vf(2)), OwnerCheck::None)
        .unwrap();
    assert_eq!(got[0].vf, lab.vf(2));
    assert_eq!(got[0].vf_index, 2);
    assert_eq!(lab.driver(2).as_deref(), Some("vfio-pci"));
    assert_eq!((lab.nl.get("ens1f0", 2).unwrap().vlan.get()), 100);
    // The free VFs before it are untouched.
    assert_eq!(lab.driver(0).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    // Again: the same VF, nothing new.
    let again = e
        .claim("uid-1", &pinned("fast", lab.vf(2)), OwnerCheck::None)
        .unwrap();
    assert_eq!(again, got);
    assert_eq!(e.ledger.leased().unwrap().len(), 1);
    // The same owner pinning another VF is a mismatch, not a second claim.
    let err = e
        .claim("uid-1", &pinned("fast", lab.vf(3)), OwnerCheck::None)
        .unwrap_err();
    assert!(matches!(err, ClaimError::OwnerMismatch { .. }), "{err}");
    assert_eq!(lab.driver(3).as_deref(), Some("iavf"));
    e.release("uid-1").unwrap();
    assert_eq!(lab.driver(2).as_deref(), Some("iavf"));
    assert_eq!(lab.nl.get("ens1f0", 2).unwrap(), VfSettings::default());
}

/// Every refusal of a pinned VF names the VF and why, and changes nothing.
#[test]
fn pinned_vf_that_cannot_be_claimed_is_refused_naming_it() {
    let lab = lab_with(4, POOL);
    // VF 3 shares its IOMMU group with an unrelated endpoint.
    let g = lab.fake.root().iommu_group(lab.vf(3)).unwrap().unwrap();
    lab.fake
        .add_device(kata_sriov::testing::FakeDevice::endpoint("0000:5e:00.0").in_group(g));
    // A second PF, in a pool of its own.
    lab.fake.add_pf("0000:af:00.0", "ens2f0", 2, 8);
    lab.nl.add_pf("ens2f0", 2);
    lab.fake.make_vfio_nodes(&lab.cfg.dev_root).unwrap();
    let text = format!(
        "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n{POOL}\n[[pools]]\nname = \"slow\"\npfs = [\"ens2f0\"]\n",
        lab.cfg.state_dir, lab.cfg.sysfs_root, lab.cfg.dev_root
    );
    let cfg = Config::parse(&text, Path::new("test.toml")).unwrap();
    let mut e = Engine::new(&cfg, &lab.nl, &lab.binder).unwrap();
    e.node_wait = Duration::ZERO;
    e.claim("holder", &pinned("fast", lab.vf(1)), OwnerCheck::None)
        .unwrap();
    let other_pf = lab.fake.root().resolve_pf("ens2f0").unwrap();
    let other_vf = lab.fake.root().vf_addr(other_pf, 0).unwrap();
    let gone = kata_sriov::testing::vf_address(lab.pf, 7);

    let cases: Vec<(Vec<NetworkRequest>, PciAddress, &str)> = vec![
        (
            pinned("fast", lab.vf(1)),
            lab.vf(1),
            "it is leased to \"holder\"",
        ),
        (
            pinned("fast", gone),
            gone,
            "not a VF of the pool's PFs (ens1f0)",
        ),
        (
            pinned("fast", other_vf),
            other_vf,
            "belongs to another pool",
        ),
        (pinned("fast", lab.vf(3)), lab.vf(3), "0000:5e:00.0"),
        (
            [pinned("fast", lab.vf(0)), pinned("fast", lab.vf(0))].concat(),
            lab.vf(0),
            "asked for twice",
        ),
    ];
    for (reqs, vf, why) in cases {
        let before = e.ledger.leased().unwrap();
        let err = e.claim("k8s-uid", &reqs, OwnerCheck::None).unwrap_err();
        assert!(
            matches!(err, ClaimError::PinnedUnavailable { vf: v, .. } if v == vf),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&vf.to_string()) && msg.contains(why), "{msg}");
        // Nothing changed: no new lease, the free VFs on their driver.
        assert_eq!(e.ledger.leased().unwrap(), before);
        for i in [0, 2, 3] {
            assert_eq!(lab.driver(i).as_deref(), Some("iavf"), "VF {i}");
            assert_eq!(lab.nl.get("ens1f0", i).unwrap(), VfSettings::default());
        }
    }
    // The right pool gets the other PF's VF.
    let got = e
        .claim("k8s-uid", &pinned("slow", other_vf), OwnerCheck::None)
        .unwrap();
    assert_eq!(got[0].vf, other_vf);
}

/// The pin is host-side only: no request text can carry it, and it is not
/// written out.
#[test]
fn no_annotation_can_pin_a_vf() {
    let err = parse_request(r#"[{"pool":"fast","vf":"0000:3b:10.0"}]"#).unwrap_err();
    assert!(err.to_string().contains("unknown key \"vf\""), "{err}");
    let mut r = NetworkRequest::plain("fast".parse().unwrap());
    r.vf = Some("0000:3b:10.0".parse().unwrap());
    assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"pool":"fast"}"#);
    assert!(parse_request("fast").unwrap()[0].vf.is_none());
}

#[test]
fn a_mac_on_the_pfs_switch_is_in_use_even_without_a_host_netdev() {
    // VF 1 is on vfio-pci (no host netdev, so no sysfs address to read);
    // its MAC is known only from the PF's VF list.
    let lab = lab_with(
        2,
        "[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nmac = \"request\"\n",
    );
    let taken: kata_sriov::pci::MacAddr = "02:00:00:00:00:09".parse().unwrap();
    lab.nl
        .set_vf(
            &"ens1f0".parse().unwrap(),
            1,
            kata_sriov::kernel::netlink::VfSetting::Mac(taken),
        )
        .unwrap();
    lab.fake.set_driver(lab.vf(1), Some("vfio-pci"));
    let e = lab.engine();
    let err = claim_with_mac(&e, "a", "02:00:00:00:00:09").unwrap_err();
    assert!(
        matches!(err, ClaimError::MacInUse(m) if m == taken),
        "{err}"
    );
    assert!(e.ledger.leased().unwrap().is_empty());
    assert_eq!(lab.nl.get("ens1f0", 0).unwrap(), VfSettings::default());
    // Another MAC is fine.
    let got = claim_with_mac(&e, "b", "02:00:00:00:00:0a").unwrap();
    assert_eq!(got[0].mac, Some("02:00:00:00:00:0a".parse().unwrap()));
}
