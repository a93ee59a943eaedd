//! The Docker network driver (`kata-sriov docker-plugin`): a libnetwork
//! remote driver on a unix socket (`/run/docker/plugins/kata-sriov.sock`
//! by default; dockerd finds drivers there by name: the socket's name is
//! the driver's name). Networks map to `netdev` pools (`docker network
//! create -d kata-sriov -o pool=fast vfnet`, or `-o pf=ens1f0 -o vlan=100`,
//! resolved to the configured netdev pool with that PF and VLAN); each
//! endpoint claims one VF under the owner `docker/<network>/<endpoint>`,
//! and Docker moves the VF's interface into the container (named `ethN`)
//! and sets the address its IPAM chose, the MAC and the gateway.
//!
//! Files: the socket; `<state_dir>/docker-networks.json` (network → pool
//! and gateways, 0600, replaced atomically), besides the engine's leases.
//! Everything survives a restart of the plugin: endpoints are found again
//! through their leases.
//!
//! The HTTP side is a small blocking HTTP/1.1 server: a thread per
//! connection (at most [`MAX_CONNECTIONS`]) reads one request and writes
//! its reply (`Connection: close`); the calls run one at a time on the
//! thread that owns the engine. POST only, headers at
//! most [`MAX_HEAD`] bytes, bodies at most [`MAX_BODY`] (`Content-Length`
//! or chunked), read and write timeouts. Malformed requests get an HTTP
//! 400 with a JSON `{"Err": ...}`; unknown methods a 404 with one (which
//! libnetwork reads as "not implemented" where that is optional); a
//! request that fails gets a 200 with `{"Err": ...}`, as the remote driver
//! protocol asks.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use slog::{info, warn, Logger};

use crate::atomic::{self, Place};
use crate::claim::{ClaimError, Engine};
use crate::config::{MacPolicy, Mode, Pool};
use crate::guestnet::{IpCidr, L3Config};
use crate::ifconf::IfConf;
use crate::ledger::{self, Lease, LedgerError, NetdevMove, OwnerCheck};
use crate::pci::{IfName, MacAddr};
use crate::request::{NetworkRequest, PoolName};

/// The default socket: the driver is named `kata-sriov`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/kata-sriov.sock";
/// The network → pool map, in the state dir.
pub const NETWORKS_FILE: &str = "docker-networks.json";
/// Largest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Per-connection read/write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The prefix Docker names the VF's interface with in the container.
pub const DST_PREFIX: &str = "eth";
/// The generic options of `docker network create -o`.
const GENERIC: &str = "com.docker.network.generic";
/// After an error reply, at most this much of the rest of a malformed
/// request is read (and dropped), waiting at most this long per read and
/// four times as long in all.
const DRAIN_MAX: u64 = 4 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
const VF_LOCK_WAIT: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Something wrong with the request itself.
    #[error("{0}")]
    Request(String),
}

/// What one network of this driver is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEntry {
    pub pool: String,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub gateway6: Option<IpAddr>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Store {
    networks: BTreeMap<String, NetworkEntry>,
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }
    fn err(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({ "Err": msg.into() }),
        }
    }
}

/// The driver over an engine.
pub struct Driver<'a> {
    engine: &'a Engine<'a>,
    store: PathBuf,
    logger: Logger,
}

/// A network or endpoint id from Docker: 1 to 128 of `[A-Za-z0-9_.-]`.
fn id_field(body: &Value, key: &str) -> Result<String, DockerError> {
    let s = body
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| DockerError::Request(format!("{key}: missing or not a string")))?;
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(DockerError::Request(format!(
            "{key}: must be 1 to 128 characters of [A-Za-z0-9_.-]"
        )));
    }
    Ok(s.to_owned())
}

/// An optional string field ("" counts as absent).
fn opt_str<'v>(v: Option<&'v Value>, what: &str) -> Result<Option<&'v str>, DockerError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DockerError::Request(format!("{what}: not a string"))),
    }
}

