//! Test support for the DRA agent, behind the `fakes` feature: a stand-in
//! for the API server at the HTTP level (the paths and JSON kube-rs sends
//! and expects for the objects the agent uses, every body checked by
//! parsing it as the k8s-openapi type), the kubelet's side of plugin
//! registration and of the DRA gRPC service on the plugin sockets, and an
//! allocated ResourceClaim builder. Nothing of Kubernetes itself runs on
//! these machines (no kubelet or kube-apiserver is packaged), so the
//! agent's tests and the SR-IOV lab's client (`dra-kubelet` in the tests
//! crate) play both. A failed step panics: this is test code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceAllocationConfiguration, DeviceAllocationResult,
    DeviceRequestAllocationResult, OpaqueDeviceConfiguration, ResourceClaim, ResourceClaimStatus,
    ResourceSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

use crate::proto::{dra_v1, dra_v1beta1, pluginregistration as reg};

pub const DRIVER: &str = "kata-sriov.io";
pub const NODE: &str = "node-1";
pub const NODE_UID: &str = "6d1f2a9e-0000-4000-8000-00000000aaaa";

/// One request the stand-in API server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
}

#[derive(Default)]
pub struct ApiState {
    pub claims: BTreeMap<(String, String), ResourceClaim>,
    pub slices: BTreeMap<String, ResourceSlice>,
    pub seen: Vec<Seen>,
    rv: u64,
    /// Answer every request with 503 (an API server that is away).
    pub down: bool,
}

/// The stand-in API server.
pub struct ApiServer {
    pub addr: std::net::SocketAddr,
    pub state: Arc<Mutex<ApiState>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":message,"reason":reason,"code":code}),
    )
}

fn node() -> Value {
    serde_json::to_value(Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            uid: Some(NODE_UID.into()),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    })
    .or_panic()
}

