//! `guest = "dan"` through the shim's flow (`flow::claim_for_shim`) on a
//! fake host with the file-backed VF-settings fake: the DAN file Kata reads,
//! its lifetime (release and gc delete it), and the refusals that must
//! change nothing. The containerd end of it is in the shim's tests and the
//! lab.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use kata_sriov::engine::claim::Engine;
use kata_sriov::integrations::flow::{self, FlowError};
use kata_sriov::oci::spec::Spec;
use kata_sriov::policy::config::Config;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov::testing::{FakeBinder, FakeSysfs, FileNetlink};

struct Host {
    dir: tempfile::TempDir,
    fake: FakeSysfs,
    cfg: Config,
    nl: FileNetlink,
    binder: FakeBinder,
}

/// The shim's start as the shim does it: the plan, then the claim.
fn shim_claim(
    e: &Engine<'_>,
    spec: &mut Value,
    owner: &str,
    check: OwnerCheck,
    shim_id: &str,
) -> Result<Option<Vec<kata_sriov::engine::claim::ClaimedVf>>, flow::FlowError> {
    let mut s = Spec::from_value(spec)?;
    let mut plan = kata_sriov::oci::plan::ContainerPlan::for_shim(e.cfg, &s, shim_id)?;
    plan.owned_by(owner.to_owned(), check);
    let claimed = flow::claim_for_shim(e, &mut s, &plan)?;
    *spec = serde_json::from_str(s.text()).unwrap();
    Ok(claimed)
}

fn host() -> Host {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let sys = dir.path().join("sys");
    let fake = FakeSysfs::new(&sys);
    fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    fake.make_vfio_nodes(&dir.path().join("dev")).unwrap();
    let text = format!(
        "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n[dan]\ndir = {:?}\n\
         [[pools]]\nname = \"d\"\npfs = [\"ens1f0\"]\nguest = \"dan\"\nvlan = 10\nmtu = 9000\n",
        dir.path().join("state"),
        sys,
        dir.path().join("dev"),
        dir.path().join("dans"),
    );
    let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
    let nl = FileNetlink::new(&dir.path().join("nl"));
    nl.add_pf("ens1f0", 2);
    let binder = FakeBinder::new(&fake);
    Host {
        dir,
        fake,
        cfg,
        nl,
        binder,
    }
}

impl Host {
    fn engine(&self) -> Engine<'_> {
        let mut e = Engine::new(&self.cfg, &self.nl, &self.binder).unwrap();
        e.node_wait = Duration::ZERO;
        e
    }
    fn dan_file(&self, sid: &str) -> PathBuf {
        self.dir.path().join("dans").join(format!("{sid}.json"))
    }
}

fn sandbox_spec(sid: &str, req: &str) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": sid,
            "io.kata-sriov.networks": req,
        },
        "linux": {"devices": []},
    })
}

