//! Kata cold plug of DRA-prepared VFs: the test plays the kubelet over the
//! real gRPC protocol (prepare with `--plug cold`, the claim reserved for a
//! pod), then runs our shim binary's `start` in a bundle holding a CRI
//! sandbox spec, as containerd runs it, with a recording script as the
//! delegate (Kata cannot run here). The sandbox of the pod the claim is
//! reserved for gets the VF's `/dev/vfio` nodes, cgroup rules and guest
//! annotation; a sandbox of another pod, a pod container, a spec whose
//! own annotations name the claim, and a claim shared by two pods get
//! nothing; the shim's `delete` leaves the claim's VF to unprepare. Needs
//! root (mknod) and the shim built beside the tests
//! (`cargo build -p containerd-shim-kata-sriov-v2`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use k8s_openapi::api::resource::v1::ResourceClaimConsumerReference;
use kata_sriov::oci::cdi;
use kata_sriov_k8s::host::Plug;
use kata_sriov_k8s::names;
use serde_json::{json, Value};

const CLAIM: &str = "0c4a5f8e-1d2b-4c3a-9f00-123456789abc";
const SHARED: &str = "0c4a5f8e-1d2b-4c3a-9f00-22222222bbbb";
const POD_A: &str = "7e0f0000-aaaa-4000-8000-0000000000a1";
const POD_B: &str = "7e0f0000-bbbb-4000-8000-0000000000b2";
const POD_C: &str = "7e0f0000-cccc-4000-8000-0000000000c3";
const POD_D: &str = "7e0f0000-dddd-4000-8000-0000000000d4";

const FAKE_SHIM: &str =
    "#!/bin/sh\nprintf '%s\\n' \"$@\" >> \"$KSS_OUT\"\nprintf 'unix:///run/fake.sock'\n";

