//! Kata's DAN ("directly attachable network") file: with `guest = "dan"`,
//! instead of the guest annotation and a `/dev/vfio` device in the spec, the
//! shim writes `<dan_conf>/<sandbox-id>.json` naming each pre-bound VFIO VF
//! with its guest MAC, addresses, routes and MTU; Kata's Go runtime (4.0+)
//! hot-plugs the VFs and its agent configures them, so stock guest images
//! work. Kata reads the file once, at the sandbox's Create, and never
//! deletes it: we own it. Files touched: `<dan_conf>/<sandbox-id>.json` and
//! a temp file beside it.
//!
//! Schema (Kata `src/runtime/virtcontainers/types/dan.go`):
//! `{"devices":[{"name","guest_mac","device":{"type":"vfio","pci_device_id":BDF},
//! "network_info":{"interface":{"ip_addresses":[CIDR],"mtu":N},
//! "routes":[{"dest"?: CIDR,"gateway": IP}],"neighbors":[]}}]}`.
//! Every route carries a gateway (Kata takes the family from it) and the
//! MTU is always set (Go has no default).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::engine::claim::ClaimedVf;
use crate::error::IoError;
use crate::state::atomic::{self, Place};

/// MTU written when neither the request nor the pool sets one.
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum DanError {
    #[error("guest = \"dan\": {vf} has no MAC to give the guest (Kata requires guest_mac); use mac = \"generate\" or \"request\" for pool {pool:?}")]
    NoMac { vf: String, pool: String },
    #[error("guest = \"dan\": route to {dst} has no gateway; Kata's DAN routes need one (it takes the address family from it)")]
    RouteWithoutGateway { dst: String },
    #[error("guest = \"dan\": sandbox id {0:?} cannot name a file (1-255 of A-Z a-z 0-9 _ . -)")]
    BadSandboxId(String),
    #[error("guest = \"dan\": the request is for a container of an existing pod ({0}); Kata reads DAN files only when the sandbox is created, so ask for the VF on the pod sandbox")]
    NotSandbox(String),
    #[error("guest = \"dan\": the spec names sandbox {named:?} but this is sandbox {id:?}; refusing to write another sandbox's DAN file")]
    OtherSandbox { named: String, id: String },
    #[error("{path} exists and was not written by kata-sriov for this sandbox; refusing to overwrite it (Kata owns nothing there: remove it if it is stale)")]
    Foreign { path: PathBuf },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The DAN document for claimed VFs (pure).
pub fn document(claimed: &[&ClaimedVf]) -> Result<Value, DanError> {
    let mut devices = Vec::new();
    for (i, c) in claimed.iter().enumerate() {
        let mac = c.mac.ok_or_else(|| DanError::NoMac {
            vf: c.vf.to_string(),
            pool: c.pool.clone(),
        })?;
        let name =
            c.l3.name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("net{}", i + 1));
        let mut routes = Vec::new();
        if let Some(gw) = c.l3.gateway {
            routes.push(json!({ "gateway": gw.to_string() }));
        }
        for r in &c.l3.routes {
            let via = r.via.ok_or_else(|| DanError::RouteWithoutGateway {
                dst: r.dst.to_string(),
            })?;
            routes.push(json!({ "dest": r.dst.to_string(), "gateway": via.to_string() }));
        }
        let ips: Vec<String> = c.l3.ips.iter().map(ToString::to_string).collect();
        devices.push(json!({
            "name": name,
            "guest_mac": mac.to_string(),
            "device": { "type": "vfio", "pci_device_id": c.vf.to_string() },
            "network_info": {
                "interface": { "ip_addresses": ips, "mtu": c.l3.mtu.unwrap_or(DEFAULT_MTU) },
                "routes": routes,
                "neighbors": [],
            },
        }));
    }
    Ok(json!({ "devices": devices }))
}

/// Checks that the request comes from a pod sandbox (or a lone container)
/// and returns the sandbox id Kata will look the file up by: the CRI
/// sandbox id annotation, else the shim's `-id`.
pub fn sandbox_id(
    annotations: &serde_json::Map<String, Value>,
    id: &str,
) -> Result<String, DanError> {
    let kind = annotations
        .get("io.kubernetes.cri.container-type")
        .and_then(Value::as_str);
    if kind == Some("container") {
        return Err(DanError::NotSandbox(id.to_owned()));
    }
    let sid = annotations
        .get("io.kubernetes.cri.sandbox-id")
        .and_then(Value::as_str)
        .unwrap_or(id);
    let ok = !sid.is_empty()
        && sid.len() < 256
        && sid != "."
        && sid != ".."
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(sid.to_owned())
    } else {
        Err(DanError::BadSandboxId(sid.chars().take(64).collect()))
    }
}

/// `<dir>/<sandbox-id>.json`.
pub fn path(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(format!("{sandbox_id}.json"))
}

