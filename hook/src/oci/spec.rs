//! Pure OCI spec edits over `serde_json::Value`, and the lenient hook state
//! parser. Touches no file and no kernel interface: the readers below take
//! any `Read` (stdin in the hook modes), the edits work on values in memory.
//!
//! The spec is never round-tripped through typed structs (oci-spec drops
//! every field it does not know); the workspace builds serde_json with
//! `preserve_order`, so keys keep their order. The edit owns exactly:
//!
//! * `linux.devices` entries whose `path` is one of the edit's device nodes;
//! * `linux.resources.devices` rules equal to the allow rules for those nodes;
//! * `hooks.poststop` entries with the injected hook's `path` and `args`;
//! * the annotations `io.kata-sriov.owner` and `io.kata-sriov.guest-networks`
//!   (the latter removed when the edit has no guest networks, so a container
//!   can never supply its own).
//!
//! Owned entries are removed and appended again, so applying an edit twice
//! gives the same spec as applying it once, and the allow rules end up after
//! any deny rule already present. Everything else comes out as it went in.
//! On error the spec is left unchanged.

use std::io::Read;

use serde_json::{Map, Value};

use crate::guestnet::{
    validate_guest_networks, GuestNetError, GuestNetwork, GUEST_ANNOTATION, MAX_GUEST_JSON,
};
use crate::json::{kind, read_limited, MAX_INPUT_BYTES};
use crate::policy::owner::{self, MAX_OWNER, OWNER_ANNOTATION};

/// The VFIO container node every VFIO user needs besides its group node.
pub const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
/// Directory of the VFIO group nodes.
pub const VFIO_DIR: &str = "/dev/vfio/";
/// Mode of the device nodes created in the container (0660).
pub const DEVICE_FILE_MODE: u32 = 0o660;

/// A character device node to expose in the container: `/dev/vfio/N` or
/// `/dev/vfio/vfio`, with the numbers of the real node on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: String,
    pub major: u32,
    pub minor: u32,
}

/// An OCI hook (`path`, `args`, `env`, `timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEntry {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u32>,
}

impl HookEntry {
    /// The OCI JSON object; empty `args`/`env` and no timeout are omitted.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("path".into(), Value::from(self.path.as_str()));
        if !self.args.is_empty() {
            m.insert("args".into(), Value::from(self.args.clone()));
        }
        if !self.env.is_empty() {
            m.insert("env".into(), Value::from(self.env.clone()));
        }
        if let Some(t) = self.timeout {
            m.insert("timeout".into(), Value::from(t));
        }
        Value::Object(m)
    }
}

/// Everything the host side writes into a container's spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecEdit {
    /// Token the leases are recorded under (`io.kata-sriov.owner`).
    pub owner: String,
    /// Device nodes to expose; must include [`VFIO_CONTAINER`] whenever a
    /// VFIO group node is listed.
    pub devices: Vec<DeviceNode>,
    /// Guest-side description (`io.kata-sriov.guest-networks`).
    pub guest: Vec<GuestNetwork>,
    /// Release hook to inject, `None` when injection is switched off.
    pub poststop: Option<HookEntry>,
    /// createRuntime hook to inject (`hook precreate`'s claims: it ties
    /// them to the container's bundle), or None.
    pub create_runtime: Option<HookEntry>,
}

/// Why the spec could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("config.json: {0} bytes is over the {MAX_INPUT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("config.json: cannot read: {0}")]
    Read(std::io::Error),
    #[error("config.json: malformed JSON: {0}")]
    Json(serde_json::Error),
    #[error("config.json: the document is {0}, expected an object")]
    NotObject(&'static str),
    #[error("config.json: {field} is {found}, expected {expected}")]
    WrongType {
        field: &'static str,
        found: &'static str,
        expected: &'static str,
    },
    #[error("spec edit: owner token must be 1 to {MAX_OWNER} bytes without control characters")]
    BadOwner,
    #[error("spec edit: device path {0:?} must be absolute, without '..' or control characters")]
    BadDevicePath(String),
    #[error("spec edit: device {0} is listed twice with different numbers")]
    ConflictingDevice(String),
    #[error("spec edit: VFIO group node {0} listed without {VFIO_CONTAINER}")]
    MissingVfioContainer(String),
    #[error("spec edit: hook path {0:?} must be absolute")]
    BadHookPath(String),
    #[error("spec edit: hook timeout must be at least 1 second")]
    BadHookTimeout,
    #[error("spec edit: {0}")]
    Guest(GuestNetError),
}