#[test]
fn sandbox_gets_a_dan_file_that_release_deletes() {
    let h = host();
    let e = h.engine();
    let mut spec = sandbox_spec(
        "sb1",
        r#"[{"pool":"d","name":"eth1","ips":["10.0.0.5/24","fd00::5/64"],"gateway":"10.0.0.1","routes":[{"dst":"10.1.0.0/16","via":"10.0.0.254"}]}]"#,
    );
    let bundle = h.dir.path().join("bundle");
    fs::create_dir(&bundle).unwrap();
    let got = shim_claim(
        &e,
        &mut spec,
        "k8s.io/sb1",
        OwnerCheck::Bundle(bundle.clone()),
        "sb1",
    )
    .unwrap()
    .unwrap();
    let vf = got[0].vf;
    let doc: Value = serde_json::from_slice(&fs::read(h.dan_file("sb1")).unwrap()).unwrap();
    let d = &doc["devices"][0];
    assert_eq!(
        d["device"],
        json!({"type": "vfio", "pci_device_id": vf.to_string()})
    );
    // guest_mac is the admin MAC the "PF" now reports for that VF.
    let admin = h.nl.get("ens1f0", got[0].vf_index).unwrap().mac;
    assert_eq!(d["guest_mac"], admin.to_string());
    assert_eq!(d["name"], "eth1");
    assert_eq!(
        d["network_info"]["interface"],
        json!({"ip_addresses": ["10.0.0.5/24", "fd00::5/64"], "mtu": 9000})
    );
    assert_eq!(
        d["network_info"]["routes"],
        json!([{"gateway": "10.0.0.1"}, {"dest": "10.1.0.0/16", "gateway": "10.0.0.254"}])
    );
    // No /dev/vfio device and no guest annotation in DAN mode.
    assert_eq!(spec["linux"]["devices"], json!([]));
    assert!(spec["annotations"]
        .get("io.kata-sriov.guest-networks")
        .is_none());
    assert_eq!(
        h.fake.root().driver(vf).unwrap().as_deref(),
        Some("vfio-pci"),
        "Kata never binds: the VF must already be on vfio-pci"
    );
    let lease = e.ledger.read(vf).unwrap().unwrap();
    assert_eq!(lease.dan_file.as_deref(), Some(h.dan_file("sb1").as_path()));

    // The same start again (containerd retries) keeps one file.
    let mut again = sandbox_spec(
        "sb1",
        r#"[{"pool":"d","name":"eth1","ips":["10.0.0.5/24","fd00::5/64"],"gateway":"10.0.0.1","routes":[{"dst":"10.1.0.0/16","via":"10.0.0.254"}]}]"#,
    );
    shim_claim(
        &e,
        &mut again,
        "k8s.io/sb1",
        OwnerCheck::Bundle(bundle),
        "sb1",
    )
    .unwrap();
    assert_eq!(fs::read_dir(h.dir.path().join("dans")).unwrap().count(), 1);

    e.release("k8s.io/sb1").unwrap();
    assert!(!h.dan_file("sb1").exists());
    assert!(e.ledger.read(vf).unwrap().is_none());
    assert_eq!(h.fake.root().driver(vf).unwrap().as_deref(), Some("iavf"));
}

#[test]
fn gc_deletes_the_file_when_the_sandbox_is_gone() {
    let h = host();
    let e = h.engine();
    let bundle = h.dir.path().join("bundle");
    fs::create_dir(&bundle).unwrap();
    let mut spec = sandbox_spec("sb2", "d");
    shim_claim(
        &e,
        &mut spec,
        "k8s.io/sb2",
        OwnerCheck::Bundle(bundle.clone()),
        "sb2",
    )
    .unwrap();
    assert!(h.dan_file("sb2").exists());
    assert_eq!(e.gc().unwrap().kept, 1);
    fs::remove_dir(&bundle).unwrap();
    assert_eq!(e.gc().unwrap().released.len(), 1);
    assert!(!h.dan_file("sb2").exists());
}

fn assert_nothing_claimed(h: &Host, e: &Engine<'_>) {
    assert!(e.ledger.leased().unwrap().is_empty());
    for i in 0..2 {
        let vf = h
            .fake
            .root()
            .vf_addr("0000:3b:00.0".parse().unwrap(), i)
            .unwrap();
        assert_eq!(h.fake.root().driver(vf).unwrap().as_deref(), Some("iavf"));
    }
}

