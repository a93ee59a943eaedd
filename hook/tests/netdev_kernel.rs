//! netdev mode against the real kernel: a veth end in the host namespace
//! stands in for a VF's netdev (a fake sysfs tree names it as the VF's
//! interface); the "container" is a process in a fresh named network
//! namespace. The pool keeps the MAC and sets nothing on the PF, so no VF
//! netlink call is made. Needs root and `ip`; every test uses its own names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use kata_sriov::engine::claim::Engine;
use kata_sriov::integrations::netdev;
use kata_sriov::oci::state::HookState;
use kata_sriov::pci::PciAddress;
use kata_sriov::policy::config::Config;
use kata_sriov::testing::{
    add_vf_veths, del_vf_veths, lease_files, FakeBinder, FakeSysfs, FileNetlink,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// One test's world: VFs whose netdevs are veth ends `<tag>pv<i>` (peers
/// `<tag>q<i>`), a named netns with a sleeping process in it, a fake tree,
/// a config.
struct World {
    tag: String,
    ns: String,
    sleeper: std::cell::RefCell<Option<Child>>,
    dir: tempfile::TempDir,
    fake: FakeSysfs,
    cfg: Config,
    pf: PciAddress,
}

impl World {
    fn new(vfs: u32) -> World {
        let tag = format!(
            "kn{:x}{}",
            std::process::id() % 0xfff,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = format!("{tag}ns");
        ip(&["netns", "add", &ns]);
        let sleeper = Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "300"])
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(&dir.path().join("sys"));
        let pf = fake.add_pf_with("0000:3b:00.0", &format!("{tag}p"), vfs, 8, Some("igbvf"));
        add_vf_veths(&tag, vfs);
        let text = format!(
            "state_dir = {:?}\nsysfs_root = {:?}\n[[pools]]\nname = \"nd\"\npfs = [\"0000:3b:00.0\"]\nmode = \"netdev\"\nmac = \"keep\"\n",
            dir.path().join("state"),
            dir.path().join("sys"),
        );
        let cfg = Config::parse(&text, &dir.path().join("config.toml")).unwrap();
        let w = World {
            tag,
            ns,
            sleeper: std::cell::RefCell::new(Some(sleeper)),
            dir,
            fake,
            cfg,
            pf,
        };
        // The sleeper must be in the namespace before it is used.
        for _ in 0..100 {
            if w.pid_ns_differs() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        w
    }

    fn pid(&self) -> u32 {
        self.sleeper.borrow().as_ref().map_or(0, Child::id)
    }

    fn pid_ns_differs(&self) -> bool {
        let a = std::fs::read_link(format!("/proc/{}/ns/net", self.pid())).ok();
        let b = std::fs::read_link("/proc/self/ns/net").ok();
        a.is_some() && a != b
    }

    fn vf_netdev(&self, i: u32) -> String {
        format!("{}pv{i}", self.tag)
    }

    fn vf(&self, i: u32) -> PciAddress {
        self.fake.root().vf_addr(self.pf, i).unwrap()
    }

    fn state(&self, id: &str) -> HookState {
        HookState {
            id: id.into(),
            pid: Some(i64::from(self.pid())),
            bundle: Some(self.bundle()),
            annotations: Default::default(),
            status: Some("created".into()),
            oci_version: None,
        }
    }

    fn bundle(&self) -> std::path::PathBuf {
        let b = self.dir.path().join("bundle");
        std::fs::create_dir_all(&b).unwrap();
        b
    }

    fn in_ns(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.ns, "ip"];
        a.extend_from_slice(args);
        ip(&a)
    }

    fn host_has(&self, name: &str) -> bool {
        ip_ok(&["link", "show", "dev", name])
    }

    fn ns_has(&self, name: &str) -> bool {
        ip_ok(&["-n", &self.ns, "link", "show", "dev", name])
    }

    fn kill_sleeper(&self) {
        if let Some(mut c) = self.sleeper.borrow_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn leases(&self) -> usize {
        lease_files(&self.dir.path().join("state"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_sleeper();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        del_vf_veths(&self.tag, 8);
    }
}

fn spec_with(req: &str) -> Value {
    json!({ "ociVersion": "1.0.2", "annotations": { "io.kata-sriov.networks": req } })
}

fn addr_json(out: &str) -> Value {
    serde_json::from_str(out).unwrap()
}

#[test]
fn moves_renames_configures_and_returns_from_a_named_namespace() {
    let w = World::new(2);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    let mac0 = addr_json(&ip(&["-j", "link", "show", "dev", &w.vf_netdev(0)]))[0]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let spec = spec_with(
        r#"[{"pool":"nd","ips":["10.77.1.5/24","fd00:77::5/64"],"gateway":"10.77.1.1","routes":[{"dst":"10.78.0.0/16","via":"10.77.1.254"}]},
            {"pool":"nd","name":"data0","mtu":1400}]"#,
    );
    let st = w.state("c1");
    let got = netdev::create_runtime(&engine, &st, &spec).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].container_name.as_str(), "net1");
    assert_eq!(got[1].container_name.as_str(), "data0");
    assert_eq!(got[0].host_name.as_str(), w.vf_netdev(0));

    // The host lost both; the namespace has them, configured.
    assert!(!w.host_has(&w.vf_netdev(0)) && !w.host_has(&w.vf_netdev(1)));
    let a = addr_json(&w.in_ns(&["-j", "addr", "show", "dev", "net1"]));
    assert_eq!(a[0]["address"], mac0.as_str(), "MAC kept: {a}");
    assert!(
        a[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{a}"
    );
    let ips: Vec<String> = a[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{}/{}", x["local"].as_str().unwrap(), x["prefixlen"]))
        .collect();
    assert!(ips.contains(&"10.77.1.5/24".to_string()), "{ips:?}");
    assert!(ips.contains(&"fd00:77::5/64".to_string()), "{ips:?}");
    let routes = w.in_ns(&["route", "show"]);
    assert!(
        routes.contains("default via 10.77.1.1 dev net1"),
        "{routes}"
    );
    assert!(
        routes.contains("10.78.0.0/16 via 10.77.1.254 dev net1"),
        "{routes}"
    );
    let d = addr_json(&w.in_ns(&["-j", "link", "show", "dev", "data0"]));
    assert_eq!(d[0]["mtu"], 1400);

    // The lease records the move and the MAC.
    let lease = engine.ledger.read(w.vf(0)).unwrap().unwrap();
    let mv = lease.netdev_move.clone().unwrap();
    assert_eq!(mv.host_name.as_str(), w.vf_netdev(0));
    assert_eq!(mv.container_name.as_str(), "net1");
    assert_eq!(mv.netns_pid, Some(w.pid()));
    assert_eq!(lease.mac.unwrap().to_string(), mac0);

    // Running the hook again changes nothing and does not fail.
    let again = netdev::create_runtime(&engine, &st, &spec).unwrap();
    assert_eq!(again, got);
    assert_eq!(w.leases(), 2);

    // The container's process is gone but its (named) namespace stays:
    // release finds the interfaces there and brings them home.
    w.kill_sleeper();
    let released = engine.release("c1").unwrap();
    assert_eq!(released.len(), 2);
    assert!(w.host_has(&w.vf_netdev(0)) && w.host_has(&w.vf_netdev(1)));
    assert!(!w.ns_has("net1") && !w.ns_has("data0"));
    // The MTU the container got is put back.
    let back = addr_json(&ip(&["-j", "link", "show", "dev", &w.vf_netdev(1)]));
    assert_eq!(back[0]["mtu"], 1500, "{back}");
    assert_eq!(w.leases(), 0);
    // Releasing again is a no-op.
    assert!(engine.release("c1").unwrap().is_empty());
}

#[test]
fn returned_by_the_kernel_under_another_name_is_renamed_back() {
    let w = World::new(1);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    netdev::create_runtime(&engine, &w.state("c2"), &spec_with("nd")).unwrap();
    assert!(w.ns_has("net1"));
    // What the kernel does with a physical netdev when the namespace dies
    // and its name is taken: back in the initial namespace as devN. Sysfs
    // then lists it under the new name.
    let renamed = format!("{}r", w.tag);
    ip(&[
        "-n", &w.ns, "link", "set", "dev", "net1", "netns", "1", "name", &renamed,
    ]);
    let net = w
        .fake
        .dir()
        .join(format!("bus/pci/devices/{}/net", w.vf(0)));
    std::fs::rename(net.join(w.vf_netdev(0)), net.join(&renamed)).unwrap();
    assert!(w.host_has(&renamed));
    assert_eq!(engine.release("c2").unwrap(), vec![w.vf(0)]);
    assert!(w.host_has(&w.vf_netdev(0)));
    assert!(!w.host_has(&renamed));
    assert_eq!(w.leases(), 0);
}

#[test]
fn a_failure_after_the_move_rolls_everything_back() {
    let w = World::new(1);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    // The container already has a default route through another link: the
    // requested gateway conflicts once the VF is in place.
    let o = format!("{}o", w.tag);
    w.in_ns(&[
        "link",
        "add",
        &o,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{o}p"),
    ]);
    w.in_ns(&["addr", "add", "10.9.9.2/24", "dev", &o]);
    w.in_ns(&["link", "set", &o, "up"]);
    w.in_ns(&["route", "add", "default", "via", "10.9.9.1", "dev", &o]);
    let spec = spec_with(r#"[{"pool":"nd","ips":["10.77.2.5/24"],"gateway":"10.77.2.1"}]"#);
    let e = netdev::create_runtime(&engine, &w.state("c3"), &spec).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("rolled back") && msg.contains("already has"),
        "{msg}"
    );
    assert!(w.host_has(&w.vf_netdev(0)), "the VF's netdev came back");
    assert!(!w.ns_has("net1"));
    assert_eq!(w.leases(), 0);
}

#[test]
fn a_taken_name_is_refused_and_nothing_moves() {
    let w = World::new(1);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    w.in_ns(&[
        "link", "add", "net1", "type", "veth", "peer", "name", "net1p",
    ]);
    let e = netdev::create_runtime(&engine, &w.state("c4"), &spec_with("nd")).unwrap_err();
    assert!(e.to_string().contains("rolled back"), "{e}");
    assert!(w.host_has(&w.vf_netdev(0)));
    assert_eq!(w.leases(), 0);
}

#[test]
fn refuses_the_host_namespace_and_a_missing_pid() {
    let w = World::new(1);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    let mut st = w.state("c5");
    st.pid = Some(i64::from(std::process::id()));
    let e = netdev::create_runtime(&engine, &st, &spec_with("nd")).unwrap_err();
    assert!(
        e.to_string().contains("host's own network namespace"),
        "{e}"
    );
    assert!(w.host_has(&w.vf_netdev(0)));
    st.pid = None;
    let e = netdev::create_runtime(&engine, &st, &spec_with("nd")).unwrap_err();
    assert!(e.to_string().contains("pid"), "{e}");
    assert_eq!(w.leases(), 0);
    // No request, or a request for nothing netdev: nothing happens.
    assert!(netdev::create_runtime(&engine, &st, &json!({}))
        .unwrap()
        .is_empty());
}

#[test]
fn gc_brings_the_netdev_home_once_the_bundle_is_gone() {
    let w = World::new(1);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    netdev::create_runtime(&engine, &w.state("c6"), &spec_with("nd")).unwrap();
    assert!(w.ns_has("net1"));
    // The owner is alive while its bundle exists.
    let r = engine.gc().unwrap();
    assert_eq!((r.kept, r.released.len()), (1, 0), "{r:?}");
    assert!(w.ns_has("net1"));
    std::fs::remove_dir_all(w.bundle()).unwrap();
    let r = engine.gc().unwrap();
    assert_eq!(r.released.len(), 1, "{r:?}");
    assert!(w.host_has(&w.vf_netdev(0)));
    assert!(!w.ns_has("net1"));
    assert_eq!(w.leases(), 0);
}

/// A container whose spec names another container's owner token gets
/// nothing of it: the victim's VF stays in the victim's namespace and its
/// lease is untouched (issue 19, attack 1).
#[test]
fn a_forged_owner_annotation_takes_no_vf() {
    let w = World::new(1);
    let nl = FileNetlink::new(&w.dir.path().join("nl"));
    let binder = FakeBinder::new(&w.fake);
    let engine = Engine::new(&w.cfg, &nl, &binder).unwrap();
    netdev::create_runtime(&engine, &w.state("victim"), &spec_with("nd")).unwrap();
    assert!(w.ns_has("net1"));
    let before = std::fs::read_dir(w.dir.path().join("state/leases"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
    // The attacker: another bundle, the victim's id as its owner annotation.
    let mut st = w.state("attacker");
    let other = w.dir.path().join("attacker-bundle");
    std::fs::create_dir_all(&other).unwrap();
    st.bundle = Some(other);
    st.annotations
        .insert("io.kata-sriov.owner".into(), json!("victim"));
    let e = netdev::create_runtime(&engine, &st, &spec_with("nd")).unwrap_err();
    assert!(e.to_string().contains("another container"), "{e}");
    // An owner annotation naming no claim at all is refused too.
    st.annotations
        .insert("io.kata-sriov.owner".into(), json!("nobody"));
    let e = netdev::create_runtime(&engine, &st, &spec_with("nd")).unwrap_err();
    assert!(e.to_string().contains("names no claim"), "{e}");
    assert!(w.ns_has("net1"), "the victim's interface was moved");
    let after = std::fs::read_dir(w.dir.path().join("state/leases"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(before, after, "the victim's lease changed");
    assert_eq!(w.leases(), 1);
}