// Not `#[from]`: the message already shows it, so it is not a source.
impl From<GuestNetError> for SpecError {
    fn from(e: GuestNetError) -> Self {
        SpecError::Guest(e)
    }
}

/// Reads a `config.json` (at most [`MAX_INPUT_BYTES`]) into a value whose
/// root is an object.
pub fn read_spec<R: Read>(r: R) -> Result<Value, SpecError> {
    let bytes = read_limited(r).map_err(SpecError::Read)?;
    parse_spec(&bytes)
}

/// Parses a `config.json` (at most [`MAX_INPUT_BYTES`]); the root must be
/// an object.
pub fn parse_spec(bytes: &[u8]) -> Result<Value, SpecError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(SpecError::TooLarge(bytes.len()));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(SpecError::Json)?;
    if !v.is_object() {
        return Err(SpecError::NotObject(kind(&v)));
    }
    Ok(v)
}

/// The object at `key`, when present and not null.
fn field<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    name: &'static str,
    want_object: bool,
) -> Result<Option<&'a Value>, SpecError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) if want_object => Ok(Some(v)),
        Some(v @ Value::Array(_)) if !want_object => Ok(Some(v)),
        Some(v) => Err(SpecError::WrongType {
            field: name,
            found: kind(v),
            expected: if want_object { "an object" } else { "an array" },
        }),
    }
}

/// Checks that every field [`apply`] may touch has the right type (absent
/// and null count as absent). Call it before claiming anything, so a
/// malformed spec is refused before any VF is taken.
pub fn check_spec(spec: &Value) -> Result<(), SpecError> {
    let Value::Object(root) = spec else {
        return Err(SpecError::NotObject(kind(spec)));
    };
    if let Some(Value::Object(linux)) = field(root, "linux", "linux", true)? {
        field(linux, "devices", "linux.devices", false)?;
        if let Some(Value::Object(res)) = field(linux, "resources", "linux.resources", true)? {
            field(res, "devices", "linux.resources.devices", false)?;
        }
    }
    if let Some(Value::Object(hooks)) = field(root, "hooks", "hooks", true)? {
        field(hooks, "poststop", "hooks.poststop", false)?;
        field(hooks, "createRuntime", "hooks.createRuntime", false)?;
    }
    field(root, "annotations", "annotations", true)?;
    Ok(())
}

fn check_edit(edit: &SpecEdit) -> Result<Vec<&DeviceNode>, SpecError> {
    if !owner::valid(&edit.owner) {
        return Err(SpecError::BadOwner);
    }
    let mut devices: Vec<&DeviceNode> = Vec::new();
    for d in &edit.devices {
        if !d.path.starts_with('/')
            || d.path.split('/').any(|c| c == "..")
            || d.path.chars().any(char::is_control)
        {
            return Err(SpecError::BadDevicePath(d.path.clone()));
        }
        match devices.iter().find(|o| o.path == d.path) {
            Some(o) if *o != d => return Err(SpecError::ConflictingDevice(d.path.clone())),
            Some(_) => {}
            None => devices.push(d),
        }
    }
    if let Some(group) = devices
        .iter()
        .find(|d| d.path.starts_with(VFIO_DIR) && d.path != VFIO_CONTAINER)
    {
        if !devices.iter().any(|d| d.path == VFIO_CONTAINER) {
            return Err(SpecError::MissingVfioContainer(group.path.clone()));
        }
    }
    for h in edit.poststop.iter().chain(&edit.create_runtime) {
        if !h.path.starts_with('/') {
            return Err(SpecError::BadHookPath(h.path.clone()));
        }
        if h.timeout == Some(0) {
            return Err(SpecError::BadHookTimeout);
        }
    }
    validate_guest_networks(&edit.guest)?;
    Ok(devices)
}

