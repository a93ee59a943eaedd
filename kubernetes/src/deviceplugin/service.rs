//! The DevicePlugin gRPC service of one pool (one socket and one extended
//! resource per pool), and the calls the plugin makes to the kubelet:
//! `Registration.Register` on `kubelet.sock` and PodResources `List`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kata_sriov::chain;
use kata_sriov::policy::config::Allocation;
use slog::{info, warn, Logger};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::allocate::{self, DpSettings, Reconciler};
use super::devices::{self, VfDevice};
use crate::host::Host;
use crate::proto::deviceplugin as pb;
use crate::proto::podresources as pr;
use crate::server::ServerError;

/// The device plugin API version we speak.
pub const API_VERSION: &str = "v1beta1";
/// How long a call to the kubelet may take.
pub const KUBELET_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC channel over a unix socket (connected lazily, at the first call).
pub fn unix_channel(path: PathBuf) -> Channel {
    // The URI is a placeholder: the connector ignores it.
    Endpoint::from_static("http://[::1]:1")
        .timeout(KUBELET_CALL_TIMEOUT)
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
}

/// The kubelet's device list message for `devices`.
pub fn list_response(devices: &[VfDevice]) -> pb::ListAndWatchResponse {
    pb::ListAndWatchResponse {
        devices: devices
            .iter()
            .map(|d| pb::Device {
                id: d.vf.to_string(),
                health: d.health().into(),
                topology: d.numa.map(|n| pb::TopologyInfo {
                    nodes: vec![pb::NumaNode { id: n }],
                }),
            })
            .collect(),
    }
}

/// The service of one pool.
#[derive(Clone)]
pub struct PoolPlugin {
    pub host: Arc<Host>,
    pub dp: DpSettings,
    pub pool: String,
    pub resource: String,
    pub allocation: Allocation,
    /// The pool's devices, as last scanned.
    pub devices: watch::Receiver<Vec<VfDevice>>,
    pub reconciler: Arc<Mutex<Reconciler>>,
    /// Told after each Allocate: the agent lists pods soon to record
    /// which pod holds the VFs.
    pub allocated: Arc<tokio::sync::Notify>,
    /// Turns true when this server generation stops (ends ListAndWatch).
    pub stop: watch::Receiver<bool>,
    pub log: Logger,
}

fn status(e: &allocate::AllocError) -> Status {
    match e {
        allocate::AllocError::BadId(_) | allocate::AllocError::Twice(_) => {
            Status::invalid_argument(chain(e))
        }
        _ => Status::failed_precondition(chain(e)),
    }
}

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for PoolPlugin {
    async fn get_device_plugin_options(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<pb::ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut devices = self.devices.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let msg = list_response(&devices.borrow_and_update());
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = devices.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|v| *v) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        let devices = self.devices.borrow().clone();
        let container_responses = req
            .into_inner()
            .container_requests
            .iter()
            .map(|c| pb::ContainerPreferredAllocationResponse {
                device_i_ds: devices::preferred(
                    &devices,
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                    self.allocation,
                ),
            })
            .collect();
        Ok(Response::new(pb::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in req.into_inner().container_requests {
            let vfs = allocate::parse_ids(&c.devices_ids).map_err(|e| status(&e))?;
            let (host, dp, pool, res) = (
                self.host.clone(),
                self.dp.clone(),
                self.pool.clone(),
                self.resource.clone(),
            );
            let ids = vfs.clone();
            let done = tokio::task::spawn_blocking(move || {
                allocate::allocate(&host, &dp, &pool, &res, &ids)
            })
            .await
            .map_err(|e| Status::internal(format!("Allocate did not finish: {}", chain(&e))))?;
            let got = match done {
                Ok(g) => g,
                Err(e) => {
                    warn!(self.log, "Allocate failed"; "resource" => &self.resource, "error" => chain(&e));
                    return Err(status(&e));
                }
            };
            {
                let mut r = self
                    .reconciler
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for vf in &vfs {
                    r.allocated(*vf);
                }
            }
            self.allocated.notify_one();
            info!(self.log, "allocated"; "resource" => &self.resource,
                  "devices" => c.devices_ids.join(","));
            container_responses.push(container_response(&self.host, &got));
        }
        Ok(Response::new(pb::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _req: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse {}))
    }
}

/// What the plugin supports: a preferred allocation, no PreStartContainer.
pub fn options() -> pb::DevicePluginOptions {
    pb::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// The CDI names and, for runtimes without CDI, the device nodes.
fn container_response(host: &Host, got: &[allocate::AllocatedVf]) -> pb::ContainerAllocateResponse {
    let mut devices = Vec::new();
    let node = |container: String, host: &Path| pb::DeviceSpec {
        container_path: container,
        host_path: host.to_string_lossy().into_owned(),
        permissions: "rw".into(),
    };
    if got.iter().any(|a| a.group_node.is_some()) {
        devices.push(node(
            kata_sriov::oci::spec::VFIO_CONTAINER.into(),
            &host.cfg.dev_root.join("vfio/vfio"),
        ));
    }
    for (g, n) in got.iter().filter_map(|a| a.group_node.as_ref()) {
        devices.push(node(format!("/dev/vfio/{g}"), &n.path));
    }
    pb::ContainerAllocateResponse {
        devices,
        cdi_devices: got
            .iter()
            .map(|a| pb::CdiDevice {
                name: a.cdi_name.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Serves one pool's DevicePlugin on its socket until `stop`.
pub async fn serve(
    plugin: PoolPlugin,
    listener: UnixListener,
    path: PathBuf,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(pb::device_plugin_server::DevicePluginServer::new(plugin))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
        .map_err(|source| ServerError::Serve { path, source })
}

/// Registers `resource` (served on socket file `endpoint` of the
/// device-plugins directory) with the kubelet at `kubelet_sock`.
pub async fn register(kubelet_sock: &Path, endpoint: &str, resource: &str) -> Result<(), Status> {
    let mut c =
        pb::registration_client::RegistrationClient::new(unix_channel(kubelet_sock.to_owned()));
    c.register(pb::RegisterRequest {
        version: API_VERSION.into(),
        endpoint: endpoint.into(),
        resource_name: resource.into(),
        options: Some(options()),
    })
    .await?;
    Ok(())
}

/// Every (resource name, device ID) some pod holds, and that pod
/// (`namespace/name`), from one PodResources List; an error when the
/// kubelet could not be asked.
pub async fn list_pod_devices(sock: &Path) -> Result<allocate::Listed, Status> {
    if !sock.exists() {
        return Err(Status::unavailable(format!(
            "{} does not exist",
            sock.display()
        )));
    }
    let mut c = pr::pod_resources_lister_client::PodResourcesListerClient::new(unix_channel(
        sock.to_owned(),
    ));
    let resp = c.list(pr::ListPodResourcesRequest {}).await?.into_inner();
    let mut out = allocate::Listed::new();
    for p in &resp.pod_resources {
        let pod = format!("{}/{}", p.namespace, p.name);
        for d in p.containers.iter().flat_map(|c| &c.devices) {
            for id in &d.device_ids {
                out.insert((d.resource_name.clone(), id.clone()), pod.clone());
            }
        }
    }
    Ok(out)
}