impl ApiState {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn handle(&mut self, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        self.seen.push(Seen {
            method: method.into(),
            path: path.into(),
            query: query.into(),
        });
        if self.down {
            return status(503, "ServiceUnavailable", "down for the test");
        }
        const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["api", "v1", "nodes", name]) if *name == NODE => (200, node()),
            ("GET", ["api", "v1", "nodes", _]) => status(404, "NotFound", "no such node"),
            (
                "GET",
                ["apis", "resource.k8s.io", "v1", "namespaces", ns, "resourceclaims", name],
            ) => match self.claims.get(&(ns.to_string(), name.to_string())) {
                Some(c) => (200, serde_json::to_value(c).or_panic()),
                None => status(404, "NotFound", "resourceclaims not found"),
            },
            ("GET", _) if path == SLICES => {
                let sel = query_param(query, "fieldSelector").unwrap_or_default();
                let items: Vec<&ResourceSlice> = self
                    .slices
                    .values()
                    .filter(|s| {
                        sel.split(',').all(|term| match term.split_once('=') {
                            Some(("spec.nodeName", v)) => s.spec.node_name.as_deref() == Some(v),
                            Some(("spec.driver", v)) => s.spec.driver == v,
                            _ => term.is_empty(),
                        })
                    })
                    .collect();
                let rv = self.rv.to_string();
                (
                    200,
                    json!({"apiVersion":"resource.k8s.io/v1","kind":"ResourceSliceList",
                           "metadata":{"resourceVersion":rv},"items":items}),
                )
            }
            ("POST", _) if path == SLICES => {
                let mut s: ResourceSlice = match serde_json::from_slice(body) {
                    Ok(s) => s,
                    Err(e) => {
                        return status(400, "BadRequest", &format!("not a ResourceSlice: {e}"))
                    }
                };
                let name = s.metadata.name.clone().unwrap_or_default();
                if self.slices.contains_key(&name) {
                    return status(409, "AlreadyExists", "resourceslices already exists");
                }
                s.metadata.resource_version = Some(self.next_rv());
                s.metadata.uid = Some(format!("slice-uid-{name}"));
                self.slices.insert(name, s.clone());
                (201, serde_json::to_value(s).or_panic())
            }
            ("PUT", ["apis", "resource.k8s.io", "v1", "resourceslices", name]) => {
                let mut s: ResourceSlice = match serde_json::from_slice(body) {
                    Ok(s) => s,
                    Err(e) => {
                        return status(400, "BadRequest", &format!("not a ResourceSlice: {e}"))
                    }
                };
                let Some(cur) = self.slices.get(*name) else {
                    return status(404, "NotFound", "resourceslices not found");
                };
                if s.metadata.resource_version != cur.metadata.resource_version {
                    return status(409, "Conflict", "the object has been modified");
                }
                s.metadata.uid = cur.metadata.uid.clone();
                s.metadata.resource_version = Some(self.next_rv());
                self.slices.insert(name.to_string(), s.clone());
                (200, serde_json::to_value(s).or_panic())
            }
            ("DELETE", ["apis", "resource.k8s.io", "v1", "resourceslices", name]) => {
                match self.slices.remove(*name) {
                    Some(s) => (200, serde_json::to_value(s).or_panic()),
                    None => status(404, "NotFound", "resourceslices not found"),
                }
            }
            _ => status(
                404,
                "NotFound",
                &format!("the stand-in does not serve {method} {path}"),
            ),
        }
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_conn(stream: TcpStream, state: Arc<Mutex<ApiState>>) {
    let mut reader = BufReader::new(stream.try_clone().or_panic());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut it = line.split_whitespace();
        let (method, target) = (
            it.next().unwrap_or_default().to_owned(),
            it.next().unwrap_or_default().to_owned(),
        );
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                assert!(
                    !(k.eq_ignore_ascii_case("transfer-encoding")),
                    "the stand-in expects sized bodies"
                );
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (code, v) = state.lock().or_panic().handle(&method, path, query, &body);
        let text = serde_json::to_vec(&v).or_panic();
        let head = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        // One write: head and body in two segments would wait for the
        // client's delayed ACK (Nagle), 40 ms per request.
        let mut reply = head.into_bytes();
        reply.extend_from_slice(&text);
        if out.write_all(&reply).is_err() {
            return;
        }
    }
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let l = TcpListener::bind("127.0.0.1:0").or_panic();
        let addr = l.local_addr().or_panic();
        let state = Arc::new(Mutex::new(ApiState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve_conn(s, st));
            }
        });
        ApiServer { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(self.url().parse().or_panic());
        kube::Client::try_from(cfg).or_panic()
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\nusers:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n",
            self.url()
        );
        std::fs::write(path, text).or_panic();
    }

    pub fn add_claim(&self, c: ResourceClaim) {
        let key = (
            c.metadata.namespace.clone().or_panic(),
            c.metadata.name.clone().or_panic(),
        );
        self.state.lock().or_panic().claims.insert(key, c);
    }

    pub fn slices(&self) -> BTreeMap<String, ResourceSlice> {
        self.state.lock().or_panic().slices.clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().or_panic().seen.clone()
    }

    /// Waits (async) until `f` holds for the published slices.
    pub async fn wait_for_slices(
        &self,
        what: &str,
        mut f: impl FnMut(&BTreeMap<String, ResourceSlice>) -> bool,
    ) -> BTreeMap<String, ResourceSlice> {
        let start = Instant::now();
        loop {
            let s = self.slices();
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: slices never matched: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A claim allocated to `devices` (DRA pool, device name) of our driver,
/// with optional opaque parameters for request "vf".
pub fn claim(
    ns: &str,
    name: &str,
    uid: &str,
    devices: &[(&str, &str)],
    params: Option<Value>,
) -> ResourceClaim {
    let results = devices
        .iter()
        .enumerate()
        .map(|(i, (pool, dev))| DeviceRequestAllocationResult {
            request: if i == 0 {
                "vf".into()
            } else {
                format!("vf{i}")
            },
            driver: DRIVER.into(),
            pool: (*pool).into(),
            device: (*dev).into(),
            ..DeviceRequestAllocationResult::default()
        })
        .collect();
    let config = params.map(|p| {
        vec![DeviceAllocationConfiguration {
            source: "FromClaim".into(),
            requests: Some(vec!["vf".into()]),
            opaque: Some(OpaqueDeviceConfiguration {
                driver: DRIVER.into(),
                parameters: RawExtension(p),
            }),
        }]
    });
    ResourceClaim {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        spec: Default::default(),
        status: Some(ResourceClaimStatus {
            allocation: Some(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    config,
                    results: Some(results),
                }),
                ..AllocationResult::default()
            }),
            ..ResourceClaimStatus::default()
        }),
    }
}