fn device_entry(d: &DeviceNode) -> Value {
    let mut m = Map::new();
    m.insert("path".into(), Value::from(d.path.as_str()));
    m.insert("type".into(), Value::from("c"));
    m.insert("major".into(), Value::from(d.major));
    m.insert("minor".into(), Value::from(d.minor));
    m.insert("fileMode".into(), Value::from(DEVICE_FILE_MODE));
    m.insert("uid".into(), Value::from(0));
    m.insert("gid".into(), Value::from(0));
    Value::Object(m)
}

fn allow_rule(d: &DeviceNode) -> Value {
    let mut m = Map::new();
    m.insert("allow".into(), Value::Bool(true));
    m.insert("type".into(), Value::from("c"));
    m.insert("major".into(), Value::from(d.major));
    m.insert("minor".into(), Value::from(d.minor));
    m.insert("access".into(), Value::from("rwm"));
    Value::Object(m)
}

/// `m[key]` as an object, created when absent or null.
fn object_at<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<&'a mut Map<String, Value>, SpecError> {
    let slot = m.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(o) => Ok(o),
        other => Err(SpecError::WrongType {
            field: name,
            found: kind(other),
            expected: "an object",
        }),
    }
}

/// `m[key]` as an array, created when absent or null.
fn array_at<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<&'a mut Vec<Value>, SpecError> {
    let slot = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => Ok(a),
        other => Err(SpecError::WrongType {
            field: name,
            found: kind(other),
            expected: "an array",
        }),
    }
}

fn path_of(v: &Value) -> Option<&str> {
    v.get("path").and_then(Value::as_str)
}

