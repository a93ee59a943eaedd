//! A stand-in kubelet for the SR-IOV lab's `devplugin` scenario, over the
//! real gRPC protocol (the test's own, `tests/common/kubelet_dp.rs`):
//! serves Registration on `<dir>/kubelet.sock` and PodResources on
//! `<pod-resources>`, waits for the plugin's registration, reads its first
//! device list, Allocates its first healthy device for pod `lab/p1` and
//! prints `{"registered":...,"devices":[...],"allocate":{...}}` on stdout;
//! lists the pod as holding the device while `<hold>` exists, then lists
//! no pod, and exits after `<linger>` seconds more.
//!
//! `lab-kubelet DIR POD_RESOURCES_SOCKET HOLD_FILE LINGER_SECONDS`

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/kubelet_dp.rs"]
mod kubelet_dp;

use std::path::PathBuf;
use std::time::Duration;

use kata_sriov_k8s::proto::deviceplugin as pb;
use kubelet_dp::{next_list, pod, serve_pods, KubeletReg, Pods};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [dir, pr, hold, linger] = a.as_slice() else {
        eprintln!("usage: lab-kubelet DIR POD_RESOURCES_SOCKET HOLD_FILE LINGER_SECONDS");
        std::process::exit(2);
    };
    let (dir, hold) = (PathBuf::from(dir), PathBuf::from(hold));
    std::fs::create_dir_all(&dir).unwrap();
    let pods = Pods::default();
    pods.set(Some(Vec::new()));
    let _pr = serve_pods(&PathBuf::from(pr), pods.clone());
    let mut k = KubeletReg::start(&dir);
    let reg = k.next(Duration::from_secs(60)).await;
    let mut c = k.plugin(&reg);
    let mut s = c.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    let devices = next_list(&mut s).await;
    let id = devices
        .iter()
        .find(|d| d.1 == "Healthy")
        .map(|d| d.0.clone())
        .expect("no healthy device");
    let resp = c
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![id.clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let cr = &resp.container_responses[0];
    let out = json!({
        "registered": {"resource": reg.resource_name, "endpoint": reg.endpoint},
        "devices": devices.iter().map(|d| json!({"id": d.0, "health": d.1, "numa": d.2})).collect::<Vec<_>>(),
        "allocate": {
            "id": id,
            "cdi": cr.cdi_devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
            "devices": cr.devices.iter().map(|d| json!({"container": d.container_path, "host": d.host_path})).collect::<Vec<_>>(),
        }
    });
    println!("{out}");
    pods.set(Some(vec![pod("lab", "p1", &reg.resource_name, &[id])]));
    while hold.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pods.set(Some(Vec::new()));
    tokio::time::sleep(Duration::from_secs(linger.parse().unwrap())).await;
}
