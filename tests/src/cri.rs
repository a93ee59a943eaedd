//! A CRI client of our own (no crictl package exists for the test
//! machines): the `runtime.v1` RuntimeService subset in
//! `proto/cri/runtime/v1/api.proto`, over containerd's gRPC Unix socket,
//! with blocking calls for the synchronous tests (each call at most
//! [`CALL_LIMIT`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The generated messages and client.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::runtime_service_client::RuntimeServiceClient;

/// How long one CRI call may take.
pub const CALL_LIMIT: Duration = Duration::from_secs(120);

/// A connected RuntimeService client and the runtime that drives it.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI gRPC server on `sock` (containerd's `[grpc]`
    /// address).
    pub fn connect(sock: &Path) -> Result<Cri, tonic::transport::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        let path: PathBuf = sock.to_owned();
        let channel = rt.block_on(async move {
            // The URI is not used: the connector dials the socket.
            Endpoint::from_static("http://[::1]:1")
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let p = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }))
                .await
        })?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Runs `call` on a client; the reply's message, or the gRPC status
    /// (a deadline exceeded after [`CALL_LIMIT`]).
    pub fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = call(self.client.clone());
        self.rt.block_on(async move {
            match tokio::time::timeout(CALL_LIMIT, fut).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no reply in {CALL_LIMIT:?}"
                ))),
            }
        })
    }
}
