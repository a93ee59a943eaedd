//! 10,000 claim/release cycles in a process of its own (so the open file
//! count is this test's alone): the free count returns to its start and
//! the number of open files stays flat.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kata_sriov::engine::claim::Engine;
use kata_sriov::kernel::netlink::VfSettings;
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::parse_request;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov::testing::RecordingNetlink;
use kata_sriov::testing::{FakeBinder, FakeSysfs};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn ten_thousand_cycles_leak_nothing() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    let fake = FakeSysfs::new(&sys);
    let pf = fake.add_pf("0000:3b:00.0", "ens1f0", 4, 8);
    // Null-device numbers: a free group opens, as on a real host.
    fake.make_vfio_nodes_as(&dev, Some((1, 3))).unwrap();
    let text = format!(
        "state_dir = {:?}\nsysfs_root = {:?}\ndev_root = {:?}\n[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nvlan = 7\n",
        dir.path().join("state"),
        sys,
        dev
    );
    let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
    let nl = RecordingNetlink::new();
    let pfname = "ens1f0".parse().unwrap();
    nl.add_pf(&pfname, 4);
    let binder = FakeBinder::new(&fake);
    let mut e = Engine::new(&cfg, &nl, &binder).unwrap();
    e.node_wait = std::time::Duration::ZERO;
    let r = parse_request("fast").unwrap();
    let free = |e: &Engine| 4 - e.ledger.leased().unwrap().len();
    // Warm up, then measure.
    e.claim("w", &r, OwnerCheck::None).unwrap();
    e.release("w").unwrap();
    let fds = open_fds();
    assert_eq!(free(&e), 4);
    for i in 0..10_000 {
        let owner = format!("c{i}");
        let got = e.claim(&owner, &r, OwnerCheck::None).unwrap();
        assert_eq!(free(&e), 3);
        assert_eq!(e.release(&owner).unwrap(), vec![got[0].vf]);
        nl.clear_calls();
    }
    assert_eq!(free(&e), 4);
    assert_eq!(open_fds(), fds);
    for i in 0..4 {
        let vf = fake.root().vf_addr(pf, i).unwrap();
        assert_eq!(fake.root().driver(vf).unwrap().as_deref(), Some("iavf"));
        assert_eq!(nl.state(&pfname, i).unwrap(), VfSettings::default());
    }
}
