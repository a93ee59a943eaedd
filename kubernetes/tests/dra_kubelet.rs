//! The DRA driver end to end on a fake node: the test plays the kubelet
//! over the real gRPC protocol (our own protos, on the plugin sockets: the
//! registration socket found in the directory as the kubelet's plugin
//! watcher finds it, GetInfo, then prepare and unprepare on the endpoint it
//! names) and stands in for the API server at the HTTP level (kube-rs's
//! real requests, bodies parsed as the k8s-openapi types). The engine runs
//! for real on a fake sysfs tree, with the file-backed netlink fake and the
//! fake binder, which move the tree's driver links as the kernel would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kata_sriov::engine::claim::Engine;
use kata_sriov::kernel::netlink::VfSettings;
use kata_sriov::policy::request::parse_request;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov_k8s::names;
use kata_sriov_k8s::proto::{dra_v1, dra_v1beta1};
use serde_json::{json, Value};

const UID: &str = "0c4a5f8e-1d2b-4c3a-9f00-123456789abc";
const UID2: &str = "0c4a5f8e-1d2b-4c3a-9f00-22222222bbbb";
const UID3: &str = "0c4a5f8e-1d2b-4c3a-9f00-33333333cccc";
const SLICE: &str = "node-1-kata-sriov-fast-0";

fn device_names(s: &ResourceSlice) -> Vec<String> {
    s.spec
        .devices
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|d| d.name.clone())
        .collect()
}