/// The first gateway of `IPv4Data`/`IPv6Data` (`"10.0.0.1/24"`).
fn gateway(body: &Value, key: &str) -> Result<Option<IpAddr>, DockerError> {
    let list = match body.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(DockerError::Request(format!("{key}: not a list"))),
    };
    for d in list {
        if let Some(g) = opt_str(d.get("Gateway"), &format!("{key}.Gateway"))? {
            let ip = match g.parse::<IpCidr>() {
                Ok(c) => c.addr,
                Err(_) => g.parse::<IpAddr>().map_err(|_| {
                    DockerError::Request(format!("{key}.Gateway {g:?}: not an IP address"))
                })?,
            };
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// Docker's owner token of an endpoint's lease.
pub fn endpoint_owner(network: &str, endpoint: &str) -> String {
    format!("docker/{network}/{endpoint}")
}

impl<'a> Driver<'a> {
    /// A driver over `engine`, keeping its network map in the engine's
    /// state dir.
    pub fn new(engine: &'a Engine<'a>, logger: Logger) -> Self {
        Driver {
            store: engine.ledger.dir().join(NETWORKS_FILE),
            engine,
            logger,
        }
    }

    fn load(&self) -> Result<Store, DockerError> {
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.store)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Store::default()),
            Err(e) => {
                return Err(DockerError::Io {
                    op: "opening",
                    path: self.store.clone(),
                    source: e,
                })
            }
        };
        let mut s = String::new();
        f.take(MAX_BODY as u64 * 4)
            .read_to_string(&mut s)
            .map_err(|source| DockerError::Io {
                op: "reading",
                path: self.store.clone(),
                source,
            })?;
        serde_json::from_str(&s).map_err(|e| DockerError::Store {
            path: self.store.clone(),
            reason: format!("not a valid network map ({e}); fix or delete it"),
        })
    }

    fn save(&self, store: &Store) -> Result<(), DockerError> {
        let mut data = serde_json::to_vec_pretty(store)
            .map_err(|e| DockerError::Request(format!("encoding the network map: {e}")))?;
        data.push(b'\n');
        atomic::write(&self.store, &data, 0o600, Place::Replace).map_err(|e| DockerError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }

    /// The networks this driver knows.
    pub fn networks(&self) -> Result<BTreeMap<String, NetworkEntry>, DockerError> {
        Ok(self.load()?.networks)
    }

    /// Answers one call (`method` is the path without its `/`, such as
    /// `NetworkDriver.CreateNetwork`; `body` its JSON).
    pub fn handle(&self, method: &str, body: &[u8]) -> Reply {
        let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Map::new())
        } else {
            match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return Reply::err(400, "request body must be a JSON object"),
                Err(e) => return Reply::err(400, format!("malformed JSON: {e}")),
            }
        };
        let r = match method {
            "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver"] })),
            "NetworkDriver.GetCapabilities" => {
                Ok(json!({ "Scope": "local", "ConnectivityScope": "local" }))
            }
            "NetworkDriver.CreateNetwork" => self.create_network(&value),
            "NetworkDriver.DeleteNetwork" => self.delete_network(&value),
            "NetworkDriver.CreateEndpoint" => self.create_endpoint(&value),
            "NetworkDriver.DeleteEndpoint" => self.delete_endpoint(&value),
            "NetworkDriver.EndpointOperInfo" => self.oper_info(&value),
            "NetworkDriver.Join" => self.join(&value),
            "NetworkDriver.Leave"
            | "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.ProgramExternalConnectivity"
            | "NetworkDriver.RevokeExternalConnectivity" => Ok(json!({})),
            other => {
                let shown: String = other.chars().take(64).collect();
                return Reply::err(404, format!("{shown:?}: not implemented by kata-sriov"));
            }
        };
        match r {
            Ok(v) => {
                info!(self.logger, "handled"; "method" => method);
                Reply::ok(v)
            }
            Err(e) => {
                warn!(self.logger, "failed"; "method" => method, "error" => e.to_string());
                Reply::ok(json!({ "Err": e.to_string() }))
            }
        }
    }

    fn netdev_pools(&self) -> String {
        let names: Vec<&str> = self
            .engine
            .cfg
            .pools
            .iter()
            .filter(|p| p.mode == Mode::Netdev)
            .map(|p| p.name.as_str())
            .collect();
        if names.is_empty() {
            "none (add a [[pools]] table with mode = \"netdev\")".into()
        } else {
            names.join(", ")
        }
    }

    /// The pool `-o pool=` names, or the netdev pool with `-o pf=` (and
    /// `-o vlan=`).
    fn pool_for(&self, opts: &Map<String, Value>) -> Result<&'a Pool, DockerError> {
        let mut pool = None;
        let mut pf = None;
        let mut vlan = None;
        for (k, v) in opts {
            let s = v
                .as_str()
                .ok_or_else(|| DockerError::Request(format!("option {k:?}: not a string")))?;
            match k.as_str() {
                "pool" => pool = Some(s),
                "pf" | "pf_iface" => pf = Some(s),
                "vlan" | "vlanid" => {
                    let n: u16 = s.parse().ok().filter(|n| *n < 4095).ok_or_else(|| {
                        DockerError::Request(format!("option vlan={s:?}: must be 0 to 4094"))
                    })?;
                    vlan = Some(n);
                }
                other => {
                    let shown: String = other.chars().take(64).collect();
                    return Err(DockerError::Request(format!(
                        "unknown option {shown:?}; this driver takes pool=NAME, or pf=IFACE with an optional vlan=ID"
                    )));
                }
            }
        }
        let cfg = self.engine.cfg;
        match (pool, pf) {
            (Some(_), Some(_)) => Err(DockerError::Request(
                "give either pool=NAME or pf=IFACE (with vlan=ID), not both".into(),
            )),
            (Some(_), None) if vlan.is_some() => Err(DockerError::Request(
                "vlan= goes with pf=; a pool's VLAN comes from its config".into(),
            )),
            (Some(name), None) => {
                let p = cfg.pool(name).ok_or_else(|| {
                    DockerError::Request(format!(
                        "no pool named {name:?}; netdev pools: {}",
                        self.netdev_pools()
                    ))
                })?;
                if p.mode != Mode::Netdev {
                    return Err(DockerError::Request(format!(
                        "pool {name:?} has mode = \"vfio\"; Docker containers need a pool with mode = \"netdev\" (netdev pools: {})",
                        self.netdev_pools()
                    )));
                }
                Ok(p)
            }
            (None, Some(pf)) => {
                let want = self.engine.sysfs.resolve_pf(pf).ok();
                cfg.pools
                    .iter()
                    .filter(|p| p.mode == Mode::Netdev)
                    .filter(|p| p.vlan.map(|v| v.get()).filter(|v| *v != 0) == vlan.filter(|v| *v != 0))
                    .find(|p| {
                        p.pfs.iter().any(|x| {
                            x == pf
                                || want.is_some()
                                    && self.engine.sysfs.resolve_pf(x).ok() == want
                        })
                    })
                    .ok_or_else(|| {
                        DockerError::Request(format!(
                            "no netdev pool has PF {pf:?} with {}; add one to the config or use pool=NAME (netdev pools: {})",
                            match vlan {
                                Some(v) if v != 0 => format!("vlan = {v}"),
                                _ => "no VLAN".into(),
                            },
                            self.netdev_pools()
                        ))
                    })
            }
            (None, None) => Err(DockerError::Request(format!(
                "no pool chosen: docker network create -d <this driver> -o pool=NAME (netdev pools: {})",
                self.netdev_pools()
            ))),
        }
    }

    fn create_network(&self, body: &Value) -> Result<Value, DockerError> {
        let id = id_field(body, "NetworkID")?;
        let opts = match body.get("Options").and_then(|o| o.get(GENERIC)) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(DockerError::Request(format!(
                    "Options.{GENERIC}: not an object"
                )))
            }
        };
        let pool = self.pool_for(&opts)?;
        let entry = NetworkEntry {
            pool: pool.name.clone(),
            gateway: gateway(body, "IPv4Data")?,
            gateway6: gateway(body, "IPv6Data")?,
        };
        let _g = self.engine.ledger.lock_global()?;
        let mut store = self.load()?;
        store.networks.insert(id.clone(), entry);
        self.save(&store)?;
        info!(self.logger, "network created"; "network" => id, "pool" => &pool.name);
        Ok(json!({}))
    }

    fn delete_network(&self, body: &Value) -> Result<Value, DockerError> {
        let id = id_field(body, "NetworkID")?;
        let _g = self.engine.ledger.lock_global()?;
        let mut store = self.load()?;
        if store.networks.remove(&id).is_some() {
            self.save(&store)?;
        }
        Ok(json!({}))
    }

    fn network(&self, id: &str) -> Result<NetworkEntry, DockerError> {
        self.load()?.networks.get(id).cloned().ok_or_else(|| {
            DockerError::Request(format!(
                "network {id}: not created through this driver (or its state in {} was lost)",
                self.store.display()
            ))
        })
    }

    fn lease_of(&self, owner: &str) -> Result<Option<Lease>, DockerError> {
        Ok(self
            .engine
            .ledger
            .list()?
            .into_iter()
            .filter_map(|e| e.lease.ok())
            .find(|l| l.owner == owner))
    }

    fn create_endpoint(&self, body: &Value) -> Result<Value, DockerError> {
        let nid = id_field(body, "NetworkID")?;
        let eid = id_field(body, "EndpointID")?;
        let iface = body.get("Interface");
        let given_mac = match opt_str(
            iface.and_then(|i| i.get("MacAddress")),
            "Interface.MacAddress",
        )? {
            None => None,
            Some(s) => Some(
                MacAddr::parse_assignable(s)
                    .map_err(|e| DockerError::Request(format!("Interface.MacAddress: {e}")))?,
            ),
        };
        let net = self.network(&nid)?;
        let pool = self.engine.cfg.pool(&net.pool).ok_or_else(|| {
            DockerError::Request(format!(
                "network {nid}: its pool {:?} is no longer configured",
                net.pool
            ))
        })?;
        let pool_name: PoolName = net
            .pool
            .parse()
            .map_err(|e| DockerError::Request(format!("pool {:?}: {e}", net.pool)))?;
        let req = NetworkRequest {
            pool: pool_name,
            mac: given_mac.filter(|_| pool.mac == MacPolicy::Request),
            l3: L3Config::default(),
            vf: None,
        };
        let owner = endpoint_owner(&nid, &eid);
        let claimed = self
            .engine
            .claim(&owner, std::slice::from_ref(&req), OwnerCheck::None)?;
        let Some(c) = claimed.into_iter().next() else {
            return Err(DockerError::Request("the claim returned no VF".into()));
        };
        let mac = c.mac.or_else(|| {
            let name = c.netdev.as_ref()?;
            IfConf::open().ok()?.link_by_name(name.as_str()).ok()??.mac
        });
        info!(self.logger, "endpoint created"; "endpoint" => &eid, "vf" => c.vf.to_string(),
            "netdev" => c.netdev.as_ref().map(|n| n.to_string()));
        Ok(match (given_mac, mac) {
            (None, Some(m)) => json!({ "Interface": { "MacAddress": m.to_string() } }),
            _ => json!({}),
        })
    }

    fn delete_endpoint(&self, body: &Value) -> Result<Value, DockerError> {
        let nid = id_field(body, "NetworkID")?;
        let eid = id_field(body, "EndpointID")?;
        let done = self.engine.release(&endpoint_owner(&nid, &eid))?;
        info!(self.logger, "endpoint deleted"; "endpoint" => &eid, "released" => done.len());
        Ok(json!({}))
    }

    fn oper_info(&self, body: &Value) -> Result<Value, DockerError> {
        let nid = id_field(body, "NetworkID")?;
        let eid = id_field(body, "EndpointID")?;
        let Some(l) = self.lease_of(&endpoint_owner(&nid, &eid))? else {
            return Ok(json!({ "Value": {} }));
        };
        let mut v = json!({ "vf": l.vf.to_string(), "pool": l.pool, "pf": l.pf.to_string() });
        if let Some(mv) = &l.netdev_move {
            v["netdev"] = json!(mv.host_name.to_string());
        }
        if let Some(m) = l.mac {
            v["mac"] = json!(m.to_string());
        }
        Ok(json!({ "Value": v }))
    }

    fn join(&self, body: &Value) -> Result<Value, DockerError> {
        let nid = id_field(body, "NetworkID")?;
        let eid = id_field(body, "EndpointID")?;
        let net = self.network(&nid)?;
        let owner = endpoint_owner(&nid, &eid);
        let lease = self.lease_of(&owner)?.ok_or_else(|| {
            DockerError::Request(format!("endpoint {eid}: holds no VF (was it created?)"))
        })?;
        let name = self.host_netdev(&lease)?;
        let mut out = json!({
            "InterfaceName": { "SrcName": name.to_string(), "DstPrefix": DST_PREFIX },
        });
        if let Some(g) = net.gateway {
            out["Gateway"] = json!(g.to_string());
        }
        if let Some(g) = net.gateway6 {
            out["GatewayIPv6"] = json!(g.to_string());
        }
        Ok(out)
    }

    /// The VF's interface on the host, recorded in its lease (Docker moves
    /// it into the container under `ethN` and back under this name).
    fn host_netdev(&self, lease: &Lease) -> Result<IfName, DockerError> {
        if let Some(mv) = &lease.netdev_move {
            return Ok(mv.host_name.clone());
        }
        let vf = lease.vf;
        let _guard = self
            .engine
            .ledger
            .lock_vf(vf, VF_LOCK_WAIT)?
            .ok_or(ClaimError::Busy { vf })?;
        let mut l = self
            .engine
            .ledger
            .read(vf)?
            .ok_or_else(|| DockerError::Request(format!("{vf}: its lease disappeared")))?;
        let name = self
            .engine
            .sysfs
            .netdevs(vf)
            .map_err(ClaimError::from)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                DockerError::Request(format!(
                    "{vf}: has no network interface on the host (is its driver loaded?)"
                ))
            })?;
        let link = IfConf::open()
            .ok()
            .and_then(|c| c.link_by_name(name.as_str()).ok().flatten());
        if l.mac.is_none() {
            l.mac = link.as_ref().and_then(|k| k.mac);
        }
        l.netdev_move = Some(NetdevMove {
            host_name: name.clone(),
            container_name: name.clone(),
            netns_pid: None,
            original_mtu: link.map(|k| k.mtu),
        });
        l.updated = ledger::now_secs();
        self.engine.ledger.update(&l)?;
        Ok(name)
    }
}

