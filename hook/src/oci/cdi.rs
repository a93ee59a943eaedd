//! CDI (Container Device Interface) specs for claimed VFs: a pure builder
//! over [`ClaimedVf`]s, and an atomic write and a remove under a CDI
//! directory (`/var/run/cdi` by default). Used by the Kubernetes agent,
//! whose runtime (containerd, CRI-O) resolves the returned CDI names
//! (`kind=name`) and applies each device's `containerEdits` to the
//! containers that reference the claim.
//!
//! Each device's edits carry:
//! * `deviceNodes`: `/dev/vfio/vfio` and the VF's `/dev/vfio/<group>`, with
//!   the host nodes' real numbers (Kata finds the host device from
//!   major:minor, KATA.md) and the host path;
//! * `env`: `KATA_SRIOV_GUEST_NETWORKS_<vf>=<json>`, the VF's entry of the
//!   guest description (the `io.kata-sriov.guest-networks` JSON array, one
//!   element), because the environment is the only edit that carries data
//!   into the container's OCI spec, which is what Kata sends into the VM
//!   and what the guest helper can read there; one variable per VF, so
//!   several devices of one container never overwrite each other;
//! * the same JSON as the device's `io.kata-sriov.guest-networks`
//!   annotation: CDI annotations are not applied to containers; it is
//!   there for people reading the file.
//!
//! [`without_device_nodes`] drops the nodes for VFs our shim cold-plugs
//! into the pod's sandbox (the agent's `--plug cold`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::claim::ClaimedVf;
use crate::error::IoError;
use crate::guestnet::GUEST_ANNOTATION;
use crate::kernel::vfio::DevNode;
use crate::oci::spec::VFIO_CONTAINER;
use crate::pci::PciAddress;
use crate::state::atomic::{self, Place};

/// The CDI spec version written (0.6.0 added device annotations).
pub const CDI_VERSION: &str = "0.6.0";
/// The CDI kind of a claimed VF (`kata-sriov cdi claim` and the DRA driver;
/// the device plugin's kind is its resource name).
pub const VF_KIND: &str = "kata-sriov.io/vf";
/// Where runtimes look for CDI specs written at run time.
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// Prefix of the environment variable carrying one VF's guest description.
pub const GUEST_ENV_PREFIX: &str = "KATA_SRIOV_GUEST_NETWORKS_";
/// Largest spec file read back.
const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("invalid CDI {what} {value:?}: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("CDI device {name:?} is listed twice")]
    DuplicateDevice { name: String },
    #[error("{vf}: a VFIO VF without a /dev/vfio node cannot be described in a CDI spec")]
    NoDeviceNode { vf: PciAddress },
    #[error("CDI spec {path}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A CDI spec file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
}

/// One device of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

/// The edits a runtime applies to a container that references the device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
}

/// A device node to create in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path in the container.
    pub path: String,
    /// Path on the host, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    pub permissions: String,
}

fn bad(what: &'static str, value: &str, reason: &'static str) -> CdiError {
    CdiError::BadName {
        what,
        value: value.chars().take(80).collect(),
        reason,
    }
}

fn alnum_ends(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks a kind `vendor/class` as the CDI spec defines it.
pub fn check_kind(kind: &str) -> Result<(), CdiError> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(bad("kind", kind, "must be vendor/class"));
    };
    let vendor_ok = alnum_ends(vendor)
        && vendor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    let class_ok = alnum_ends(class)
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !vendor_ok || !class_ok || kind.len() > 253 {
        return Err(bad(
            "kind",
            kind,
            "vendor is [A-Za-z0-9.-], class [A-Za-z0-9_.-], each starting and ending alphanumeric",
        ));
    }
    Ok(())
}

/// Checks a device name as the CDI spec defines it.
pub fn check_device_name(name: &str) -> Result<(), CdiError> {
    let ok = alnum_ends(name)
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if !ok {
        return Err(bad(
            "device name",
            name,
            "must be [A-Za-z0-9_.:-], starting and ending alphanumeric",
        ));
    }
    Ok(())
}

/// The fully qualified CDI name a runtime resolves: `kind=name`.
pub fn qualified(kind: &str, name: &str) -> String {
    format!("{kind}={name}")
}

/// The environment variable name for a VF's guest description.
pub fn guest_env_name(vf: PciAddress) -> String {
    let safe: String = vf
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{GUEST_ENV_PREFIX}{safe}")
}

fn node(container: &str, host: &DevNode) -> DeviceNode {
    let host_path = host.path.to_string_lossy().into_owned();
    DeviceNode {
        path: container.to_owned(),
        host_path: (host_path != container).then_some(host_path),
        kind: "c".into(),
        major: i64::from(host.major),
        minor: i64::from(host.minor),
        permissions: "rw".into(),
    }
}

