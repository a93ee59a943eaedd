//! The device plugin end to end on a fake node: the test plays the kubelet
//! over the real gRPC protocol from our own protos (a Registration server
//! on kubelet.sock, the DevicePlugin calls on the endpoint the plugin
//! registers, a PodResources server whose pods the test changes). The
//! engine runs for real on a fake sysfs tree with the file-backed netlink
//! fake and the fake binder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kubelet_dp::*;
use common::*;
use kata_sriov::engine::claim::Engine;
use kata_sriov::policy::request::parse_request;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov_k8s::deviceplugin::{self, allocate::DpSettings};
use kata_sriov_k8s::host::Host;
use kata_sriov_k8s::proto::deviceplugin as pb;
use tokio::sync::watch;

const RES: &str = "kata-sriov.io/fast";

struct Plugin {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), deviceplugin::DevicePluginError>>,
}

impl Plugin {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
    }
}

fn dp_settings(node: &FakeNode, grace: Duration) -> DpSettings {
    DpSettings {
        resource_prefix: "kata-sriov.io".into(),
        plugin_dir: node.dir.path().join("device-plugins"),
        pod_resources: node.dir.path().join("pod-resources/kubelet.sock"),
        cdi_dir: node.cdi_dir(),
        rescan: Duration::from_millis(100),
        reconcile: Duration::from_millis(100),
        grace,
    }
}

fn host(node: &FakeNode) -> Arc<Host> {
    let mut host = Host::new(
        node.cfg.clone(),
        Arc::new(node.nl()),
        Arc::new(node.binder()),
    );
    host.node_wait = Some(Duration::ZERO);
    Arc::new(host)
}

fn start(node: &FakeNode, dp: &DpSettings) -> Plugin {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(deviceplugin::run(
        host(node),
        dp.clone(),
        kata_sriov::log::discard(),
        stopped,
    ));
    Plugin { stop, task }
}

/// A running plugin with the test's kubelet (and PodResources serving
/// `pods`, when given), registered.
struct Running {
    kubelet: KubeletReg,
    plugin: Plugin,
    reg: pb::RegisterRequest,
    client: pb::device_plugin_client::DevicePluginClient<tonic::transport::Channel>,
    pods_stop: Option<watch::Sender<bool>>,
}

async fn run_with(node: &FakeNode, dp: &DpSettings, pods: Option<&Pods>) -> Running {
    std::fs::create_dir_all(&dp.plugin_dir).unwrap();
    let pods_stop = pods.map(|p| serve_pods(&dp.pod_resources, p.clone()));
    let mut kubelet = KubeletReg::start(&dp.plugin_dir);
    let plugin = start(node, dp);
    let reg = kubelet.next(Duration::from_secs(20)).await;
    let client = kubelet.plugin(&reg);
    Running {
        kubelet,
        plugin,
        reg,
        client,
        pods_stop,
    }
}

fn alloc(ids: Vec<String>) -> pb::AllocateRequest {
    pb::AllocateRequest {
        container_requests: vec![pb::ContainerAllocateRequest { devices_ids: ids }],
    }
}

/// A node whose PF is up; `vfs` VFs on iavf.
fn node(vfs: u32, extra: &str) -> FakeNode {
    let n = FakeNode::new(vfs, "iavf", extra);
    n.fake.write("class/net/ens1f0/operstate", "up\n");
    n
}

fn set_num_vfs(node: &FakeNode, n: u32) {
    node.fake.write(
        &format!("bus/pci/devices/{}/sriov_numvfs", node.pf),
        &format!("{n}\n"),
    );
}