/// The shim, built beside this test.
fn shim_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("containerd-shim-kata-sriov-v2");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p containerd-shim-kata-sriov-v2`",
        p.display()
    );
    p
}

fn reserved(claim: &mut k8s_openapi::api::resource::v1::ResourceClaim, pods: &[&str]) {
    claim.status.as_mut().unwrap().reserved_for = Some(
        pods.iter()
            .map(|uid| ResourceClaimConsumerReference {
                api_group: None,
                resource: "pods".into(),
                name: format!("pod-{}", &uid[9..13]),
                uid: (*uid).into(),
            })
            .collect(),
    );
}

/// A bundle whose config.json carries `annotations`.
fn bundle(dir: &Path, name: &str, annotations: Value) -> PathBuf {
    let b = dir.join(name);
    std::fs::create_dir(&b).unwrap();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/pause"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
        "annotations": annotations,
    });
    std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    b
}

fn sandbox_annotations(ns: &str, uid: &str, id: &str) -> Value {
    json!({
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": id,
        "io.kubernetes.cri.sandbox-namespace": ns,
        "io.kubernetes.cri.sandbox-uid": uid,
    })
}

/// Runs the shim as containerd does: `-namespace k8s.io -id <id> <action>`
/// in the bundle.
fn shim(config: &Path, out: &Path, bundle: &Path, id: &str, action: &str) -> Output {
    let mut c = Command::new(shim_bin());
    c.args([
        "-namespace",
        "k8s.io",
        "-address",
        "/run/containerd/containerd.sock",
        "-id",
        id,
        action,
    ])
    .current_dir(bundle)
    .env("KATA_SRIOV_CONFIG", config)
    .env_remove("KATA_SRIOV_LOG")
    .env("KSS_OUT", out)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(b"opts");
    child.wait_with_output().unwrap()
}

fn spec_of(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap()
}

fn lease_json(node: &FakeNode, vf: kata_sriov::pci::PciAddress) -> Value {
    let p = node.cfg.state_dir.join(format!("leases/{vf}.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_cold_plugs_a_pods_prepared_vf_into_its_sandbox_only() {
    let work = tempfile::Builder::new()
        .prefix("ksdc")
        .tempdir_in("/tmp")
        .unwrap();
    let delegate = work.path().join("fake-shim");
    std::fs::write(&delegate, FAKE_SHIM).unwrap();
    std::fs::set_permissions(&delegate, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = work.path().join("delegate-calls");
    let node = FakeNode::new(
        4,
        "iavf",
        &format!("[shim]\ndelegate = \"{}\"\n", delegate.display()),
    );
    let api = ApiServer::start();
    let mut settings = node.settings();
    settings.plug = Plug::Cold;
    let agent = node.start_agent(&api, &settings);
    let mut k = kubelet_register(&settings.plugins_registry, Duration::from_secs(20)).await;

    // Claim c1 (VF 2, guest name net1) is reserved for pod A.
    let dev2 = names::device_name(node.vf(2));
    let mut c1 = claim(
        "default",
        "c1",
        CLAIM,
        &[("node-1/fast", &dev2)],
        Some(json!({"name":"net1","ips":["10.0.0.5/24"],"mtu":1400})),
    );
    reserved(&mut c1, &[POD_A]);
    api.add_claim(c1);
    let resp = kubelet_prepare(&mut k, "default", "c1", CLAIM).await;
    assert_eq!(resp.error, "", "{resp:?}");
    assert_eq!(node.driver(2).as_deref(), Some("vfio-pci"));
    let lease = lease_json(&node, node.vf(2));
    assert_eq!(
        lease["pods"],
        json!([{"namespace": "default", "uid": POD_A}])
    );
    // The CDI edits carry no device node (Kata must not hot-plug the VF
    // the sandbox already has), only the guest description.
    let spec: Value = serde_json::from_slice(
        &std::fs::read(node.cdi_dir().join(format!("kata-sriov-dra-{CLAIM}.json"))).unwrap(),
    )
    .unwrap();
    let edits = &spec["devices"][0]["containerEdits"];
    assert!(edits.get("deviceNodes").is_none(), "{edits}");
    assert!(edits["env"][0]
        .as_str()
        .unwrap()
        .starts_with(&cdi::guest_env_name(node.vf(2))));

    // Pod A's sandbox: the VF's group node and the container node, their
    // cgroup rules, and the guest annotation (replacing the spec's own).
    let group = node.fake.root().iommu_group(node.vf(2)).unwrap().unwrap();
    let mut ann = sandbox_annotations("default", POD_A, "sb-a");
    ann["io.kata-sriov.guest-networks"] = json!("[{\"pci_id\":\"1234:5678\",\"name\":\"evil\"}]");
    let a = bundle(work.path(), "a", ann);
    let o = shim(&node.config_path, &out, &a, "sb-a", "start");
    // Handed over, nothing of ours on stdout or stderr (containerd reads both).
    assert_eq!(
        (o.status.code(), o.stdout.as_slice(), o.stderr.as_slice()),
        (Some(0), &b"unix:///run/fake.sock"[..], &b""[..]),
        "{o:?}"
    );
    let sa = spec_of(&a);
    let devs = sa["linux"]["devices"].as_array().unwrap();
    let gpath = format!("/dev/vfio/{group}");
    assert!(
        devs.iter()
            .any(|d| d["path"] == gpath.as_str() && d["major"] == 240 && d["minor"] == group),
        "{devs:?}"
    );
    assert!(devs
        .iter()
        .any(|d| d["path"] == "/dev/vfio/vfio" && d["major"] == 10 && d["minor"] == 196));
    let rules = sa["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
    assert!(rules
        .iter()
        .any(|r| r["allow"] == true && r["major"] == 240 && r["minor"] == group));
    let guest = kata_sriov::guestnet::parse_guest_networks(
        sa["annotations"]["io.kata-sriov.guest-networks"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(guest.len(), 1);
    assert_eq!(guest[0].pci_id.to_string(), "8086:154c");
    assert_eq!(guest[0].l3.name.as_ref().unwrap().as_str(), "net1");
    assert_eq!(guest[0].l3.mtu, Some(1400));
    assert_eq!(
        guest[0].mac.map(|m| m.to_string()),
        lease["mac"].as_str().map(str::to_owned)
    );
    // The VF is the claim's: no owner annotation, and the sandbox's delete
    // releases nothing of it.
    assert!(sa["annotations"].get("io.kata-sriov.owner").is_none());
    let o = shim(&node.config_path, &out, &a, "sb-a", "delete");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        node.leases(),
        [(
            node.vf(2).to_string(),
            CLAIM.to_owned(),
            "claimed".to_owned()
        )]
    );
    assert_eq!(node.driver(2).as_deref(), Some("vfio-pci"));

    // Nothing for: another pod whose spec names the claim in our own
    // annotations; pod A's UID in another namespace; a container (not the
    // sandbox) of pod A; a spec without the CRI's sandbox annotations.
    let mut hostile = sandbox_annotations("default", POD_B, "sb-b");
    hostile["io.kata-sriov.owner"] = json!(CLAIM);
    hostile["io.kata-sriov.networks"] = json!("");
    hostile["io.kata-sriov.pod-uid"] = json!(POD_A);
    let mut container = sandbox_annotations("default", POD_A, "sb-a");
    container["io.kubernetes.cri.container-type"] = json!("container");
    let mut no_type = sandbox_annotations("default", POD_A, "x");
    no_type
        .as_object_mut()
        .unwrap()
        .remove("io.kubernetes.cri.container-type");
    for (name, ann) in [
        ("b", hostile),
        ("ns", sandbox_annotations("other", POD_A, "sb-ns")),
        ("ctr", container),
        ("plain", no_type),
    ] {
        let b = bundle(work.path(), name, ann);
        let before = std::fs::read(b.join("config.json")).unwrap();
        let o = shim(&node.config_path, &out, &b, name, "start");
        let after = std::fs::read(b.join("config.json")).unwrap();
        assert_eq!(
            before,
            after,
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout) == "unix:///run/fake.sock" || !o.status.success(),
            "{name}: {o:?}"
        );
        assert!(
            !String::from_utf8_lossy(&after).contains("/dev/vfio/"),
            "{name}"
        );
    }

    // A claim shared by two pods (VF 3): a VF can be in one VM only, so
    // neither sandbox gets it.
    let dev3 = names::device_name(node.vf(3));
    let mut c2 = claim("default", "c2", SHARED, &[("node-1/fast", &dev3)], None);
    reserved(&mut c2, &[POD_C, POD_D]);
    api.add_claim(c2);
    let resp = kubelet_prepare(&mut k, "default", "c2", SHARED).await;
    assert_eq!(resp.error, "", "{resp:?}");
    assert_eq!(
        lease_json(&node, node.vf(3))["pods"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let c = bundle(
        work.path(),
        "c",
        sandbox_annotations("default", POD_C, "sb-c"),
    );
    let before = std::fs::read(c.join("config.json")).unwrap();
    let o = shim(&node.config_path, &out, &c, "sb-c", "start");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(c.join("config.json")).unwrap(), before);

    // Unprepare releases it: VF back on its driver, no lease, no CDI spec.
    for uid in [CLAIM, SHARED] {
        assert_eq!(kubelet_unprepare(&mut k, uid).await, "");
    }
    assert!(node.leases().is_empty());
    assert_eq!(node.driver(2).as_deref(), Some("iavf"));
    assert_eq!(node.driver(3).as_deref(), Some("iavf"));
    let _ = agent.stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent.task).await;
}