/// The spec of `kind` with one device per `(name, VF)`. `vfio_container`
/// is the host's `/dev/vfio/vfio`, needed only for VFIO VFs.
pub fn build(
    kind: &str,
    devices: &[(String, ClaimedVf)],
    vfio_container: Option<&DevNode>,
) -> Result<Spec, CdiError> {
    check_kind(kind)?;
    let mut out: Vec<Device> = Vec::new();
    for (name, vf) in devices {
        check_device_name(name)?;
        if out.iter().any(|d| &d.name == name) {
            return Err(CdiError::DuplicateDevice { name: name.clone() });
        }
        let guest = serde_json::to_string(&[vf.guest_network()]).map_err(|e| CdiError::Json {
            path: PathBuf::from(name),
            source: e,
        })?;
        let mut edits = ContainerEdits {
            env: vec![format!("{}={guest}", guest_env_name(vf.vf))],
            device_nodes: Vec::new(),
        };
        if vf.mode == crate::policy::config::Mode::Vfio {
            let group = vf
                .dev_node
                .as_ref()
                .ok_or(CdiError::NoDeviceNode { vf: vf.vf })?;
            let container = vfio_container.ok_or(CdiError::NoDeviceNode { vf: vf.vf })?;
            let g = vf.iommu_group.ok_or(CdiError::NoDeviceNode { vf: vf.vf })?;
            let gpath = format!("/dev/vfio/{g}");
            edits.device_nodes.push(node(VFIO_CONTAINER, container));
            edits.device_nodes.push(node(&gpath, group));
        }
        out.push(Device {
            name: name.clone(),
            annotations: BTreeMap::from([(GUEST_ANNOTATION.to_owned(), guest)]),
            container_edits: edits,
        });
    }
    Ok(Spec {
        cdi_version: CDI_VERSION.into(),
        kind: kind.into(),
        devices: out,
    })
}

/// `spec` with no device node in any device's edits: for VFs another
/// component passes to the VM (our shim's cold plug into the pod's
/// sandbox), so that a runtime applying the edits (Kata: hot plug) does
/// not pass the same VF again. The environment stays (CDI refuses a
/// device without edits; the guest helper reading it again is harmless).
pub fn without_device_nodes(mut spec: Spec) -> Spec {
    for d in &mut spec.devices {
        d.container_edits.device_nodes.clear();
    }
    spec
}

/// Checks a spec file's stem (it becomes `<dir>/<stem>.json`).
fn check_stem(stem: &str) -> Result<(), CdiError> {
    let ok = !stem.is_empty()
        && stem.len() <= 200
        && !stem.starts_with(['.', '-'])
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(bad(
            "spec file name",
            stem,
            "must be 1 to 200 bytes of [A-Za-z0-9_.-], not starting with '.' or '-'",
        ));
    }
    Ok(())
}

/// `<dir>/<stem>.json`.
pub fn spec_path(dir: &Path, stem: &str) -> Result<PathBuf, CdiError> {
    check_stem(stem)?;
    Ok(dir.join(format!("{stem}.json")))
}

/// Writes the spec to `<dir>/<stem>.json` atomically (mode 0644: runtimes
/// read it), creating `dir` (0755) when missing.
pub fn write(dir: &Path, stem: &str, spec: &Spec) -> Result<PathBuf, CdiError> {
    let path = spec_path(dir, stem)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|source| {
            CdiError::Io(IoError::new(
                "creating CDI directory",
                dir.to_owned(),
                source,
            ))
        })?;
    let mut data = serde_json::to_vec_pretty(spec).map_err(|source| CdiError::Json {
        path: path.clone(),
        source,
    })?;
    data.push(b'\n');
    atomic::write(&path, &data, 0o644, Place::Replace)?;
    Ok(path)
}

/// Reads `<dir>/<stem>.json` back: None when there is none.
pub fn read(dir: &Path, stem: &str) -> Result<Option<Spec>, CdiError> {
    use std::io::Read;
    let path = spec_path(dir, stem)?;
    let f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CdiError::Io(IoError::new("opening", path, source))),
    };
    let mut text = String::new();
    f.take(MAX_SPEC_BYTES)
        .read_to_string(&mut text)
        .map_err(|source| CdiError::Io(IoError::new("reading", path.clone(), source)))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| CdiError::Json { path, source })
}

/// Deletes `<dir>/<stem>.json`; returns whether it existed.
pub fn remove(dir: &Path, stem: &str) -> Result<bool, CdiError> {
    let path = spec_path(dir, stem)?;
    match fs::remove_file(&path) {
        Ok(()) => {
            let _ = atomic::sync_dir(dir);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CdiError::Io(IoError::new(
            "deleting CDI spec",
            path,
            source,
        ))),
    }
}

