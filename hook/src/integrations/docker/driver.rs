//! The Docker driver's calls (libnetwork remote driver protocol) over the
//! engine: networks map to netdev pools, endpoints claim VFs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use slog::{info, warn, Logger};

use super::http::Reply;
use super::store::{self, NetworkEntry, NETWORKS_FILE};
use super::DockerError;

use crate::engine::claim::{ClaimError, Engine};
use crate::error::chain;
use crate::guestnet::{IpCidr, L3Config};
use crate::ifconf::IfConf;
use crate::pci::{IfName, MacAddr};
use crate::policy::config::{MacPolicy, Mode, Pool};
use crate::policy::request::{NetworkRequest, PoolName};
use crate::state::ledger::{Lease, NetdevMove, OwnerCheck};

/// The prefix Docker names the VF's interface with in the container.
pub const DST_PREFIX: &str = "eth";
/// The generic options of `docker network create -o`.
const GENERIC: &str = "com.docker.network.generic";
const VF_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The driver over an engine.
pub struct Driver<'a> {
    engine: &'a Engine<'a>,
    store: PathBuf,
    logger: Logger,
}

/// A network or endpoint id from Docker: 1 to 128 of `[A-Za-z0-9_.-]`,
/// not starting with `.` (a network id names its mark directory).
fn id_field(body: &Value, key: &str) -> Result<String, DockerError> {
    let s = body
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| DockerError::Request(format!("{key}: missing or not a string")))?;
    if s.is_empty()
        || s.len() > 128
        || s.starts_with('.')
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(DockerError::Request(format!(
            "{key}: must be 1 to 128 characters of [A-Za-z0-9_.-], not starting with '.'"
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
    /// The driver's logger.
    pub fn logger(&self) -> &Logger {
        &self.logger
    }

    /// A driver over `engine`, keeping its network map in the engine's
    /// state dir.
    pub fn new(engine: &'a Engine<'a>, logger: Logger) -> Self {
        Driver {
            store: engine.state_dir().join(NETWORKS_FILE),
            engine,
            logger,
        }
    }

    /// The networks this driver knows.
    pub fn networks(&self) -> Result<BTreeMap<String, NetworkEntry>, DockerError> {
        Ok(store::load(&self.store)?.networks)
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
                Err(e) => return Reply::err(400, format!("malformed JSON: {ec}", ec = chain(&e))),
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
                warn!(self.logger, "failed"; "method" => method, "error" => chain(&e));
                Reply::ok(json!({ "Err": chain(&e) }))
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
        let _g = self.engine.host_lock()?;
        let mut store = store::load(&self.store)?;
        store.networks.insert(id.clone(), entry);
        store::save(&self.store, &store)?;
        store::make_mark(&self.engine.state_dir(), &id)?;
        info!(self.logger, "network created"; "network" => id, "pool" => &pool.name);
        Ok(json!({}))
    }

    /// Docker deletes a network only once it has no endpoints left: a
    /// lease still under it was left by a DeleteEndpoint that never reached
    /// us (refused with a 503, or the plugin down). Removing the network's
    /// mark makes such leases dead to gc, which reclaims them.
    fn delete_network(&self, body: &Value) -> Result<Value, DockerError> {
        let id = id_field(body, "NetworkID")?;
        let _g = self.engine.host_lock()?;
        let mut store = store::load(&self.store)?;
        if store.networks.remove(&id).is_some() {
            store::save(&self.store, &store)?;
        }
        store::remove_mark(&self.engine.state_dir(), &id)?;
        Ok(json!({}))
    }

    fn network(&self, id: &str) -> Result<NetworkEntry, DockerError> {
        store::load(&self.store)?
            .networks
            .get(id)
            .cloned()
            .ok_or_else(|| {
                DockerError::Request(format!(
                    "network {id}: not created through this driver (or its state in {} was lost)",
                    self.store.display()
                ))
            })
    }

    fn lease_of(&self, owner: &str) -> Result<Option<Lease>, DockerError> {
        Ok(self.engine.leases_of(owner)?.into_iter().next())
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
            Some(s) => Some(MacAddr::parse_assignable(s).map_err(|e| {
                DockerError::Request(format!("Interface.MacAddress: {ec}", ec = chain(&e)))
            })?),
        };
        // The network and its mark (made here too for a network created
        // before marks existed) under the host lock, against a concurrent
        // DeleteNetwork; a delete after this leaves a lease gc reclaims.
        let (net, mark) = {
            let _g = self.engine.host_lock()?;
            let net = self.network(&nid)?;
            (net, store::make_mark(&self.engine.state_dir(), &nid)?)
        };
        let pool = self.engine.cfg.pool(&net.pool).ok_or_else(|| {
            DockerError::Request(format!(
                "network {nid}: its pool {:?} is no longer configured",
                net.pool
            ))
        })?;
        let pool_name: PoolName = net.pool.parse().map_err(|e| {
            DockerError::Request(format!("pool {:?}: {ec}", net.pool, ec = chain(&e)))
        })?;
        let req = NetworkRequest {
            pool: pool_name,
            mac: given_mac.filter(|_| pool.mac == MacPolicy::Request),
            l3: L3Config::default(),
            vf: None,
        };
        let owner = endpoint_owner(&nid, &eid);
        let claimed =
            self.engine
                .claim(&owner, std::slice::from_ref(&req), OwnerCheck::Bundle(mark))?;
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
        let mut held = self.engine.hold(vf, VF_LOCK_WAIT)?;
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
        if held.lease.mac.is_none() {
            held.lease.mac = link.as_ref().and_then(|k| k.mac);
        }
        held.lease.netdev_move = Some(NetdevMove {
            host_name: name.clone(),
            container_name: name.clone(),
            netns_pid: None,
            original_mtu: link.map(|k| k.mtu),
        });
        held.commit()?;
        Ok(name)
    }
}