/// Binds the driver's socket at `path`: creates its directory, replaces a
/// stale socket (never any other kind of file), makes it 0600.
pub fn bind(path: &Path) -> Result<UnixListener, DockerError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| DockerError::Io {
            op,
            path: p,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            fs::remove_file(path).map_err(io("removing", path))?
        }
        Ok(_) => {
            return Err(DockerError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", path)(e)),
    }
    let l = UnixListener::bind(path).map_err(io("binding", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io("chmod", path))?;
    Ok(l)
}

/// Serves connections until accepting fails for good. Each connection is
/// read and answered on its own thread (at most [`MAX_CONNECTIONS`] at
/// once; more get a 503), so a slow or silent client holds up no one;
/// the calls themselves run one at a time on the calling thread, which
/// owns the engine. Transient accept errors (an aborted connection, a
/// signal, a full fd table) are logged and retried.
pub fn serve(listener: &UnixListener, driver: &Driver<'_>) -> io::Result<()> {
    type Job = (Request, mpsc::SyncSender<Reply>);
    let (tx, rx) = mpsc::channel::<Job>();
    let logger = driver.logger.clone();
    std::thread::scope(|s| {
        let acceptor = s.spawn(move || accept_loop(listener, &tx, &logger));
        for (req, back) in rx {
            let _ = back.send(driver.handle(&req.path, &req.body));
        }
        acceptor
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the accepting thread panicked")))
    })
}

/// Connections open at once; more are refused with a 503.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a refused connection's input is read before closing it.
const REJECT_DRAIN: Duration = Duration::from_millis(100);

fn accept_loop(
    listener: &UnixListener,
    tx: &mpsc::Sender<(Request, mpsc::SyncSender<Reply>)>,
    logger: &Logger,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::ECONNABORTED
                            | libc::EINTR
                            | libc::EMFILE
                            | libc::ENFILE
                            | libc::ENOBUFS
                            | libc::ENOMEM
                    )
                ) =>
            {
                warn!(logger, "accept failed; retrying"; "error" => e.to_string());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let mut w = &stream;
            let _ = write_reply(&mut w, &Reply::err(503, "too many connections; try again"));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Drop what the client sends (briefly: this holds up accepting,
            // under overload only), so that closing does not reset it
            // before it reads the reply.
            if stream.set_read_timeout(Some(REJECT_DRAIN)).is_ok() {
                let mut buf = [0u8; 8192];
                let mut r = &stream;
                let mut total = 0;
                while total < MAX_HEAD + MAX_BODY {
                    match r.read(&mut buf) {
                        Ok(n) if n > 0 => total += n,
                        _ => break,
                    }
                }
            }
            continue;
        }
        let tx = tx.clone();
        let active = Arc::clone(&active);
        let conn_logger = logger.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                let handler = |path: &str, body: &[u8]| {
                    let (back, answer) = mpsc::sync_channel(1);
                    let req = Request {
                        path: path.to_owned(),
                        body: body.to_vec(),
                    };
                    if tx.send((req, back)).is_err() {
                        return Reply::err(503, "the plugin is shutting down");
                    }
                    answer
                        .recv()
                        .unwrap_or_else(|_| Reply::err(500, "the call was dropped"))
                };
                if let Err(e) = serve_conn(&stream, &handler) {
                    warn!(conn_logger, "connection dropped"; "error" => e.to_string());
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            warn!(logger, "cannot start a connection thread"; "error" => e.to_string());
        }
    }
}