/// The stems of the `*.json` specs in `dir` whose stem starts with `prefix`
/// (an agent finding its own specs after a restart).
pub fn list(dir: &Path, prefix: &str) -> Result<Vec<String>, CdiError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CdiError::Io(IoError::new(
                "listing CDI directory",
                dir.to_owned(),
                source,
            )))
        }
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?;
            (stem.starts_with(prefix) && check_stem(stem).is_ok()).then(|| stem.to_owned())
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestnet::{parse_guest_networks, L3Config};
    use crate::policy::config::{GuestMode, Mode};

    fn vf(addr: &str, group: u32) -> ClaimedVf {
        let l3: L3Config =
            serde_json::from_str(r#"{"name":"net1","ips":["10.0.0.5/24"],"mtu":1500}"#).unwrap();
        ClaimedVf {
            pool: "fast".into(),
            mode: Mode::Vfio,
            guest: GuestMode::default(),
            pf: "0000:3b:00.0".parse().unwrap(),
            vf_index: 0,
            vf: addr.parse().unwrap(),
            pci_id: "8086:154c".parse().unwrap(),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            iommu_group: Some(group),
            dev_node: Some(DevNode {
                path: PathBuf::from(format!("/tmp/x/dev/vfio/{group}")),
                major: 240,
                minor: group,
            }),
            netdev: None,
            l3,
        }
    }

    fn container() -> DevNode {
        DevNode {
            path: "/dev/vfio/vfio".into(),
            major: 10,
            minor: 196,
        }
    }

    #[test]
    fn builds_nodes_env_and_annotation_per_vf() {
        let a = vf("0000:3b:10.0", 17);
        let spec = build(
            "kata-sriov.io/vf",
            &[("uid-0000_3b_10.0".into(), a.clone())],
            Some(&container()),
        )
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["cdiVersion"], "0.6.0");
        assert_eq!(v["kind"], "kata-sriov.io/vf");
        let d = &v["devices"][0];
        assert_eq!(d["name"], "uid-0000_3b_10.0");
        let nodes = &d["containerEdits"]["deviceNodes"];
        assert_eq!(
            nodes[0],
            serde_json::json!({"path":"/dev/vfio/vfio","type":"c","major":10,"minor":196,"permissions":"rw"})
        );
        assert_eq!(
            nodes[1],
            serde_json::json!({"path":"/dev/vfio/17","hostPath":"/tmp/x/dev/vfio/17","type":"c","major":240,"minor":17,"permissions":"rw"})
        );
        let env = d["containerEdits"]["env"][0].as_str().unwrap();
        let (key, json) = env.split_once('=').unwrap();
        assert_eq!(key, "KATA_SRIOV_GUEST_NETWORKS_0000_3b_10_0");
        // The value is exactly what the guest helper parses.
        assert_eq!(parse_guest_networks(json).unwrap(), vec![a.guest_network()]);
        assert_eq!(d["annotations"][GUEST_ANNOTATION], json);
        assert_eq!(qualified(&spec.kind, "x"), "kata-sriov.io/vf=x");
    }

    #[test]
    fn refuses_bad_names_and_missing_nodes() {
        let a = vf("0000:3b:10.0", 17);
        let one = |name: &str| vec![(name.to_owned(), a.clone())];
        for kind in ["nokind", "a/", "/b", "-a/b", "a_b/c", "a/b/c", "a/b "] {
            let e = build(kind, &one("x"), Some(&container())).unwrap_err();
            assert!(e.to_string().contains("invalid CDI kind"), "{kind}: {e}");
        }
        for name in ["", "-x", "x-", "a/b", "a=b", "a b", "../x"] {
            let e = build("k.io/c", &one(name), Some(&container())).unwrap_err();
            assert!(
                e.to_string().contains("invalid CDI device name"),
                "{name}: {e}"
            );
        }
        let twice = [one("x"), one("x")].concat();
        assert!(matches!(
            build("k.io/c", &twice, Some(&container())),
            Err(CdiError::DuplicateDevice { .. })
        ));
        let e = build("k.io/c", &one("x"), None).unwrap_err();
        assert!(e.to_string().contains("0000:3b:10.0"), "{e}");
        let mut netdev = a.clone();
        netdev.mode = Mode::Netdev;
        netdev.dev_node = None;
        let s = build("k.io/c", &[("x".into(), netdev)], None).unwrap();
        assert!(s.devices[0].container_edits.device_nodes.is_empty());
        assert_eq!(s.devices[0].container_edits.env.len(), 1);
    }

    #[test]
    fn write_read_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cdi");
        let spec = build(
            "kata-sriov.io/vf",
            &[("a".into(), vf("0000:3b:10.0", 17))],
            Some(&container()),
        )
        .unwrap();
        let p = write(&dir, "kata-sriov-u1", &spec).unwrap();
        assert_eq!(p, dir.join("kata-sriov-u1.json"));
        assert_eq!(read(&dir, "kata-sriov-u1").unwrap(), Some(spec.clone()));
        write(&dir, "kata-sriov-u2", &spec).unwrap();
        fs::write(dir.join("other.json"), "{}").unwrap();
        assert_eq!(
            list(&dir, "kata-sriov-").unwrap(),
            ["kata-sriov-u1", "kata-sriov-u2"]
        );
        assert!(remove(&dir, "kata-sriov-u1").unwrap());
        assert!(!remove(&dir, "kata-sriov-u1").unwrap());
        assert_eq!(read(&dir, "kata-sriov-u1").unwrap(), None);
        // No temp file left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        for stem in ["", "../x", ".x", "a/b", "x\n"] {
            assert!(write(&dir, stem, &spec).is_err(), "{stem:?}");
            assert!(remove(&dir, stem).is_err(), "{stem:?}");
        }
    }
}
