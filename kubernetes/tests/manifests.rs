//! The manifests in `configs/kubernetes/` are the Kubernetes objects they
//! claim to be: each parses as its k8s-openapi type with nothing lost (a
//! misspelt or misplaced field would vanish in the round trip), and they
//! agree with the agent: the RBAC grants exactly what it calls, the
//! DaemonSet's arguments are accepted by the real binary, the claim
//! template's opaque config passes the agent's own validation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kubernetes")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses `v` as `T` and checks that serializing it back gives `v` again.
fn typed<T: DeserializeOwned + Serialize>(name: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, v, "{name}: fields lost or changed in the round trip");
    t
}

#[test]
fn every_manifest_is_the_type_it_claims() {
    let mut seen = Vec::new();
    for e in std::fs::read_dir(dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") {
            continue;
        }
        let v = load(&name);
        let kind = (
            v["apiVersion"].as_str().unwrap(),
            v["kind"].as_str().unwrap(),
        );
        match kind {
            ("v1", "Namespace") => drop(typed::<Namespace>(&name, &v)),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(&name, &v)),
            ("v1", "Pod") => drop(typed::<Pod>(&name, &v)),
            ("node.k8s.io/v1", "RuntimeClass") => drop(typed::<RuntimeClass>(&name, &v)),
            ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(&name, &v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                drop(typed::<ClusterRole>(&name, &v))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(typed::<ClusterRoleBinding>(&name, &v))
            }
            ("resource.k8s.io/v1", "DeviceClass") => drop(typed::<DeviceClass>(&name, &v)),
            ("resource.k8s.io/v1", "ResourceClaimTemplate") => {
                drop(typed::<ResourceClaimTemplate>(&name, &v))
            }
            other => panic!("{name}: unexpected kind {other:?}"),
        }
        seen.push(kind.1.to_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "DaemonSet",
            "DeviceClass",
            "Namespace",
            "Pod",
            "Pod",
            "ResourceClaimTemplate",
            "RuntimeClass",
            "ServiceAccount"
        ]
    );
}

#[test]
fn rbac_grants_exactly_what_the_agent_calls() {
    let role: ClusterRole = typed("clusterrole.yaml", &load("clusterrole.yaml"));
    let mut grants: Vec<(String, String, Vec<String>)> = role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| {
            let mut verbs = r.verbs;
            verbs.sort();
            (
                r.api_groups.unwrap()[0].clone(),
                r.resources.unwrap()[0].clone(),
                verbs,
            )
        })
        .collect();
    grants.sort();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        grants,
        [
            ("".into(), "nodes".into(), s(&["get"])),
            (
                "resource.k8s.io".into(),
                "resourceclaims".into(),
                s(&["get"])
            ),
            (
                "resource.k8s.io".into(),
                "resourceslices".into(),
                s(&["create", "delete", "get", "list", "update"])
            ),
        ]
    );
    let b: ClusterRoleBinding = typed("clusterrolebinding.yaml", &load("clusterrolebinding.yaml"));
    let sa: ServiceAccount = typed("serviceaccount.yaml", &load("serviceaccount.yaml"));
    let subj = &b.subjects.unwrap()[0];
    assert_eq!(Some(&subj.name), sa.metadata.name.as_ref());
    assert_eq!(subj.namespace, sa.metadata.namespace);
    assert_eq!(b.role_ref.name, role.metadata.name.unwrap());
}

/// The DaemonSet's container: its arguments are accepted by the real
/// binary (clap refuses an unknown flag before it gets to --help) and it
/// mounts `mounts`.
fn daemonset_container(file: &str, mounts: &[&str]) -> k8s_openapi::api::core::v1::PodSpec {
    let ds: DaemonSet = typed(file, &load(file));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sriov-k8s"))
        .args(&args)
        .arg("--help")
        .env("NODE_NAME", "n")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let have: Vec<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for p in mounts {
        assert!(have.contains(p), "{file}: {p} not mounted");
    }
    pod
}