/// A parsed request: method path (without `/`) and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one request; Err(reply) for a malformed one.
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request, Reply> {
    let mut head = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEAD + 1).saturating_sub(head.len()) as u64;
        let n = r
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| Reply::err(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Reply::err(
                400,
                "connection closed before the end of the headers",
            ));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD || !line.ends_with(b"\n") {
            return Err(Reply::err(
                431,
                format!("request headers over {MAX_HEAD} bytes"),
            ));
        }
        let text = String::from_utf8(line)
            .map_err(|_| Reply::err(400, "request headers are not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']).to_owned();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // tolerate empty lines before the request line
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reply::err(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Reply::err(505, "only HTTP/1.x is spoken here"));
    }
    if method != "POST" {
        return Err(Reply::err(405, "only POST is supported"));
    }
    let Some(path) = target.strip_prefix('/') else {
        return Err(Reply::err(400, "request target must start with '/'"));
    };
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for h in &lines[1..] {
        let Some((k, v)) = h.split_once(':') else {
            return Err(Reply::err(400, "malformed header line"));
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| Reply::err(400, "Content-Length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Reply::err(400, "conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            if !v.eq_ignore_ascii_case("chunked") {
                return Err(Reply::err(
                    501,
                    format!("Transfer-Encoding {v:?} is not supported"),
                ));
            }
            chunked = true;
        }
    }
    let body = if chunked {
        if length.is_some() {
            return Err(Reply::err(400, "both Content-Length and chunked encoding"));
        }
        read_chunked(r)?
    } else {
        let n = length.unwrap_or(0);
        if n > MAX_BODY {
            return Err(Reply::err(
                413,
                format!("request body over {MAX_BODY} bytes"),
            ));
        }
        let mut b = vec![0u8; n];
        r.read_exact(&mut b)
            .map_err(|e| Reply::err(400, format!("reading the body: {e}")))?;
        b
    };
    Ok(Request {
        path: path.to_owned(),
        body,
    })
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        r.by_ref()
            .take(64)
            .read_until(b'\n', &mut line)
            .map_err(|e| Reply::err(400, format!("reading a chunk: {e}")))?;
        let s = std::str::from_utf8(&line)
            .map_err(|_| Reply::err(400, "malformed chunk size"))?
            .trim();
        let size = s.split(';').next().unwrap_or("");
        let n =
            usize::from_str_radix(size, 16).map_err(|_| Reply::err(400, "malformed chunk size"))?;
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = Vec::new();
                let got = r
                    .by_ref()
                    .take(MAX_HEAD as u64)
                    .read_until(b'\n', &mut t)
                    .map_err(|e| Reply::err(400, format!("reading trailers: {e}")))?;
                if got == 0 || t == b"\r\n" || t == b"\n" {
                    return Ok(body);
                }
            }
        }
        if body.len() + n > MAX_BODY {
            return Err(Reply::err(
                413,
                format!("request body over {MAX_BODY} bytes"),
            ));
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])
            .map_err(|e| Reply::err(400, format!("reading a chunk: {e}")))?;
        let mut crlf = Vec::new();
        r.by_ref()
            .take(2)
            .read_until(b'\n', &mut crlf)
            .map_err(|e| Reply::err(400, format!("reading a chunk: {e}")))?;
    }
}