/// Applies `edit` to `spec`. Idempotent; on error `spec` is unchanged.
pub fn apply(spec: &mut Value, edit: &SpecEdit) -> Result<(), SpecError> {
    check_spec(spec)?;
    let devices = check_edit(edit)?;
    let guest = if edit.guest.is_empty() {
        None
    } else {
        let text = serde_json::to_string(&edit.guest)
            .map_err(|e| SpecError::Guest(GuestNetError::Json(e)))?;
        if text.len() > MAX_GUEST_JSON {
            return Err(SpecError::Guest(GuestNetError::TooLarge(text.len())));
        }
        Some(text)
    };
    // Edit a copy: whatever happens below, `spec` changes all at once or not at all.
    let mut work = spec.clone();
    let Value::Object(root) = &mut work else {
        return Err(SpecError::NotObject(kind(spec)));
    };

    if !devices.is_empty() {
        let linux = object_at(root, "linux", "linux")?;
        let list = array_at(linux, "devices", "linux.devices")?;
        list.retain(|v| !path_of(v).is_some_and(|p| devices.iter().any(|d| d.path == p)));
        list.extend(devices.iter().map(|d| device_entry(d)));

        let mut rules: Vec<Value> = Vec::new();
        for d in &devices {
            let r = allow_rule(d);
            if !rules.contains(&r) {
                rules.push(r);
            }
        }
        let resources = object_at(linux, "resources", "linux.resources")?;
        let list = array_at(resources, "devices", "linux.resources.devices")?;
        list.retain(|v| !rules.contains(v));
        list.extend(rules);
    }

    let injected = [
        ("poststop", "hooks.poststop", &edit.poststop),
        ("createRuntime", "hooks.createRuntime", &edit.create_runtime),
    ];
    for (stage, name, hook) in injected {
        let Some(hook) = hook else { continue };
        let ours = hook.to_value();
        let args = ours.get("args");
        let hooks = object_at(root, "hooks", "hooks")?;
        let list = array_at(hooks, stage, name)?;
        list.retain(|v| !(path_of(v) == Some(hook.path.as_str()) && v.get("args") == args));
        list.push(ours);
    }

    let annotations = object_at(root, "annotations", "annotations")?;
    annotations.insert(OWNER_ANNOTATION.into(), Value::from(edit.owner.as_str()));
    match guest {
        Some(text) => {
            annotations.insert(GUEST_ANNOTATION.into(), Value::String(text));
        }
        None => {
            annotations.shift_remove(GUEST_ANNOTATION);
        }
    }
    *spec = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestnet::L3Config;

    /// A config.json as containerd 1.6's CRI plugin writes it for a Kata
    /// pod container, plus fields no typed parser knows.
    const CONTAINERD_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "user": {"uid": 0, "gid": 0, "additionalGids": [0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27]},
    "args": ["sleep", "infinity"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod-a"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_NET_BIND_SERVICE", "CAP_KILL"],
      "effective": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_NET_BIND_SERVICE", "CAP_KILL"],
      "permitted": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_NET_BIND_SERVICE", "CAP_KILL"]
    },
    "noNewPrivileges": false,
    "oomScoreAdj": 1000,
    "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
    "x-vendor-process": {"z": 1, "a": [1.5, -0, 1e-7, 18446744073709551615, -9223372036854775808]}
  },
  "root": {"path": "rootfs"},
  "hostname": "pod-a",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/5f2c/hosts", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/5f2c/shm", "options": ["rbind", "rprivate", "rw"], "uidMappings": []}
  ],
  "hooks": {
    "prestart": [{"path": "/usr/bin/nvidia-ctk", "args": ["nvidia-ctk", "hook"]}],
    "poststop": [{"path": "/usr/libexec/other-hook", "args": ["other-hook", "poststop"], "timeout": 5}],
    "x-unknown-stage": [{"path": "/bin/true"}]
  },
  "annotations": {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": "5f2c0e6c1d3b",
    "io.kata-sriov.networks": "fast",
    "io.kata-sriov.guest-networks": "[{\"pci_id\":\"8086:10ca\",\"name\":\"evil\"}]",
    "io.kubernetes.cri.image-name": "docker.io/library/busybox:latest"
  },
  "linux": {
    "uidMappings": [],
    "resources": {
      "devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
      ],
      "memory": {"limit": 268435456, "swap": 268435456, "x-unknown": true},
      "cpu": {"shares": 2, "quota": 50000, "period": 100000},
      "pids": {"limit": 4096},
      "unified": {"memory.high": "200000000"}
    },
    "cgroupsPath": "/kubepods/besteffort/pod1234/5f2c0e6c1d3b",
    "namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1234"}],
    "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}],
    "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]},
    "intelRdt": {"closID": "guaranteed"},
    "x-vendor-linux": "kept"
  },
  "vm": {"hypervisor": {"path": "/usr/bin/qemu-system-x86_64"}},
  "x-vendor-top": [null, true, {"b": 2, "a": 1}]
}"#;

    fn node(path: &str, major: u32, minor: u32) -> DeviceNode {
        DeviceNode {
            path: path.into(),
            major,
            minor,
        }
    }

    fn edit() -> SpecEdit {
        SpecEdit {
            owner: "k8s.io/5f2c0e6c1d3b".into(),
            devices: vec![node("/dev/vfio/42", 243, 0), node(VFIO_CONTAINER, 10, 196)],
            guest: vec![GuestNetwork {
                mac: Some("02:00:00:00:00:01".parse().unwrap()),
                pci_id: "8086:10ca".parse().unwrap(),
                l3: L3Config {
                    name: Some("net1".parse().unwrap()),
                    ips: vec!["10.0.0.5/24".parse().unwrap()],
                    ..L3Config::default()
                },
            }],
            poststop: Some(HookEntry {
                path: "/usr/local/bin/kata-sriov".into(),
                args: ["kata-sriov", "hook", "poststop"]
                    .map(String::from)
                    .to_vec(),
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                timeout: Some(60),
            }),
            create_runtime: None,
        }
    }

    fn text(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn containerd_spec_edit() {
        let before = parse_spec(CONTAINERD_SPEC.as_bytes()).unwrap();
        // The compact form survives a parse/serialize round trip byte for
        // byte: key order and number forms are preserved.
        let compact = text(&before);
        assert_eq!(text(&parse_spec(compact.as_bytes()).unwrap()), compact);
        assert!(compact.contains(r#""x-vendor-process":{"z":1,"a":[1.5,-0.0,1e-7,18446744073709551615,-9223372036854775808]}"#), "{compact}");

        let mut spec = before.clone();
        apply(&mut spec, &edit()).unwrap();

        // Fields the edit does not own: byte for byte, in the same order.
        assert_eq!(keys(&spec), keys(&before));
        for k in keys(&before) {
            if !["linux", "hooks", "annotations"].contains(&k) {
                assert_eq!(text(&spec[k]), text(&before[k]), "{k}");
            }
        }
        assert_eq!(keys(&spec["linux"]), keys(&before["linux"]));
        for k in keys(&before["linux"]) {
            if !["devices", "resources"].contains(&k) {
                assert_eq!(
                    text(&spec["linux"][k]),
                    text(&before["linux"][k]),
                    "linux.{k}"
                );
            }
        }
        let res = &spec["linux"]["resources"];
        assert_eq!(keys(res), keys(&before["linux"]["resources"]));
        for k in ["memory", "cpu", "pids", "unified"] {
            assert_eq!(text(&res[k]), text(&before["linux"]["resources"][k]));
        }
        assert_eq!(
            text(&spec["hooks"]["prestart"]),
            text(&before["hooks"]["prestart"])
        );
        assert_eq!(
            text(&spec["hooks"]["x-unknown-stage"]),
            text(&before["hooks"]["x-unknown-stage"])
        );

        // What the edit adds, after what was there.
        assert_eq!(
            text(&spec["linux"]["devices"]),
            concat!(
                r#"[{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":438,"uid":0,"gid":0},"#,
                r#"{"path":"/dev/vfio/42","type":"c","major":243,"minor":0,"fileMode":432,"uid":0,"gid":0},"#,
                r#"{"path":"/dev/vfio/vfio","type":"c","major":10,"minor":196,"fileMode":432,"uid":0,"gid":0}]"#
            )
        );
        assert_eq!(
            text(&res["devices"]),
            concat!(
                r#"[{"allow":false,"access":"rwm"},"#,
                r#"{"allow":true,"type":"c","major":10,"minor":229,"access":"rwm"},"#,
                r#"{"allow":true,"type":"c","major":243,"minor":0,"access":"rwm"},"#,
                r#"{"allow":true,"type":"c","major":10,"minor":196,"access":"rwm"}]"#
            )
        );
        assert_eq!(
            text(&spec["hooks"]["poststop"]),
            concat!(
                r#"[{"path":"/usr/libexec/other-hook","args":["other-hook","poststop"],"timeout":5},"#,
                r#"{"path":"/usr/local/bin/kata-sriov","args":["kata-sriov","hook","poststop"],"#,
                r#""env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"timeout":60}]"#
            )
        );
        // The container's own guest annotation is replaced in place, the
        // owner appended; the other annotations keep their order and values.
        let a = &spec["annotations"];
        assert_eq!(
            keys(a),
            [
                "io.kubernetes.cri.container-type",
                "io.kubernetes.cri.sandbox-id",
                "io.kata-sriov.networks",
                "io.kata-sriov.guest-networks",
                "io.kubernetes.cri.image-name",
                "io.kata-sriov.owner"
            ]
        );
        assert_eq!(a[OWNER_ANNOTATION], "k8s.io/5f2c0e6c1d3b");
        let guest =
            crate::guestnet::parse_guest_networks(a[GUEST_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(guest, edit().guest);
        assert_eq!(a["io.kata-sriov.networks"], "fast");

        // Twice is the same as once, byte for byte.
        let once = text(&spec);
        apply(&mut spec, &edit()).unwrap();
        assert_eq!(text(&spec), once);
    }

    #[test]
    fn creates_missing_objects() {
        let mut spec = serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}});
        apply(&mut spec, &edit()).unwrap();
        assert_eq!(
            keys(&spec),
            ["ociVersion", "process", "linux", "hooks", "annotations"]
        );
        assert_eq!(spec["linux"]["devices"].as_array().unwrap().len(), 2);
        assert_eq!(
            spec["linux"]["resources"]["devices"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(spec["hooks"]["poststop"].as_array().unwrap().len(), 1);
        let once = text(&spec);
        apply(&mut spec, &edit()).unwrap();
        assert_eq!(text(&spec), once);

        // Null counts as absent.
        let mut spec =
            serde_json::json!({"linux": null, "hooks": {"poststop": null}, "annotations": null});
        apply(&mut spec, &edit()).unwrap();
        assert_eq!(spec["linux"]["devices"][0]["path"], "/dev/vfio/42");
        assert_eq!(spec["hooks"]["poststop"][0]["timeout"], 60);
    }

    #[test]
    fn minimal_edit_touches_only_annotations() {
        let before = parse_spec(CONTAINERD_SPEC.as_bytes()).unwrap();
        let mut spec = before.clone();
        let e = SpecEdit {
            owner: "precreate-1".into(),
            ..SpecEdit::default()
        };
        apply(&mut spec, &e).unwrap();
        assert_eq!(text(&spec["linux"]), text(&before["linux"]));
        assert_eq!(text(&spec["hooks"]), text(&before["hooks"]));
        // No guest networks: the container-supplied guest annotation goes.
        assert!(spec["annotations"].get(GUEST_ANNOTATION).is_none());
        assert_eq!(spec["annotations"][OWNER_ANNOTATION], "precreate-1");
        let mut bare = serde_json::json!({"process": {}});
        apply(&mut bare, &e).unwrap();
        assert_eq!(
            text(&bare),
            r#"{"process":{},"annotations":{"io.kata-sriov.owner":"precreate-1"}}"#
        );
    }

    #[test]
    fn existing_owned_entries_are_replaced_not_duplicated() {
        let mut spec = serde_json::json!({
            "linux": {
                "devices": [
                    {"path": "/dev/vfio/vfio", "type": "c", "major": 1, "minor": 1},
                    "not-an-object",
                    {"path": "/dev/vfio/42", "type": "b", "major": 9, "minor": 9},
                    {"path": "/dev/vfio/42"}
                ],
                "resources": {"devices": [
                    {"allow": true, "type": "c", "major": 243, "minor": 0, "access": "rwm"},
                    {"allow": false, "type": "c", "major": 243, "minor": 0, "access": "rwm"}
                ]}
            },
            "hooks": {"poststop": [
                {"path": "/usr/local/bin/kata-sriov", "args": ["kata-sriov", "hook", "poststop"], "env": ["LD_PRELOAD=/x.so"]},
                {"path": "/usr/local/bin/kata-sriov", "args": ["kata-sriov", "status"]}
            ]}
        });
        apply(&mut spec, &edit()).unwrap();
        let devs = spec["linux"]["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 3);
        assert_eq!(devs[0], "not-an-object");
        assert_eq!(devs[1]["major"], 243);
        assert_eq!(devs[2]["minor"], 196);
        // Our allow rule now comes after the deny rule for the same node.
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0]["allow"], false);
        assert_eq!(rules[1]["major"], 243);
        assert_eq!(rules[2]["minor"], 196);
        // The hook with our path and args is replaced (no inherited LD_PRELOAD).
        let hooks = spec["hooks"]["poststop"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0]["args"][1], "status");
        assert_eq!(
            hooks[1]["env"][0],
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
    }

    #[test]
    fn wrong_types_leave_the_spec_unchanged() {
        let cases = [
            (
                r#"{"linux":"x"}"#,
                "config.json: linux is a string, expected an object",
            ),
            (
                r#"{"linux":{"devices":{}}}"#,
                "config.json: linux.devices is an object, expected an array",
            ),
            (
                r#"{"linux":{"resources":[]}}"#,
                "config.json: linux.resources is an array, expected an object",
            ),
            (
                r#"{"linux":{"resources":{"devices":7}}}"#,
                "config.json: linux.resources.devices is a number, expected an array",
            ),
            (
                r#"{"hooks":[]}"#,
                "config.json: hooks is an array, expected an object",
            ),
            (
                r#"{"hooks":{"poststop":{}}}"#,
                "config.json: hooks.poststop is an object, expected an array",
            ),
            (
                r#"{"annotations":["a"]}"#,
                "config.json: annotations is an array, expected an object",
            ),
            (
                r#"{"annotations":true}"#,
                "config.json: annotations is a boolean, expected an object",
            ),
        ];
        for (input, want) in cases {
            let mut spec: Value = serde_json::from_str(input).unwrap();
            let e = apply(&mut spec, &edit()).unwrap_err();
            assert_eq!(e.to_string(), want);
            assert_eq!(text(&spec), input, "changed on error");
            assert_eq!(check_spec(&spec).unwrap_err().to_string(), want);
        }
        let mut arr = serde_json::json!([1]);
        assert!(matches!(
            apply(&mut arr, &edit()),
            Err(SpecError::NotObject("an array"))
        ));
        assert_eq!(
            parse_spec(b"[]").unwrap_err().to_string(),
            "config.json: the document is an array, expected an object"
        );
        assert!(matches!(parse_spec(b"{"), Err(SpecError::Json(_))));
        let big = vec![b' '; MAX_INPUT_BYTES + 1];
        assert!(matches!(parse_spec(&big), Err(SpecError::TooLarge(_))));
        assert!(matches!(
            read_spec(std::io::Cursor::new(big)),
            Err(SpecError::TooLarge(n)) if n == MAX_INPUT_BYTES + 1
        ));
    }

    #[test]
    fn bad_edits_are_refused() {
        let spec0 = parse_spec(CONTAINERD_SPEC.as_bytes()).unwrap();
        let mut cases: Vec<(SpecEdit, &str)> = Vec::new();
        let mut e = edit();
        e.owner = String::new();
        cases.push((e, "owner token"));
        let mut e = edit();
        e.owner = "a\nb".into();
        cases.push((e, "owner token"));
        let mut e = edit();
        e.devices.push(node("dev/vfio/1", 1, 1));
        cases.push((e, "must be absolute"));
        let mut e = edit();
        e.devices.push(node("/dev/vfio/../mem", 1, 1));
        cases.push((e, "must be absolute"));
        let mut e = edit();
        e.devices.push(node("/dev/vfio/42", 243, 1));
        cases.push((e, "/dev/vfio/42 is listed twice"));
        let mut e = edit();
        e.devices.retain(|d| d.path != VFIO_CONTAINER);
        cases.push((e, "/dev/vfio/42 listed without /dev/vfio/vfio"));
        let mut e = edit();
        e.poststop.as_mut().unwrap().path = "kata-sriov".into();
        cases.push((e, "hook path"));
        let mut e = edit();
        e.poststop.as_mut().unwrap().timeout = Some(0);
        cases.push((e, "timeout"));
        let mut e = edit();
        e.guest.push(e.guest[0].clone());
        cases.push((e, "spec edit: guest networks: name net1 is used twice"));
        for (e, want) in cases {
            let mut spec = spec0.clone();
            let got = apply(&mut spec, &e).unwrap_err().to_string();
            assert!(got.contains(want), "{got:?} lacks {want:?}");
            assert_eq!(text(&spec), text(&spec0));
        }
        // The same node twice with the same numbers is fine, and added once.
        let mut e = edit();
        e.devices.push(node(VFIO_CONTAINER, 10, 196));
        let mut spec = serde_json::json!({});
        apply(&mut spec, &e).unwrap();
        assert_eq!(spec["linux"]["devices"].as_array().unwrap().len(), 2);
    }
}