/// Reads ListAndWatch until `f` holds for a message.
async fn wait_list(
    s: &mut tonic::Streaming<pb::ListAndWatchResponse>,
    what: &str,
    f: impl Fn(&[(String, String, Option<i64>)]) -> bool,
) -> Vec<(String, String, Option<i64>)> {
    let start = Instant::now();
    loop {
        let l = next_list(s).await;
        if f(&l) {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: last {l:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_list_and_watch_follows_vfs_and_health() {
    let node = node(3, "");
    set_num_vfs(&node, 2);
    for (i, n) in [(0, 0), (1, 1), (2, 1)] {
        node.fake.write(
            &format!("bus/pci/devices/{}/numa_node", node.vf(i)),
            &format!("{n}\n"),
        );
    }
    let dp = dp_settings(&node, Duration::ZERO);
    let Running {
        kubelet: _kubelet,
        plugin,
        reg: r,
        client: mut c,
        ..
    } = run_with(&node, &dp, None).await;
    assert_eq!(r.version, "v1beta1");
    assert_eq!(r.endpoint, "kata-sriov-fast.sock");
    assert_eq!(r.resource_name, RES);
    let o = r.options.unwrap();
    assert!(o.get_preferred_allocation_available && !o.pre_start_required);
    let opts = c
        .get_device_plugin_options(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opts, o);

    let mut s = c.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    let id = |i: u32| node.vf(i).to_string();
    let h = |i: u32, health: &str, numa: i64| (id(i), health.to_owned(), Some(numa));
    assert_eq!(
        next_list(&mut s).await,
        [h(0, "Healthy", 0), h(1, "Healthy", 1)]
    );

    // A VF created later appears without a restart.
    set_num_vfs(&node, 3);
    let l = wait_list(&mut s, "VF 2 added", |l| l.len() == 3).await;
    assert_eq!(
        l,
        [h(0, "Healthy", 0), h(1, "Healthy", 1), h(2, "Healthy", 1)]
    );

    // The preferred allocation: the NUMA node of the device that must be
    // included first, spread across PFs (one PF here).
    let pref = c
        .get_preferred_allocation(pb::PreferredAllocationRequest {
            container_requests: vec![pb::ContainerPreferredAllocationRequest {
                available_device_i_ds: vec![id(0), id(1), id(2)],
                must_include_device_i_ds: vec![id(2)],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pref.container_responses[0].device_i_ds, [id(2), id(1)]);

    // The PF goes down: every VF unhealthy; up again: healthy.
    node.fake.write("class/net/ens1f0/operstate", "down\n");
    wait_list(&mut s, "PF down", |l| l.iter().all(|d| d.1 == "Unhealthy")).await;
    node.fake.write("class/net/ens1f0/operstate", "up\n");
    wait_list(&mut s, "PF up", |l| l.iter().all(|d| d.1 == "Healthy")).await;

    // VF 2 shares VF 1's IOMMU group: both unhealthy, VF 0 not.
    let g1 = node.fake.root().iommu_group(node.vf(1)).unwrap().unwrap();
    node.fake.set_group(node.vf(2), g1);
    let l = wait_list(&mut s, "shared group", |l| l[2].1 == "Unhealthy").await;
    assert_eq!(
        l,
        [
            h(0, "Healthy", 0),
            h(1, "Unhealthy", 1),
            h(2, "Unhealthy", 1)
        ]
    );

    // A VF removed goes away.
    set_num_vfs(&node, 1);
    let l = wait_list(&mut s, "VFs removed", |l| l.len() == 1).await;
    assert_eq!(l, [h(0, "Healthy", 0)]);

    // A VF another kata-sriov owner holds is not offered.
    set_num_vfs(&node, 2);
    node.fake.set_group(node.vf(1), 40);
    node.fake
        .make_vfio_nodes(&node.dir.path().join("dev"))
        .unwrap();
    wait_list(&mut s, "VF 1 back", |l| l.len() == 2 && l[1].1 == "Healthy").await;
    {
        let host = host(&node);
        let e = Engine::new(&host.cfg, &*host.nl, &*host.binder).unwrap();
        let mut req = parse_request("fast").unwrap();
        req[0].vf = Some(node.vf(1));
        e.claim("default/other", &req, OwnerCheck::None).unwrap();
    }
    wait_list(&mut s, "VF 1 leased elsewhere", |l| l.len() == 1).await;

    plugin.stop().await;
    assert!(!dp.plugin_dir.join("kata-sriov-fast.sock").exists());
    // The stream ends when the plugin stops.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "ListAndWatch did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_claims_writes_cdi_and_pod_resources_release() {
    let node = node(3, "vlan = 100\n");
    let dp = dp_settings(&node, Duration::ZERO);
    let pods = Pods::default();
    pods.set(Some(Vec::new()));
    let Running {
        kubelet: _kubelet,
        plugin,
        reg: r,
        client: mut c,
        pods_stop,
    } = run_with(&node, &dp, Some(&pods)).await;
    let pods_stop = pods_stop.unwrap();
    let id1 = node.vf(1).to_string();

    let resp = c
        .allocate(alloc(vec![id1.clone()]))
        .await
        .unwrap()
        .into_inner();
    let cr = &resp.container_responses[0];
    let cdi_name = format!("{RES}={id1}");
    assert_eq!(
        cr.cdi_devices,
        [pb::CdiDevice {
            name: cdi_name.clone()
        }]
    );
    let g = node.fake.root().iommu_group(node.vf(1)).unwrap().unwrap();
    let dev = node.dir.path().join("dev/vfio");
    let spec = |c: &str, h: PathBuf| pb::DeviceSpec {
        container_path: c.into(),
        host_path: h.to_string_lossy().into_owned(),
        permissions: "rw".into(),
    };
    assert_eq!(
        cr.devices,
        [
            spec("/dev/vfio/vfio", dev.join("vfio")),
            spec(&format!("/dev/vfio/{g}"), dev.join(g.to_string()))
        ]
    );
    let owner = format!("k8s-dp/fast/{id1}");
    assert_eq!(
        node.leases(),
        [(id1.clone(), owner.clone(), "claimed".to_owned())]
    );
    assert_eq!(node.driver(1).as_deref(), Some("vfio-pci"));
    assert_eq!(node.nl().get("ens1f0", 1).unwrap().vlan.get(), 100);

    // The CDI spec: kind = resource name, device name = device ID; Kata's
    // `<resourceName>=<deviceID>` resolves to the VF's nodes.
    let stem = format!("kata-sriov-dp-fast-{}", id1.replace(':', "_"));
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dp.cdi_dir.join(format!("{stem}.json"))).unwrap())
            .unwrap();
    assert_eq!(file["kind"], RES);
    let kata_rule = format!("{}={}", r.resource_name, id1);
    let d = cdi_resolve(&dp.cdi_dir, &kata_rule).unwrap();
    assert_eq!(d["name"], id1.as_str());
    let nodes: Vec<&str> = d["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        ["/dev/vfio/vfio".to_owned(), format!("/dev/vfio/{g}")]
    );
    // No guest entry without the pod's addresses.
    assert!(
        d.get("annotations").is_none() && d["containerEdits"].get("env").is_none(),
        "{d}"
    );
    assert!(cdi_resolve(&dp.cdi_dir, &format!("{RES}={}", node.vf(0))).is_err());

    // Idempotent for the same devices.
    let again = c
        .allocate(alloc(vec![id1.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, resp);
    assert_eq!(node.leases().len(), 1);

    // Bad IDs are refused and change nothing.
    for bad in ["zzz", "0000:3B:10.1", ""] {
        let e = c.allocate(alloc(vec![bad.into()])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("not a PCI address"), "{e:?}");
    }
    let e = c
        .allocate(alloc(vec![id1.clone(), id1.clone()]))
        .await
        .unwrap_err();
    assert!(e.message().contains("asked for twice"), "{e:?}");
    // VF 2 is held by someone else: VF 0, claimed first, goes back.
    {
        let host = host(&node);
        let e = Engine::new(&host.cfg, &*host.nl, &*host.binder).unwrap();
        let mut req = parse_request("fast").unwrap();
        req[0].vf = Some(node.vf(2));
        e.claim("default/other", &req, OwnerCheck::None).unwrap();
    }
    let e = c
        .allocate(alloc(vec![node.vf(0).to_string(), node.vf(2).to_string()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("default/other"), "{e:?}");
    assert_eq!(node.leases().len(), 2);
    assert_eq!(node.driver(0).as_deref(), Some("iavf"));
    assert!(cdi_resolve(&dp.cdi_dir, &format!("{RES}={}", node.vf(0))).is_err());

    // A pod holds VF 1: it stays across many Lists.
    pods.set(Some(vec![pod(
        "default",
        "p1",
        RES,
        std::slice::from_ref(&id1),
    )]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(node.leases().iter().any(|l| l.0 == id1));
    // The pod is recorded in the lease (the shim finds the pod's VFs by it).
    let pods_of = || -> Vec<(String, Option<String>)> {
        kata_sriov::state::ledger::Ledger::open(&node.cfg.state_dir)
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .map(|e| {
                let l = e.lease.unwrap();
                (l.owner, l.pod)
            })
            .collect()
    };
    assert!(pods_of().contains(&(owner.clone(), Some("default/p1".into()))));

    // The kubelet is down (List fails, then its socket is gone): the pod
    // is not in any List, but nothing is released.
    pods.set(None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(node.leases().iter().any(|l| l.0 == id1));
    let _ = pods_stop.send(true);
    std::fs::remove_file(&dp.pod_resources).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(node.leases().iter().any(|l| l.0 == id1));
    assert_eq!(node.driver(1).as_deref(), Some("vfio-pci"));

    // The kubelet is back and the pod is gone: VF 1 is released (settings
    // restored, driver back, CDI spec removed); the other owner's VF stays.
    pods.set(Some(vec![pod(
        "default",
        "p2",
        "other.io/x",
        std::slice::from_ref(&id1),
    )]));
    let _pods_stop = serve_pods(&dp.pod_resources, pods.clone());
    let start = Instant::now();
    while node.leases().iter().any(|l| l.0 == id1) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "VF 1 never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.driver(1).as_deref(), Some("iavf"));
    assert_eq!(node.nl().get("ens1f0", 1).unwrap().vlan.get(), 0);
    assert!(!dp.cdi_dir.join(format!("{stem}.json")).exists());
    assert_eq!(
        node.leases(),
        [(
            node.vf(2).to_string(),
            "default/other".to_owned(),
            "claimed".to_owned()
        )]
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_keeps_a_fresh_allocation() {
    let node = node(2, "");
    let dp = dp_settings(&node, Duration::from_secs(3600));
    let pods = Pods::default();
    pods.set(Some(Vec::new()));
    let mut run = run_with(&node, &dp, Some(&pods)).await;
    run.client
        .allocate(alloc(vec![node.vf(0).to_string()]))
        .await
        .unwrap();
    // Not in any List yet (the pod is not visible), many Lists: kept.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(node.leases().len(), 1);
    run.plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_registers_again_and_plugin_restart_recovers() {
    let node = node(2, "");
    let dp = dp_settings(&node, Duration::ZERO);
    let id0 = node.vf(0).to_string();
    let pods = Pods::default();
    pods.set(Some(vec![pod(
        "default",
        "p1",
        RES,
        std::slice::from_ref(&id0),
    )]));
    let Running {
        kubelet,
        plugin,
        client: mut c,
        pods_stop: _pods_stop,
        ..
    } = run_with(&node, &dp, Some(&pods)).await;
    c.allocate(alloc(vec![id0.clone()])).await.unwrap();

    // The kubelet restarts: it deletes every socket and makes a new
    // kubelet.sock. The plugin serves again and registers again.
    kubelet.stop_and_clean().await;
    let mut kubelet = KubeletReg::start(&dp.plugin_dir);
    let r2 = kubelet.next(Duration::from_secs(20)).await;
    assert_eq!(
        (r2.resource_name.as_str(), r2.endpoint.as_str()),
        (RES, "kata-sriov-fast.sock")
    );
    let mut c = kubelet.plugin(&r2);
    let mut s = c.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    let l = next_list(&mut s).await;
    assert_eq!(
        l.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        [id0.clone(), node.vf(1).to_string()]
    );

    // kubelet.sock replaced with the plugin socket left alone: registers again.
    let reg_path = dp.plugin_dir.join("kubelet.sock");
    let before = std::fs::metadata(&reg_path).unwrap();
    drop(kubelet);
    std::fs::remove_file(&reg_path).unwrap();
    let mut kubelet = KubeletReg::start(&dp.plugin_dir);
    use std::os::unix::fs::MetadataExt;
    assert_ne!(std::fs::metadata(&reg_path).unwrap().ino(), before.ino());
    kubelet.next(Duration::from_secs(20)).await;

    // The plugin restarts: the VF stays held (a pod holds it), its CDI
    // spec is written again, a stale spec of ours is deleted.
    plugin.stop().await;
    let stem = format!("kata-sriov-dp-fast-{}", id0.replace(':', "_"));
    std::fs::remove_file(dp.cdi_dir.join(format!("{stem}.json"))).unwrap();
    std::fs::write(
        dp.cdi_dir.join("kata-sriov-dp-fast-0000_3b_1f.7.json"),
        "{}",
    )
    .unwrap();
    let plugin = start(&node, &dp);
    kubelet.next(Duration::from_secs(20)).await;
    assert!(cdi_resolve(&dp.cdi_dir, &format!("{RES}={id0}")).is_ok());
    assert!(!dp
        .cdi_dir
        .join("kata-sriov-dp-fast-0000_3b_1f.7.json")
        .exists());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        node.leases(),
        [(
            id0.clone(),
            format!("k8s-dp/fast/{id0}"),
            "claimed".to_owned()
        )]
    );

    // The pod goes: released by the restarted plugin (no Allocate in this
    // process: the lease's own time counts for the grace).
    pods.set(Some(Vec::new()));
    let start = Instant::now();
    while !node.leases().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.driver(0).as_deref(), Some("iavf"));
    plugin.stop().await;
}

/// The CDI name Kata builds (`<resourceName>=<deviceID>`) resolved by a real
/// engine: podman 5.8 of the forky root, `--device <name>` with our spec
/// directory, creates the VF's nodes in the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_resolves_the_kata_rule_name_in_our_spec() {
    let Some(engines) = kata_sriov_tests::engines::Engines::forky("podman CDI") else {
        return;
    };
    let node = node(2, "");
    let dp = dp_settings(&node, Duration::from_secs(3600));
    let mut run = run_with(&node, &dp, None).await;
    let id = node.vf(1).to_string();
    run.client.allocate(alloc(vec![id.clone()])).await.unwrap();
    let g = node.fake.root().iommu_group(node.vf(1)).unwrap().unwrap();
    let rootfs = node.dir.path().join("rootfs");
    kata_sriov_tests::busybox_rootfs(&rootfs);
    let pdir = node.dir.path().join("podman");
    std::fs::create_dir_all(pdir.join("run")).unwrap();
    let engines = engines.with_bind(&format!("{}:/run", pdir.join("run").display()));
    let name = format!("{}={}", run.reg.resource_name, id);
    let mut args: Vec<String> =
        kata_sriov_tests::engines::podman_private_args(&pdir.join("storage"))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
    for a in [
        "--cdi-spec-dir",
        dp.cdi_dir.to_str().unwrap(),
        "run",
        "--rm",
        "--network",
        "none",
        "--device",
        &name,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "ls",
        "-ln",
        "/dev/vfio/",
    ] {
        args.push(a.to_owned());
    }
    // VF 0 was not allocated: its name resolves to nothing.
    let unallocated = format!("{}={}", run.reg.resource_name, node.vf(0));
    let (out, refused) = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = engines.output("podman", &a, Duration::from_secs(120));
        let b: Vec<&str> = a
            .iter()
            .map(|x| if *x == name { unallocated.as_str() } else { x })
            .collect();
        (out, engines.output("podman", &b, Duration::from_secs(120)))
    })
    .await
    .unwrap();
    let name = format!("{}={}", run.reg.resource_name, id);
    let text = kata_sriov_tests::engines::ok(&format!("podman run --device {name}"), &out);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("unresolvable CDI devices"),
        "{why}"
    );
    // `ls -ln`: "crw-rw-rw- 1 0 0 240, 12 <date> 12", spacing aside.
    let node_line = |file: &str, numbers: &str| {
        text.lines().any(|l| {
            let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
            l.starts_with('c') && l.ends_with(&format!(" {file}")) && l.contains(numbers)
        })
    };
    assert!(node_line("vfio", "10, 196"), "{text}");
    assert!(node_line(&g.to_string(), &format!("240, {g}")), "{text}");
    run.plugin.stop().await;
}

/// The release rule, step by step (no timing): two successful Lists in a
/// row without the VF, a failed List in between starts the count again,
/// and the grace since Allocate holds it back.
#[test]
fn release_needs_two_lists_in_a_row_and_the_grace() {
    use kata_sriov_k8s::deviceplugin::allocate::{self, Listed, Reconciler};
    let node = node(2, "");
    let dp = dp_settings(&node, Duration::ZERO);
    let host = host(&node);
    let res = |p: &str| (p == "fast").then(|| RES.to_owned());
    let vf = node.vf(0);
    let held = || node.leases().iter().any(|l| l.0 == vf.to_string());
    allocate::allocate(&host, &dp, "fast", RES, &[vf]).unwrap();
    let mut r = Reconciler::new(Duration::ZERO);
    r.allocated(vf);
    let empty = Listed::new();
    let listed: Listed = [((RES.to_owned(), vf.to_string()), "ns/p".to_owned())].into();

    assert!(r.step(&host, &dp, &empty, res).unwrap().released.is_empty());
    assert!(held(), "released after one List");
    r.list_failed();
    assert!(r.step(&host, &dp, &empty, res).unwrap().released.is_empty());
    assert!(held(), "a failed List did not start the count again");
    // Listed again: the count starts again too.
    assert!(r
        .step(&host, &dp, &listed, res)
        .unwrap()
        .released
        .is_empty());
    assert!(r.step(&host, &dp, &empty, res).unwrap().released.is_empty());
    assert_eq!(r.step(&host, &dp, &empty, res).unwrap().released, [vf]);
    assert!(!held());

    // Within the grace, any number of Lists without it keeps it.
    allocate::allocate(&host, &dp, "fast", RES, &[vf]).unwrap();
    let mut r = Reconciler::new(Duration::from_secs(3600));
    r.allocated(vf);
    for _ in 0..5 {
        assert!(r.step(&host, &dp, &empty, res).unwrap().released.is_empty());
    }
    assert!(held());
}