/// A Unix-socket gRPC channel.
pub async fn unix_channel(path: PathBuf) -> Channel {
    Endpoint::try_from("http://[::1]:1")
        .or_panic()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .or_panic()
}

/// What the test's kubelet learnt at registration.
pub struct Registered {
    pub info: reg::PluginInfo,
    pub v1: dra_v1::dra_plugin_client::DraPluginClient<Channel>,
    pub v1beta1: dra_v1beta1::dra_plugin_client::DraPluginClient<Channel>,
}

/// Plays the kubelet's plugin watcher: waits for a socket to appear in
/// the registration directory, calls GetInfo, reports the registration
/// and connects to the endpoint the plugin named.
pub async fn kubelet_register(registry: &Path, limit: Duration) -> Registered {
    let start = Instant::now();
    let sock = loop {
        let found = std::fs::read_dir(registry).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
            })
        });
        if let Some(s) = found {
            break s;
        }
        assert!(
            start.elapsed() < limit,
            "no registration socket in {registry:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut r = reg::registration_client::RegistrationClient::new(unix_channel(sock).await);
    let info = r
        .get_info(reg::InfoRequest {})
        .await
        .or_panic()
        .into_inner();
    r.notify_registration_status(reg::RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .or_panic();
    let ep = PathBuf::from(&info.endpoint);
    let ch = unix_channel(ep).await;
    Registered {
        info,
        v1: dra_v1::dra_plugin_client::DraPluginClient::new(ch.clone()),
        v1beta1: dra_v1beta1::dra_plugin_client::DraPluginClient::new(ch),
    }
}

pub fn v1_claim(ns: &str, name: &str, uid: &str) -> dra_v1::Claim {
    dra_v1::Claim {
        namespace: ns.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

/// NodePrepareResources (v1) of one claim, as the kubelet sends it; the
/// claim's answer.
pub async fn kubelet_prepare(
    r: &mut Registered,
    ns: &str,
    name: &str,
    uid: &str,
) -> dra_v1::NodePrepareResourceResponse {
    let resp =
        r.v1.node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: vec![v1_claim(ns, name, uid)],
        })
        .await
        .or_panic()
        .into_inner();
    assert_eq!(resp.claims.len(), 1, "{resp:?}");
    resp.claims.get(uid).cloned().or_panic()
}

/// NodeUnprepareResources (v1) of claim `uid`; the claim's error ("" for none).
pub async fn kubelet_unprepare(r: &mut Registered, uid: &str) -> String {
    let resp =
        r.v1.node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest {
            claims: vec![v1_claim("default", "x", uid)],
        })
        .await
        .or_panic()
        .into_inner();
    resp.claims.get(uid).or_panic().error.clone()
}

/// `unwrap` for test support (the workspace denies `unwrap` outside tests).
trait OrPanic<T> {
    fn or_panic(self) -> T;
}

impl<T, E: std::fmt::Display> OrPanic<T> for Result<T, E> {
    fn or_panic(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<T> OrPanic<T> for Option<T> {
    fn or_panic(self) -> T {
        self.unwrap_or_else(|| panic!("a value the test needs is missing"))
    }
}