/// Writes a reply with `Connection: close`.
pub fn write_reply<W: Write>(w: &mut W, reply: &Reply) -> io::Result<()> {
    let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Serves one connection: one request, one reply.
pub fn serve_conn(stream: &UnixStream, handler: &dyn Fn(&str, &[u8]) -> Reply) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let (reply, malformed) = match read_request(&mut reader) {
        Ok(req) => (handler(&req.path, &req.body), false),
        Err(reply) => (reply, true),
    };
    let mut w = stream;
    write_reply(&mut w, &reply)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if malformed {
        // Closing a unix socket with unread input resets the peer before
        // it reads the reply: read (and drop) what it still sends, bounded.
        let _ = stream.set_read_timeout(Some(DRAIN_TIMEOUT));
        let start = std::time::Instant::now();
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        while total < DRAIN_MAX && start.elapsed() < DRAIN_TIMEOUT * 4 {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, Reply> {
        read_request(&mut BufReader::new(raw))
    }

    #[test]
    fn requests_parse_with_length_and_chunks() {
        let r =
            parse(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(r.path, "Plugin.Activate");
        assert_eq!(r.body, b"{}");
        let r = parse(b"POST /NetworkDriver.Join HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        let r = parse(b"POST /X HTTP/1.0\n\n").unwrap();
        assert_eq!(r.body, b"");
    }

    #[test]
    fn malformed_requests_get_an_error_reply() {
        let cases: Vec<(&[u8], u16)> = vec![
            (b"", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 405),
            (b"POST x HTTP/1.1\r\n\r\n", 400),
            (b"POST / HTTP/2\r\n\r\n", 505),
            (b"POST / HTTP/1.1 extra\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n",
                413,
            ),
            (b"POST / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\n\xff\xfe: x\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let e = parse(raw).unwrap_err();
            assert_eq!(e.status, status, "{:?}", String::from_utf8_lossy(raw));
            assert!(e.body["Err"].as_str().is_some_and(|s| !s.is_empty()));
        }
        let mut big = b"POST / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(parse(&big).unwrap_err().status, 431);
    }

    #[test]
    fn a_connection_gets_one_reply_and_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_conn(&b, &|m, body| {
                Reply::ok(json!({ "method": m, "len": body.len() }))
            })
            .unwrap();
        });
        let mut w = &a;
        w.write_all(b"POST /NetworkDriver.Leave HTTP/1.1\r\nContent-Length: 3\r\n\r\n{ }")
            .unwrap();
        let mut out = String::new();
        (&a).read_to_string(&mut out).unwrap();
        t.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        assert!(
            out.ends_with("{\"method\":\"NetworkDriver.Leave\",\"len\":3}"),
            "{out}"
        );
    }
}