#[test]
fn a_foreign_dan_file_is_never_touched() {
    let h = host();
    let e = h.engine();
    fs::create_dir_all(h.dir.path().join("dans")).unwrap();
    fs::write(h.dan_file("sb3"), "someone else's").unwrap();
    let mut spec = sandbox_spec("sb3", "d");
    let before = spec.clone();
    let err = shim_claim(&e, &mut spec, "k8s.io/sb3", OwnerCheck::None, "sb3").unwrap_err();
    assert!(matches!(err, FlowError::Dan(_)), "{err}");
    assert!(
        err.to_string().contains("not written by kata-sriov"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(h.dan_file("sb3")).unwrap(),
        "someone else's"
    );
    assert_eq!(spec, before);
    assert_nothing_claimed(&h, &e);
}

#[test]
fn refusals_before_anything_is_claimed() {
    let h = host();
    let e = h.engine();
    // A container of an existing pod: Kata would never read a later file.
    let mut spec = sandbox_spec("sb4", "d");
    spec["annotations"]["io.kubernetes.cri.container-type"] = "container".into();
    let err = shim_claim(&e, &mut spec, "k8s.io/c4", OwnerCheck::None, "c4").unwrap_err();
    assert!(err.to_string().contains("sandbox"), "{err}");
    // A route without a gateway cannot be written for Kata.
    let mut spec = sandbox_spec("sb5", r#"[{"pool":"d","routes":[{"dst":"10.1.0.0/16"}]}]"#);
    let err = shim_claim(&e, &mut spec, "k8s.io/sb5", OwnerCheck::None, "sb5").unwrap_err();
    assert!(err.to_string().contains("gateway"), "{err}");
    // A sandbox id that is not a file name.
    let mut spec = sandbox_spec("../../etc/cron.d/x", "d");
    let err = shim_claim(&e, &mut spec, "k8s.io/x", OwnerCheck::None, "x").unwrap_err();
    assert!(err.to_string().contains("sandbox id"), "{err}");
    assert!(
        !h.dir.path().join("dans").exists()
            || fs::read_dir(h.dir.path().join("dans")).unwrap().count() == 0
    );
    assert_nothing_claimed(&h, &e);
}

#[test]
fn a_pool_that_keeps_a_zero_mac_is_rolled_back() {
    let h = host();
    let text = fs::read_to_string(h.dir.path().join("nl").join("ens1f0.json")).unwrap();
    assert!(!text.is_empty());
    let cfg = Config::parse(
        &format!(
            "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n[dan]\ndir = {:?}\n\
             [[pools]]\nname = \"d\"\npfs = [\"ens1f0\"]\nguest = \"dan\"\nmac = \"keep\"\n",
            h.dir.path().join("state"),
            h.dir.path().join("sys"),
            h.dir.path().join("dev"),
            h.dir.path().join("dans"),
        ),
        Path::new("t.toml"),
    )
    .unwrap();
    let mut e = Engine::new(&cfg, &h.nl, &h.binder).unwrap();
    e.node_wait = Duration::ZERO;
    let mut spec = sandbox_spec("sb6", "d");
    let err = shim_claim(&e, &mut spec, "k8s.io/sb6", OwnerCheck::None, "sb6").unwrap_err();
    assert!(err.to_string().contains("guest_mac"), "{err}");
    assert!(!h.dan_file("sb6").exists());
    assert_nothing_claimed(&h, &e);
}

/// A sandbox cannot overwrite or plant another sandbox's DAN file (issue
/// 19, attack 2): a file is replaced only by the owner that wrote it, and a
/// spec naming another sandbox id than the shim's is refused.
#[test]
fn another_sandboxs_dan_file_is_never_touched() {
    let h = host();
    let e = h.engine();
    let mut spec = sandbox_spec("sb7", "d");
    shim_claim(&e, &mut spec, "k8s.io/sb7", OwnerCheck::None, "sb7")
        .unwrap()
        .unwrap();
    let theirs = fs::read(h.dan_file("sb7")).unwrap();
    // Another namespace, the same sandbox id: refused, the file unchanged.
    let mut spec = sandbox_spec("sb7", "d");
    let err = shim_claim(&e, &mut spec, "other/sb7", OwnerCheck::None, "sb7").unwrap_err();
    assert!(matches!(err, FlowError::Dan(_)), "{err}");
    assert_eq!(fs::read(h.dan_file("sb7")).unwrap(), theirs);
    // A spec naming a sandbox that is not this shim's: refused, no file.
    let mut spec = sandbox_spec("sb8", "d");
    let err = shim_claim(&e, &mut spec, "other/x9", OwnerCheck::None, "x9").unwrap_err();
    assert!(err.to_string().contains("another sandbox"), "{err}");
    assert!(!h.dan_file("sb8").exists());
    // Only the first sandbox holds a VF.
    assert_eq!(e.leases_of("k8s.io/sb7").unwrap().len(), 1);
    assert!(e.leases_of("other/sb7").unwrap().is_empty());
    assert!(e.leases_of("other/x9").unwrap().is_empty());
}
