//! The real `kata-sriov-k8s` binary killed with SIGKILL and restarted: it
//! finds its prepared claims in the ledger (there is no other checkpoint),
//! finishes what a crash interrupted, republishes, and serves prepare and
//! unprepare for claims prepared before it died. The kubelet is played over
//! gRPC and the API server stood in for at the HTTP level, as in
//! `dra_kubelet.rs`; the binary uses the real netlink and sysfs binder, so
//! the fake node's VFs start on vfio-pci in a pool that sets nothing on
//! the PF (no netlink call, no bind), as in the shim's tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kata_sriov::engine::claim::{Engine, Step};
use kata_sriov::policy::request::NetworkRequest;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov::testing::{FakeBinder, FileNetlink};
use kata_sriov_k8s::names;
use kata_sriov_k8s::proto::dra_v1;

const UID: &str = "11111111-2222-4333-8444-555555555555";
const UID_CRASH: &str = "11111111-2222-4333-8444-666666666666";
const UID_GONE: &str = "11111111-2222-4333-8444-777777777777";
const UID_CLAIMED: &str = "11111111-2222-4333-8444-888888888888";
const UID_REL: &str = "11111111-2222-4333-8444-999999999999";
const SLICE: &str = "node-1-kata-sriov-fast-0";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(node: &FakeNode, api: &ApiServer) -> Agent {
    let kubeconfig = node.dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let s = node.settings();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.path().join("agent.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kata-sriov-k8s"))
        .arg("--config")
        .arg(&node.config_path)
        .arg("dra")
        .args([
            "--node-name",
            NODE,
            "--driver-name",
            DRIVER,
            "--rescan-seconds",
            "1",
        ])
        .arg("--plugins-registry")
        .arg(&s.plugins_registry)
        .arg("--plugins-dir")
        .arg(&s.plugins_dir)
        .arg("--cdi-dir")
        .arg(&s.cdi_dir)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    Agent(child)
}

async fn prepare(k: &mut Registered, name: &str, uid: &str) -> dra_v1::NodePrepareResourceResponse {
    let mut r =
        k.v1.node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: vec![v1_claim("default", name, uid)],
        })
        .await
        .unwrap()
        .into_inner();
    r.claims.remove(uid).unwrap()
}

async fn unprepare(k: &mut Registered, uid: &str) -> String {
    let mut r =
        k.v1.node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest {
            claims: vec![v1_claim("default", "x", uid)],
        })
        .await
        .unwrap()
        .into_inner();
    r.claims.remove(uid).unwrap().error
}

type Probe = dyn Fn(Step) + Sync;

/// An engine on the fake node whose probe (the kill-test hook) is `probe`.
fn engine_with<'a>(
    node: &'a FakeNode,
    nl: &'a FileNetlink,
    binder: &'a FakeBinder,
    probe: Option<&'a Probe>,
) -> Engine<'a> {
    let mut e = Engine::new(&node.cfg, nl, binder).unwrap();
    e.node_wait = Duration::ZERO;
    e.probe = probe;
    e
}

