//! The kubelet-facing gRPC services on unix sockets: plugin registration
//! (`pluginregistration.Registration` on `<plugins_registry>/<driver>-reg.sock`)
//! and the DRA service (`DRAPlugin` v1 and v1beta1 on
//! `<plugins>/<driver>/dra.sock`). Each claim of a request is prepared or
//! unprepared on its own; a failure is reported in that claim's `error`,
//! never as a failed call, so the kubelet retries only what failed.

use kata_sriov::chain;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::Api;
use prost::Message;
use slog::{error, info, warn, Logger};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::host::{Host, Settings};
use crate::prepare;
use crate::proto::dra_v1 as v1;
use crate::proto::dra_v1beta1 as v1beta1;
use crate::proto::pluginregistration as reg;

/// The plugin type the kubelet's DRA manager handles.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The service versions served on the DRA socket.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["v1.DRAPlugin", "v1beta1.DRAPlugin"];

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving gRPC on {path}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// Binds a unix socket at `path`, replacing a stale one (the kubelet's
/// convention: a plugin owns its socket path).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |op| {
        move |source| ServerError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating directory for"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing stale socket")(e)),
    }
    UnixListener::bind(path).map_err(io("binding"))
}

/// The Registration service.
pub struct Registration {
    pub settings: Settings,
    pub log: Logger,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _req: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: self.settings.driver.clone(),
            endpoint: self.settings.dra_socket().to_string_lossy().into_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let st = req.into_inner();
        if st.plugin_registered {
            info!(self.log, "registered with the kubelet");
        } else {
            error!(self.log, "the kubelet refused the registration"; "error" => st.error);
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// The DRA service, v1; v1beta1 is the same messages under another
/// package and is served by re-encoding into v1.
#[derive(Clone)]
pub struct Dra {
    pub host: Arc<Host>,
    pub settings: Settings,
    pub client: kube::Client,
    pub log: Logger,
}

impl Dra {
    async fn prepare_one(&self, c: &v1::Claim) -> v1::NodePrepareResourceResponse {
        let fail = |error: String| v1::NodePrepareResourceResponse {
            devices: Vec::new(),
            error,
        };
        if let Err(e) = crate::names::check_claim_ref(&c.namespace, &c.name) {
            return fail(chain(&e));
        }
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &c.namespace);
        let claim = match api.get(&c.name).await {
            Ok(claim) => claim,
            Err(e) => {
                return fail(format!(
                    "reading ResourceClaim {}/{}: {ec}",
                    c.namespace,
                    c.name,
                    ec = chain(&e)
                ))
            }
        };
        let (host, settings, uid) = (self.host.clone(), self.settings.clone(), c.uid.clone());
        let done =
            tokio::task::spawn_blocking(move || prepare::prepare(&host, &settings, &uid, &claim))
                .await;
        match done {
            Ok(Ok(devices)) => {
                info!(self.log, "prepared"; "claim" => format!("{}/{}", c.namespace, c.name),
                      "uid" => &c.uid, "devices" => devices.len());
                v1::NodePrepareResourceResponse {
                    devices: devices
                        .into_iter()
                        .map(|d| v1::Device {
                            request_names: vec![d.request],
                            pool_name: d.pool,
                            device_name: d.device,
                            cdi_device_ids: vec![d.cdi_id],
                        })
                        .collect(),
                    error: String::new(),
                }
            }
            Ok(Err(e)) => {
                warn!(self.log, "prepare failed"; "uid" => &c.uid, "error" => chain(&e));
                fail(chain(&e))
            }
            Err(e) => fail(format!(
                "prepare of claim {} did not finish: {ec}",
                c.uid,
                ec = chain(&e)
            )),
        }
    }

    async fn unprepare_one(&self, c: &v1::Claim) -> v1::NodeUnprepareResourceResponse {
        let (host, settings, uid) = (self.host.clone(), self.settings.clone(), c.uid.clone());
        let done =
            tokio::task::spawn_blocking(move || prepare::unprepare(&host, &settings, &uid)).await;
        let error = match done {
            Ok(Ok(vfs)) => {
                info!(self.log, "unprepared"; "uid" => &c.uid, "released" => vfs.len());
                String::new()
            }
            Ok(Err(e)) => {
                warn!(self.log, "unprepare failed"; "uid" => &c.uid, "error" => chain(&e));
                chain(&e)
            }
            Err(e) => format!(
                "unprepare of claim {} did not finish: {ec}",
                c.uid,
                ec = chain(&e)
            ),
        };
        v1::NodeUnprepareResourceResponse { error }
    }

    pub async fn prepare(
        &self,
        req: v1::NodePrepareResourcesRequest,
    ) -> v1::NodePrepareResourcesResponse {
        let mut claims = HashMap::new();
        for c in &req.claims {
            let r = self.prepare_one(c).await;
            claims.insert(c.uid.clone(), r);
        }
        v1::NodePrepareResourcesResponse { claims }
    }

    pub async fn unprepare(
        &self,
        req: v1::NodeUnprepareResourcesRequest,
    ) -> v1::NodeUnprepareResourcesResponse {
        let mut claims = HashMap::new();
        for c in &req.claims {
            let r = self.unprepare_one(c).await;
            claims.insert(c.uid.clone(), r);
        }
        v1::NodeUnprepareResourcesResponse { claims }
    }
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for Dra {
    async fn node_prepare_resources(
        &self,
        req: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        Ok(Response::new(self.prepare(req.into_inner()).await))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        Ok(Response::new(self.unprepare(req.into_inner()).await))
    }
}

/// Re-encodes a message as another with the same fields and numbers.
fn recode<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| {
        Status::internal(format!(
            "re-encoding between DRA API versions: {ec}",
            ec = chain(&e)
        ))
    })
}

/// The v1beta1 service over the same [`Dra`].
#[derive(Clone)]
pub struct DraBeta(pub Dra);

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraBeta {
    async fn node_prepare_resources(
        &self,
        req: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let r = self.0.prepare(recode(req.get_ref())?).await;
        Ok(Response::new(recode(&r)?))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let r = self.0.unprepare(recode(req.get_ref())?).await;
        Ok(Response::new(recode(&r)?))
    }
}

/// Serves the DRA service (v1 and v1beta1) on its socket until `stop`.
pub async fn serve_dra(
    dra: Dra,
    listener: UnixListener,
    path: PathBuf,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(v1::dra_plugin_server::DraPluginServer::new(dra.clone()))
        .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(DraBeta(
            dra,
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
        .map_err(|source| ServerError::Serve { path, source })
}

/// Serves the Registration service on its socket until `stop`.
pub async fn serve_registration(
    r: Registration,
    listener: UnixListener,
    path: PathBuf,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    tonic::transport::Server::builder()
        .add_service(reg::registration_server::RegistrationServer::new(r))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
        .map_err(|source| ServerError::Serve { path, source })
}