/// Writes the DAN file atomically. `ours` says whether an existing file at
/// that path was written by us (recorded in one of our leases): only then
/// is it replaced; a foreign file is never touched.
pub fn write(path: &Path, doc: &Value, ours: bool) -> Result<(), DanError> {
    let io = |op, p: &Path| {
        let p = p.to_owned();
        move |source| DanError::Io(IoError::new(op, p, source))
    };
    if fs::symlink_metadata(path).is_ok() && !ours {
        return Err(DanError::Foreign {
            path: path.to_owned(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut data = serde_json::to_vec_pretty(doc).map_err(|e| {
        DanError::Io(IoError::new(
            "encoding",
            path.to_owned(),
            io::Error::other(e),
        ))
    })?;
    data.push(b'\n');
    // Exclusive when not ours: a file that appeared meanwhile is not ours.
    let place = if ours {
        Place::Replace
    } else {
        Place::Exclusive
    };
    match atomic::write(path, &data, 0o644, place) {
        Ok(()) => Ok(()),
        Err(e) if e.already_exists() => Err(DanError::Foreign {
            path: path.to_owned(),
        }),
        Err(e) => Err(DanError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestnet::{L3Config, Route};
    use crate::policy::config::{GuestMode, Mode};

    fn vf(addr: &str, mac: Option<&str>, l3: L3Config) -> ClaimedVf {
        ClaimedVf {
            pool: "fast".into(),
            mode: Mode::Vfio,
            guest: GuestMode::Dan,
            pf: "0000:85:00.0".parse().unwrap(),
            vf_index: 0,
            vf: addr.parse().unwrap(),
            pci_id: "8086:154c".parse().unwrap(),
            mac: mac.map(|m| m.parse().unwrap()),
            iommu_group: Some(40),
            dev_node: None,
            netdev: None,
            l3,
        }
    }

    #[test]
    fn document_matches_katas_schema_field_by_field() {
        let l3 = L3Config {
            name: Some("eth1".parse().unwrap()),
            ips: vec![
                "10.10.0.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
            gateway: Some("10.10.0.1".parse().unwrap()),
            routes: vec![
                Route {
                    dst: "10.20.0.0/16".parse().unwrap(),
                    via: Some("10.10.0.1".parse().unwrap()),
                },
                Route {
                    dst: "fd01::/64".parse().unwrap(),
                    via: Some("fd00::1".parse().unwrap()),
                },
            ],
            mtu: Some(9000),
        };
        let a = vf("0000:85:02.5", Some("0a:58:0a:0a:00:05"), l3);
        let b = vf(
            "0000:85:02.6",
            Some("02:00:00:00:00:02"),
            L3Config::default(),
        );
        let doc = document(&[&a, &b]).unwrap();
        let d0 = &doc["devices"][0];
        assert_eq!(d0["name"], "eth1");
        assert_eq!(d0["guest_mac"], "0a:58:0a:0a:00:05");
        assert_eq!(
            d0["device"],
            json!({"type": "vfio", "pci_device_id": "0000:85:02.5"})
        );
        let ni = &d0["network_info"];
        assert_eq!(
            ni["interface"],
            json!({"ip_addresses": ["10.10.0.5/24", "fd00::5/64"], "mtu": 9000})
        );
        assert_eq!(
            ni["routes"],
            json!([
                {"gateway": "10.10.0.1"},
                {"dest": "10.20.0.0/16", "gateway": "10.10.0.1"},
                {"dest": "fd01::/64", "gateway": "fd00::1"}
            ])
        );
        assert_eq!(ni["neighbors"], json!([]));
        // Defaults: a name and the MTU are always present.
        let d1 = &doc["devices"][1];
        assert_eq!(d1["name"], "net2");
        assert_eq!(d1["network_info"]["interface"]["mtu"], DEFAULT_MTU);
        assert_eq!(d1["network_info"]["routes"], json!([]));
    }

    #[test]
    fn refusals() {
        let no_mac = vf("0000:85:02.5", None, L3Config::default());
        assert!(matches!(document(&[&no_mac]), Err(DanError::NoMac { .. })));
        let l3 = L3Config {
            routes: vec![Route {
                dst: "10.20.0.0/16".parse().unwrap(),
                via: None,
            }],
            ..L3Config::default()
        };
        let gwless = vf("0000:85:02.5", Some("02:00:00:00:00:01"), l3);
        let e = document(&[&gwless]).unwrap_err().to_string();
        assert!(e.contains("10.20.0.0/16"), "{e}");

        let mut ann = serde_json::Map::new();
        assert_eq!(sandbox_id(&ann, "abc").unwrap(), "abc");
        ann.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        ann.insert("io.kubernetes.cri.sandbox-id".into(), "sb1".into());
        assert_eq!(sandbox_id(&ann, "sb1").unwrap(), "sb1");
        ann.insert(
            "io.kubernetes.cri.container-type".into(),
            "container".into(),
        );
        assert!(matches!(
            sandbox_id(&ann, "c1"),
            Err(DanError::NotSandbox(_))
        ));
        let mut bad = serde_json::Map::new();
        bad.insert("io.kubernetes.cri.sandbox-id".into(), "../../etc/x".into());
        assert!(matches!(
            sandbox_id(&bad, "c"),
            Err(DanError::BadSandboxId(_))
        ));
    }

    #[test]
    fn write_never_touches_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "sb1");
        fs::write(&p, "theirs").unwrap();
        let e = write(&p, &json!({"devices": []}), false).unwrap_err();
        assert!(matches!(e, DanError::Foreign { .. }), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "theirs");
        // Ours: replaced atomically, no temp file left.
        write(&p, &json!({"devices": []}), true).unwrap();
        let v: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v, json!({"devices": []}));
        let q = path(dir.path(), "sb2");
        write(&q, &json!({"devices": [1]}), false).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