fn generation(slices: &BTreeMap<String, ResourceSlice>) -> i64 {
    slices[SLICE].spec.pool.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_prepares_and_unprepares_a_claim_through_the_agent() {
    // Pool "gone" names a PF this node does not have: it is published
    // empty and does not stop pool "fast".
    let node = FakeNode::new(
        4,
        "iavf",
        "vlan = 100\nspoofchk = false\n[[pools]]\nname = \"gone\"\npfs = [\"ens9\"]\n",
    );
    // VF 1 reports its NUMA node; the others report none (-1).
    node.fake
        .write(&format!("bus/pci/devices/{}/numa_node", node.vf(1)), "1\n");
    let api = ApiServer::start();
    let settings = node.settings();
    let agent = node.start_agent(&api, &settings);

    // Registration, as the kubelet does it.
    let mut k = kubelet_register(&settings.plugins_registry, Duration::from_secs(20)).await;
    assert_eq!(k.info.r#type, "DRAPlugin");
    assert_eq!(k.info.name, DRIVER);
    assert_eq!(
        k.info.endpoint,
        settings
            .plugins_dir
            .join(DRIVER)
            .join("dra.sock")
            .to_string_lossy()
    );
    assert_eq!(
        k.info.supported_versions,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );
    assert!(settings
        .plugins_registry
        .join("kata-sriov.io-reg.sock")
        .exists());

    // The ResourceSlice: one pool, all four VFs, owned by the Node.
    let slices = api
        .wait_for_slices("first publication", |s| s.len() == 2)
        .await;
    let gone = &slices["node-1-kata-sriov-gone-0"];
    assert_eq!(gone.spec.pool.name, "node-1/gone");
    assert!(device_names(gone).is_empty());
    let s = &slices[SLICE];
    assert_eq!(s.spec.driver, DRIVER);
    assert_eq!(s.spec.node_name.as_deref(), Some(NODE));
    assert_eq!(s.spec.pool.name, "node-1/fast");
    assert_eq!(s.spec.pool.generation, 1);
    assert_eq!(s.spec.pool.resource_slice_count, 1);
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Node", NODE, NODE_UID)
    );
    let want: Vec<String> = (0..4).map(|i| names::device_name(node.vf(i))).collect();
    assert_eq!(device_names(s), want);
    let d1 = &s.spec.devices.as_ref().unwrap()[1];
    let attrs = d1.attributes.as_ref().unwrap();
    let st = |k: &str| attrs[k].string.clone().unwrap();
    let int = |k: &str| attrs[k].int.unwrap();
    assert_eq!(st("pool"), "fast");
    assert_eq!(st("pfName"), "ens1f0");
    assert_eq!(st("pfPciAddress"), "0000:3b:00.0");
    assert_eq!(st("pciAddress"), node.vf(1).to_string());
    assert_eq!(st("pciVendorDevice"), "8086:154c");
    assert_eq!(st("mode"), "vfio");
    assert_eq!(int("vfIndex"), 1);
    assert_eq!(int("numaNode"), 1);
    let group1 = node.fake.root().iommu_group(node.vf(1)).unwrap().unwrap();
    assert_eq!(int("iommuGroup"), i64::from(group1));
    assert!(!s.spec.devices.as_ref().unwrap()[0]
        .attributes
        .as_ref()
        .unwrap()
        .contains_key("numaNode"));

    // Prepare: the claim is read from the API server, exactly VF 2 is
    // claimed with the pool's settings, the CDI spec written.
    let dev2 = names::device_name(node.vf(2));
    api.add_claim(claim(
        "default",
        "c1",
        UID,
        &[("node-1/fast", &dev2)],
        Some(
            json!({"apiVersion":"kata-sriov.io/v1alpha1","kind":"VfConfig",
                    "name":"net1","ips":["10.0.0.5/24"],"gateway":"10.0.0.1","mtu":1400}),
        ),
    ));
    let r = kubelet_prepare(&mut k, "default", "c1", UID).await;
    assert_eq!(r.error, "");
    let cdi_name = format!("{UID}-{dev2}");
    assert_eq!(
        r.devices,
        [dra_v1::Device {
            request_names: vec!["vf".into()],
            pool_name: "node-1/fast".into(),
            device_name: dev2.clone(),
            cdi_device_ids: vec![format!("kata-sriov.io/vf={cdi_name}")],
        }]
    );
    assert!(api.seen().iter().any(|s| s.method == "GET"
        && s.path == "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/c1"));
    assert_eq!(
        node.leases(),
        [(node.vf(2).to_string(), UID.to_owned(), "claimed".to_owned())]
    );
    assert_eq!(node.driver(2).as_deref(), Some("vfio-pci"));
    let nl = node.nl();
    let set = nl.get("ens1f0", 2).unwrap();
    assert_eq!((set.vlan.get(), set.spoofchk), (100, Some(false)));
    for i in [0, 1, 3] {
        assert_eq!(node.driver(i).as_deref(), Some("iavf"));
        assert_eq!(nl.get("ens1f0", i).unwrap(), VfSettings::default());
    }
    // `kata-sriov status` shows the claim's UID as the owner.
    let ledger = kata_sriov::state::ledger::Ledger::open(&node.cfg.state_dir).unwrap();
    let status = kata_sriov::admin::status::gather(&node.cfg, &ledger, None).unwrap();
    let text = kata_sriov::admin::status::render(&status);
    assert!(text.contains(UID), "{text}");

    // The CDI spec: the real node numbers, the guest description.
    let spec_path = node.cdi_dir().join(format!("kata-sriov-dra-{UID}.json"));
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(spec["cdiVersion"], "0.6.0");
    assert_eq!(spec["kind"], "kata-sriov.io/vf");
    let dev = &spec["devices"][0];
    assert_eq!(dev["name"], cdi_name.as_str());
    let group2 = node.fake.root().iommu_group(node.vf(2)).unwrap().unwrap();
    let nodes = &dev["containerEdits"]["deviceNodes"];
    assert_eq!(nodes[0]["path"], "/dev/vfio/vfio");
    assert_eq!(
        (nodes[0]["major"].as_i64(), nodes[0]["minor"].as_i64()),
        (Some(10), Some(196))
    );
    assert_eq!(nodes[1]["path"], format!("/dev/vfio/{group2}"));
    assert_eq!(
        nodes[1]["hostPath"],
        node.cfg
            .dev_root
            .join(format!("vfio/{group2}"))
            .to_string_lossy()
            .as_ref()
    );
    assert_eq!(
        (nodes[1]["major"].as_i64(), nodes[1]["minor"].as_i64()),
        (Some(240), Some(i64::from(group2)))
    );
    let env = dev["containerEdits"]["env"][0].as_str().unwrap();
    let (key, guest) = env.split_once('=').unwrap();
    assert_eq!(key, kata_sriov::oci::cdi::guest_env_name(node.vf(2)));
    let guest = kata_sriov::guestnet::parse_guest_networks(guest).unwrap();
    assert_eq!(guest.len(), 1);
    assert_eq!(guest[0].mac, Some(set.mac));
    assert_eq!(guest[0].pci_id.to_string(), "8086:154c");
    assert_eq!(guest[0].l3.name.as_ref().unwrap().as_str(), "net1");
    assert_eq!(guest[0].l3.mtu, Some(1400));
    assert_eq!(guest[0].l3.ips[0].to_string(), "10.0.0.5/24");

    // Idempotent: again, and through v1beta1, the same answer, one lease.
    let again = kubelet_prepare(&mut k, "default", "c1", UID).await;
    assert_eq!(again, r);
    let beta = k
        .v1beta1
        .node_prepare_resources(dra_v1beta1::NodePrepareResourcesRequest {
            claims: vec![dra_v1beta1::Claim {
                namespace: "default".into(),
                uid: UID.into(),
                name: "c1".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(beta.claims[UID].error, "");
    assert_eq!(
        beta.claims[UID].devices[0].cdi_device_ids,
        r.devices[0].cdi_device_ids
    );
    assert_eq!(node.leases().len(), 1);
    // A VF a Kubernetes claim holds stays published.
    assert_eq!(device_names(&api.slices()[SLICE]).len(), 4);

    // A VF taken outside Kubernetes leaves the slice: generation 2.
    let nl2 = node.nl();
    let binder2 = node.binder();
    let mut e = Engine::new(&node.cfg, &nl2, &binder2).unwrap();
    e.node_wait = Duration::ZERO;
    let other = e
        .claim(
            "default/outside",
            &parse_request("fast").unwrap(),
            OwnerCheck::None,
        )
        .unwrap();
    assert_eq!(other[0].vf, node.vf(0));
    let s = api
        .wait_for_slices("VF 0 taken", |s| {
            s.get(SLICE)
                .is_some_and(|s| !device_names(s).contains(&names::device_name(node.vf(0))))
        })
        .await;
    assert_eq!(generation(&s), 2);
    assert_eq!(device_names(&s[SLICE]).len(), 3);
    // Returned: generation 3, back in the slice.
    e.release("default/outside").unwrap();
    let s = api
        .wait_for_slices("VF 0 back", |s| {
            s.get(SLICE).is_some_and(|s| device_names(s).len() == 4)
        })
        .await;
    assert_eq!(generation(&s), 3);
    // VFs removed (sriov_numvfs lowered, as `setup` or an admin does) and
    // created again: generations 4 and 5.
    let numvfs = "bus/pci/devices/0000:3b:00.0/sriov_numvfs";
    node.fake.write(numvfs, "3\n");
    let s = api
        .wait_for_slices("VF 3 removed", |s| {
            s.get(SLICE).is_some_and(|s| device_names(s).len() == 3)
        })
        .await;
    assert_eq!(generation(&s), 4);
    assert!(!device_names(&s[SLICE]).contains(&names::device_name(node.vf(3))));
    node.fake.write(numvfs, "4\n");
    let s = api
        .wait_for_slices("VF 3 created", |s| {
            s.get(SLICE).is_some_and(|s| device_names(s).len() == 4)
        })
        .await;
    assert_eq!(generation(&s), 5);
    // An unchanged inventory is not republished, and costs the API server
    // (almost) nothing: at most one resync read in four rescans.
    let before = api.seen().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(generation(&api.slices()), 5);
    let reads = api.seen()[before..]
        .iter()
        .filter(|s| s.path.ends_with("/resourceslices"))
        .count();
    assert!(reads <= 1, "{reads} slice reads while idle");
    // A change while the API server is away is published once it is back.
    api.state.lock().unwrap().down = true;
    node.fake.write(numvfs, "3\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(device_names(&api.slices()[SLICE]).len(), 4);
    api.state.lock().unwrap().down = false;
    let s = api
        .wait_for_slices("after the outage", |s| {
            s.get(SLICE).is_some_and(|s| device_names(s).len() == 3)
        })
        .await;
    assert_eq!(generation(&s), 6);
    node.fake.write(numvfs, "4\n");
    let s = api
        .wait_for_slices("VF 3 again", |s| {
            s.get(SLICE).is_some_and(|s| device_names(s).len() == 4)
        })
        .await;
    assert_eq!(generation(&s), 7);

    // Failures name the VF and why, and change nothing.
    api.add_claim(claim(
        "default",
        "c2",
        UID2,
        &[("node-1/fast", &dev2)],
        None,
    ));
    let r2 = kubelet_prepare(&mut k, "default", "c2", UID2).await;
    assert!(r2.devices.is_empty());
    assert!(
        r2.error.contains(&node.vf(2).to_string())
            && r2.error.contains(&format!("leased to \"{UID}\"")),
        "{}",
        r2.error
    );
    let dev3 = names::device_name(node.vf(3));
    let refused: [(Value, &str); 4] = [
        (json!({"vlan": 5}), "unknown key \"vlan\""),
        (json!({"pool": "fast"}), "\"pool\" is not allowed"),
        (
            json!({"mac": "02:00:00:00:00:99"}),
            "does not let containers choose their MAC",
        ),
        (json!({"ips": ["10.0.0.0/24"]}), "10.0.0.0/24 is a network"),
    ];
    for (params, why) in refused {
        api.add_claim(claim(
            "default",
            "c3",
            UID3,
            &[("node-1/fast", &dev3)],
            Some(params.clone()),
        ));
        let r3 = kubelet_prepare(&mut k, "default", "c3", UID3).await;
        assert!(r3.error.contains(why), "{params}: {}", r3.error);
        assert!(r3.error.contains("default/c3"), "{}", r3.error);
    }
    // A device of another node's pool is not ours to prepare; a device
    // name that is no VF is refused.
    api.add_claim(claim(
        "default",
        "c3",
        UID3,
        &[("node-2/fast", &dev3)],
        None,
    ));
    let r3 = kubelet_prepare(&mut k, "default", "c3", UID3).await;
    assert_eq!((r3.error.as_str(), r3.devices.len()), ("", 0));
    api.add_claim(claim(
        "default",
        "c3",
        UID3,
        &[("node-1/fast", "vf-../../x")],
        None,
    ));
    let r3 = kubelet_prepare(&mut k, "default", "c3", UID3).await;
    assert!(
        r3.error.contains("\"vf-../../x\" is not one of ours"),
        "{}",
        r3.error
    );
    // The kubelet asking for a UID the claim no longer has.
    let r3 = kubelet_prepare(&mut k, "default", "c1", UID3).await;
    assert!(r3.error.contains("the claim was replaced"), "{}", r3.error);
    let before = api.seen().len();
    let hostile = kubelet_prepare(&mut k, "../../api/v1/nodes", "x", UID3).await;
    assert!(
        hostile.error.contains("not a valid namespace"),
        "{}",
        hostile.error
    );
    assert!(
        !api.seen()[before..]
            .iter()
            .any(|s| s.path.contains("resourceclaims")),
        "a hostile namespace reached the API server"
    );
    let missing = kubelet_prepare(&mut k, "default", "nope", UID3).await;
    assert!(
        missing.error.contains("reading ResourceClaim default/nope"),
        "{}",
        missing.error
    );
    assert_eq!(node.leases().len(), 1);
    assert_eq!(node.driver(3).as_deref(), Some("iavf"));
    assert_eq!(nl.get("ens1f0", 3).unwrap(), VfSettings::default());
    for uid in [UID2, UID3] {
        assert!(!node
            .cdi_dir()
            .join(format!("kata-sriov-dra-{uid}.json"))
            .exists());
    }

    // Unprepare: the VF back, its settings restored, the spec gone.
    assert_eq!(kubelet_unprepare(&mut k, UID).await, "");
    assert!(node.leases().is_empty());
    assert_eq!(node.driver(2).as_deref(), Some("iavf"));
    assert_eq!(nl.get("ens1f0", 2).unwrap(), VfSettings::default());
    assert!(!spec_path.exists());
    // Idempotent, and a claim never prepared is a success.
    assert_eq!(kubelet_unprepare(&mut k, UID).await, "");
    assert_eq!(kubelet_unprepare(&mut k, UID2).await, "");
    let bad = kubelet_unprepare(&mut k, "../../etc").await;
    assert!(bad.contains("is not a UID"), "{bad}");

    // Released outside Kubernetes (`kata-sriov release <uid>`): the spec
    // goes at the next rescan, and unprepare is then a success.
    assert_eq!(
        kubelet_prepare(&mut k, "default", "c1", UID).await.error,
        ""
    );
    assert!(spec_path.exists());
    assert_eq!(e.release(UID).unwrap(), [node.vf(2)]);
    let start = std::time::Instant::now();
    while spec_path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "spec of a released claim kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kubelet_unprepare(&mut k, UID).await, "");

    agent.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!settings.registration_socket().exists());
    assert!(!settings.dra_socket().exists());
}