#[test]
fn daemonset_arguments_are_the_binarys() {
    // The kubelet's directories and the host's ledger are mounted.
    let pod = daemonset_container(
        "daemonset.yaml",
        &[
            "/var/lib/kubelet/plugins_registry",
            "/var/lib/kubelet/plugins",
            "/var/run/cdi",
            "/run/kata-sriov",
            "/etc/kata-sriov",
            "/sys",
            "/dev",
        ],
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("kata-sriov-k8s"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sriov-k8s"))
        .args(["dra", "--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let env = pod.containers[0].env.as_ref().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn device_plugin_daemonset_and_pod() {
    let pod = daemonset_container(
        "daemonset-device-plugin.yaml",
        &[
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/pod-resources",
            "/var/run/cdi",
            "/run/kata-sriov",
            "/etc/kata-sriov",
            "/sys",
            "/dev",
        ],
    );
    assert_eq!(pod.containers[0].args.as_ref().unwrap()[1], "device-plugin");
    // It calls no API server: no service account rights.
    assert_eq!(pod.service_account_name, None);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kata-sriov-k8s"))
        .args(["device-plugin", "--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // The pod asks for the resource the plugin registers for pool "fast",
    // and its annotation is a valid request for that pool.
    let p: Pod = typed("pod-device-plugin.yaml", &load("pod-device-plugin.yaml"));
    let limits = p.spec.as_ref().unwrap().containers[0]
        .resources
        .as_ref()
        .unwrap()
        .limits
        .clone()
        .unwrap();
    let res = kata_sriov_k8s::names::resource_name("kata-sriov.io", "fast").unwrap();
    assert_eq!(limits[&res].0, "1");
    let ann = &p.metadata.annotations.unwrap()["io.kata-sriov.networks"];
    let reqs = kata_sriov::policy::request::parse_request(ann).unwrap();
    assert_eq!(reqs[0].pool.as_str(), "fast");
}

#[test]
fn claim_template_and_pod_fit_the_class_and_the_agent() {
    let class: DeviceClass = typed("deviceclass.yaml", &load("deviceclass.yaml"));
    let t: ResourceClaimTemplate = typed(
        "resourceclaimtemplate.yaml",
        &load("resourceclaimtemplate.yaml"),
    );
    let pod: Pod = typed("pod.yaml", &load("pod.yaml"));
    let class_name = class.metadata.name.unwrap();
    let cel = &class.spec.selectors.unwrap()[0]
        .cel
        .clone()
        .unwrap()
        .expression;
    assert_eq!(cel, "device.driver == \"kata-sriov.io\"");
    let devices = t.spec.spec.devices.unwrap();
    let req = &devices.requests.as_ref().unwrap()[0];
    assert_eq!(req.exactly.as_ref().unwrap().device_class_name, class_name);
    let cfg = &devices.config.as_ref().unwrap()[0];
    let opaque = cfg.opaque.as_ref().unwrap();
    assert_eq!(opaque.driver, "kata-sriov.io");
    // The agent's own validation accepts the parameters.
    let r = kata_sriov_k8s::prepare::parse_config(
        "default/x",
        &req.name,
        "fast",
        Some(&opaque.parameters.0),
    )
    .unwrap();
    assert_eq!(r.l3.name.unwrap().as_str(), "net1");
    let spec = pod.spec.unwrap();
    // The pod runs through our shim (cold plug, the agent's default).
    let runtime: RuntimeClass = typed("runtimeclass.yaml", &load("runtimeclass.yaml"));
    assert_eq!(spec.runtime_class_name, runtime.metadata.name);
    let rc = &spec.resource_claims.unwrap()[0];
    assert_eq!(rc.resource_claim_template_name, t.metadata.name);
    let claims = spec.containers[0]
        .resources
        .as_ref()
        .unwrap()
        .claims
        .clone()
        .unwrap();
    assert_eq!(claims[0].name, rc.name);
}