/// Removes the registration socket a killed agent left, as the kubelet's
/// plugin watcher would stop using it; the restarted agent replaces it.
fn forget_sockets(node: &FakeNode) {
    let s = node.settings();
    let _ = std::fs::remove_file(s.registration_socket());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keeps_prepared_claims_and_finishes_interrupted_work() {
    let node = FakeNode::new(4, "vfio-pci", "mac = \"keep\"\n");
    let api = ApiServer::start();
    let dev = |i| names::device_name(node.vf(i));
    let spec_of = |uid: &str| node.cdi_dir().join(format!("kata-sriov-dra-{uid}.json"));

    let mut agent = start(&node, &api);
    let mut k = kubelet_register(&node.settings().plugins_registry, Duration::from_secs(30)).await;
    api.wait_for_slices("first start", |s| {
        s.get(SLICE).is_some_and(|s| s.spec.pool.generation == 1)
    })
    .await;
    api.add_claim(claim(
        "default",
        "c1",
        UID,
        &[("node-1/fast", &dev(1))],
        None,
    ));
    let first = prepare(&mut k, "c1", UID).await;
    assert_eq!(first.error, "");
    let spec_before = std::fs::read(spec_of(UID)).unwrap();

    // SIGKILL, no chance to clean up.
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    forget_sockets(&node);

    // While it is down, leave what a kill at other points of prepare and
    // unprepare leaves (the engine's kill-test probe panics there, which
    // drops its locks as a kill does):
    // - a prepare killed right after its lease was written (`claiming`);
    // - a prepare killed after the engine's claim, before the CDI spec;
    // - an unprepare killed after marking its lease `releasing`;
    // - an unprepare killed after the release, before deleting its spec.
    let nl = node.nl();
    let binder = node.binder();
    let at = |step: Step| {
        move |s: Step| {
            if s == step {
                panic!("killed at {s:?}");
            }
        }
    };
    let (die_written, die_claimed, die_releasing) = (
        at(Step::LeaseWritten),
        at(Step::Claimed),
        at(Step::MarkedReleasing),
    );
    let engine = |probe| engine_with(&node, &nl, &binder, probe);
    let pinned = |i: u32| {
        let mut r = NetworkRequest::plain("fast".parse().unwrap());
        r.vf = Some(node.vf(i));
        vec![r]
    };
    let killed = |f: &dyn Fn()| {
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err());
    };
    let (w, c, r): (&Probe, &Probe, &Probe) = (&die_written, &die_claimed, &die_releasing);
    killed(&|| drop(engine(Some(w)).claim(UID_CRASH, &pinned(2), OwnerCheck::None)));
    killed(&|| drop(engine(Some(c)).claim(UID_CLAIMED, &pinned(3), OwnerCheck::None)));
    engine(None)
        .claim(UID_REL, &pinned(0), OwnerCheck::None)
        .unwrap();
    killed(&|| drop(engine(Some(r)).release(UID_REL)));
    let mut left = node.leases();
    left.sort();
    assert_eq!(
        left,
        [
            (node.vf(0).to_string(), UID_REL.into(), "releasing".into()),
            (node.vf(1).to_string(), UID.into(), "claimed".into()),
            (node.vf(2).to_string(), UID_CRASH.into(), "claiming".into()),
            (node.vf(3).to_string(), UID_CLAIMED.into(), "claimed".into()),
        ]
    );
    std::fs::write(spec_of(UID_GONE), &spec_before).unwrap();

    // Restart: it registers again and recovers from the ledger.
    let mut agent = start(&node, &api);
    let mut k = kubelet_register(&node.settings().plugins_registry, Duration::from_secs(30)).await;
    let slices = api
        .wait_for_slices("after restart", |s| {
            s.get(SLICE).is_some_and(|s| s.spec.pool.generation >= 2)
        })
        .await;
    // Republished with a new generation, every VF offered (VFs 1 and 3 are
    // Kubernetes claims'; VF 2's interrupted claim was rolled back, VF 0's
    // interrupted release finished).
    assert_eq!(slices[SLICE].spec.pool.generation, 2);
    assert_eq!(slices[SLICE].spec.devices.as_ref().unwrap().len(), 4);
    assert_eq!(
        node.leases(),
        [
            (node.vf(1).to_string(), UID.to_owned(), "claimed".to_owned()),
            (
                node.vf(3).to_string(),
                UID_CLAIMED.to_owned(),
                "claimed".to_owned()
            ),
        ]
    );
    assert!(!spec_of(UID_GONE).exists(), "stale spec kept");
    assert_eq!(std::fs::read(spec_of(UID)).unwrap(), spec_before);

    // The claim prepared before the kill: prepare again gives the same
    // answer; the interrupted one can now be prepared; both unprepare.
    let again = prepare(&mut k, "c1", UID).await;
    assert_eq!(again, first);
    api.add_claim(claim(
        "default",
        "c2",
        UID_CRASH,
        &[("node-1/fast", &dev(2))],
        None,
    ));
    let r2 = prepare(&mut k, "c2", UID_CRASH).await;
    assert_eq!(r2.error, "");
    // The kubelet retries the prepare that never answered: it completes
    // on the VF already claimed, and now has its spec.
    api.add_claim(claim(
        "default",
        "c3",
        UID_CLAIMED,
        &[("node-1/fast", &dev(3))],
        None,
    ));
    assert!(!spec_of(UID_CLAIMED).exists());
    let r3 = prepare(&mut k, "c3", UID_CLAIMED).await;
    assert_eq!(r3.error, "");
    assert!(spec_of(UID_CLAIMED).exists());
    assert_eq!(node.leases().len(), 3);
    // The unprepare that was interrupted is retried: already done.
    assert_eq!(unprepare(&mut k, UID_REL).await, "");
    for uid in [UID, UID_CRASH, UID_CLAIMED] {
        assert_eq!(unprepare(&mut k, uid).await, "");
        assert!(!spec_of(uid).exists());
    }
    assert!(node.leases().is_empty());
    for i in 0..4 {
        assert_eq!(node.driver(i).as_deref(), Some("vfio-pci"), "VF {i}");
    }
    // Nothing on stdout, ever (logs go to stderr).
    drop(k);
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut agent.0.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "");
    let log = std::fs::read_to_string(node.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("recovered from the ledger"), "{log}");
}
