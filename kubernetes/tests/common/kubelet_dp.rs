//! A stand-in kubelet for the device plugin, over the real gRPC protocol
//! (our own protos, on unix sockets): the Registration service on
//! `<dir>/kubelet.sock`, the PodResources service on its own socket, and
//! the kubelet's side of DevicePlugin (a client on the endpoint the plugin
//! registered). No kubelet is packaged for these machines.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_sriov_k8s::deviceplugin::service::unix_channel;
use kata_sriov_k8s::proto::deviceplugin as pb;
use kata_sriov_k8s::proto::podresources as pr;
use kata_sriov_k8s::server;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

struct Reg(mpsc::UnboundedSender<pb::RegisterRequest>);

#[tonic::async_trait]
impl pb::registration_server::Registration for Reg {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(pb::Empty {}))
    }
}

/// The kubelet's registration socket, until dropped or stopped.
pub struct KubeletReg {
    pub dir: PathBuf,
    pub registered: mpsc::UnboundedReceiver<pb::RegisterRequest>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl KubeletReg {
    pub fn start(dir: &Path) -> KubeletReg {
        let sock = dir.join("kubelet.sock");
        let listener = server::bind(&sock).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(pb::registration_server::RegistrationServer::new(Reg(tx)))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = stopped.wait_for(|v| *v).await;
                })
                .await
                .unwrap();
        });
        KubeletReg {
            dir: dir.to_owned(),
            registered: rx,
            stop,
            task,
        }
    }

    /// The next registration, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> pb::RegisterRequest {
        tokio::time::timeout(limit, self.registered.recv())
            .await
            .expect("no registration in time")
            .unwrap()
    }

    /// Stops as a restarting kubelet does: its socket and every plugin
    /// socket in the directory are deleted.
    pub async fn stop_and_clean(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }

    /// A DevicePlugin client on the endpoint a registration named.
    pub fn plugin(
        &self,
        r: &pb::RegisterRequest,
    ) -> pb::device_plugin_client::DevicePluginClient<Channel> {
        pb::device_plugin_client::DevicePluginClient::new(unix_channel(self.dir.join(&r.endpoint)))
    }
}

/// What the stand-in PodResources answers: the pods, or an error (None:
/// a kubelet that is down).
#[derive(Clone, Default)]
pub struct Pods(pub Arc<Mutex<Option<Vec<pr::PodResources>>>>);

impl Pods {
    pub fn set(&self, pods: Option<Vec<pr::PodResources>>) {
        *self.0.lock().unwrap() = pods;
    }
}

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for Pods {
    async fn list(
        &self,
        _req: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        match self.0.lock().unwrap().clone() {
            Some(pod_resources) => Ok(Response::new(pr::ListPodResourcesResponse {
                pod_resources,
            })),
            None => Err(Status::unavailable("the test's kubelet is down")),
        }
    }

    async fn get_allocatable_resources(
        &self,
        _req: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by the plugin"))
    }

    async fn get(
        &self,
        req: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        let r = req.into_inner();
        let pods = self.0.lock().unwrap().clone().unwrap_or_default();
        let pod = pods
            .into_iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .ok_or_else(|| Status::not_found("no such pod"))?;
        Ok(Response::new(pr::GetPodResourcesResponse {
            pod_resources: Some(pod),
        }))
    }
}

/// Serves `pods` on `sock` until the returned sender turns true.
pub fn serve_pods(sock: &Path, pods: Pods) -> watch::Sender<bool> {
    let listener = server::bind(sock).unwrap();
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pr::pod_resources_lister_server::PodResourcesListerServer::new(pods))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                let _ = stopped.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
    });
    stop
}

/// A pod holding `ids` of `resource` in its one container.
pub fn pod(ns: &str, name: &str, resource: &str, ids: &[String]) -> pr::PodResources {
    pr::PodResources {
        name: name.into(),
        namespace: ns.into(),
        containers: vec![pr::ContainerResources {
            name: "c".into(),
            devices: vec![pr::ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.to_vec(),
                topology: None,
            }],
            ..Default::default()
        }],
    }
}

/// The next ListAndWatch message: (ID, health, NUMA node).
pub async fn next_list(
    s: &mut tonic::Streaming<pb::ListAndWatchResponse>,
) -> Vec<(String, String, Option<i64>)> {
    let m = tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("no ListAndWatch update in time")
        .unwrap()
        .expect("ListAndWatch ended");
    m.devices
        .into_iter()
        .map(|d| {
            let numa = d.topology.and_then(|t| t.nodes.first().map(|n| n.id));
            (d.id, d.health, numa)
        })
        .collect()
}

/// Resolves a fully qualified CDI name as the CDI spec defines it: split
/// `vendor/class=name` at the first '=' (the kind) and check it; read
/// every `*.json` spec in `dir`; exactly one device named `name` in the
/// specs whose `kind` equals it. Returns that device.
pub fn cdi_resolve(dir: &Path, qualified: &str) -> Result<serde_json::Value, String> {
    let (kind, name) = qualified
        .split_once('=')
        .ok_or(format!("{qualified:?}: no '='"))?;
    let (vendor, class) = kind.split_once('/').ok_or(format!("{kind:?}: no '/'"))?;
    if vendor.is_empty() || class.is_empty() || name.is_empty() || class.contains('/') {
        return Err(format!("{qualified:?} is not vendor/class=name"));
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        if e.path().extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).map_err(|e| e.to_string())?;
        if spec["kind"] != kind {
            continue;
        }
        for d in spec["devices"].as_array().cloned().unwrap_or_default() {
            if d["name"] == name {
                found.push(d);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("{qualified}: unresolvable")),
        n => Err(format!("{qualified}: {n} devices (conflict)")),
    }
}
