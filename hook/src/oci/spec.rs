//! Pure OCI spec edits, and the lenient hook state parser. Touches no file
//! and no kernel interface: the readers below take any `Read` (stdin in the
//! hook modes), the edits work on text in memory.
//!
//! The spec is never built into a tree: a 4 MiB `config.json` of tiny
//! nested values would cost hundreds of MiB as `serde_json::Value`s, and a
//! round trip through `Value` rewrites numbers (`-0`, `1e2`, integers past
//! u64). [`Spec`] keeps the text as it came; parsing validates it (at most
//! [`MAX_DEPTH`] deep) while borrowing each subtree as a `RawValue` slice,
//! and the edit splices new text in place of what it owns. Every other byte
//! comes back as it went in (key order, numbers, escapes, whitespace; the
//! arrays and the annotations object it rewrites keep their entries' bytes,
//! not the whitespace between them). Peak memory is a few copies of the
//! text (`bench-spec-memory`). The edit owns exactly:
//!
//! * `linux.devices` entries whose `path` is one of the edit's device nodes;
//! * `linux.resources.devices` rules equal to the allow rules for those nodes;
//! * `hooks.poststop` and `hooks.createRuntime` entries with an injected
//!   hook's `path` and `args`;
//! * the annotations `io.kata-sriov.owner` and `io.kata-sriov.guest-networks`
//!   (the latter removed when the edit has no guest networks, so a container
//!   can never supply its own).
//!
//! Owned entries are removed and appended again, so applying an edit twice
//! gives the same spec as applying it once, and the allow rules end up after
//! any deny rule already present. The result is checked as any input is, so
//! it is never something this crate's readers refuse (over 4 MiB, say).
//! On error nothing is returned but the error.

use std::fmt;
use std::io::Read;

use serde::de::{Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::printable;

use crate::guestnet::{
    validate_guest_networks, GuestNetError, GuestNetwork, GUEST_ANNOTATION, MAX_GUEST_JSON,
};
use crate::json::{read_limited, too_deep, MAX_DEPTH, MAX_INPUT_BYTES, READ_ANNOTATIONS};
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
    #[error("config.json: nested deeper than {MAX_DEPTH} arrays and objects (at byte {0})")]
    TooDeep(usize),
    #[error("config.json: not UTF-8 (after byte {0})")]
    NotUtf8(usize),
    #[error("config.json: annotation {0:?} is {1}, expected a string")]
    AnnotationNotString(String, &'static str),
    #[error("spec edit: the edited config.json would be {0} bytes, over the {MAX_INPUT_BYTES}-byte limit")]
    EditTooLarge(usize),
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

/// A `config.json`, checked: its text exactly as read, and the annotations
/// the plan reads (those under `io.kata-sriov.` and `io.kubernetes.cri.`).
/// Nothing else of it is held in memory: the edit works on the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    text: String,
    annotations: Map<String, Value>,
}

impl Spec {
    /// The text (what [`Spec::apply`] returns is written as it is).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The annotations a plan reads (see [`Spec`]).
    pub fn annotations(&self) -> &Map<String, Value> {
        &self.annotations
    }

    /// A spec from a value (tests, and callers that build one).
    pub fn from_value(v: &Value) -> Result<Spec, SpecError> {
        parse_text(serde_json::to_string(v).map_err(SpecError::Json)?)
    }
}

/// Reads a `config.json` (at most [`MAX_INPUT_BYTES`]) whose root is an
/// object.
pub fn read_spec<R: Read>(r: R) -> Result<Spec, SpecError> {
    parse_spec_owned(read_limited(r).map_err(SpecError::Read)?)
}

/// Parses and checks a `config.json` (at most [`MAX_INPUT_BYTES`], nested
/// at most [`MAX_DEPTH`] deep, UTF-8): the root must be an object, every
/// field [`Spec::apply`] may touch must have the right type (absent and
/// null count as absent) and every annotation must be a string, so a
/// malformed spec is refused before any VF is taken. Memory: the text,
/// plus the read annotations; subtrees are validated without being built.
pub fn parse_spec(bytes: &[u8]) -> Result<Spec, SpecError> {
    // The cheap refusals before a copy is made.
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(SpecError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| SpecError::NotUtf8(e.valid_up_to()))?;
    parse_text(text.to_owned())
}

/// [`parse_spec`] of bytes it may keep (no copy is made).
pub fn parse_spec_owned(bytes: Vec<u8>) -> Result<Spec, SpecError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(SpecError::TooLarge(bytes.len()));
    }
    let text =
        String::from_utf8(bytes).map_err(|e| SpecError::NotUtf8(e.utf8_error().valid_up_to()))?;
    parse_text(text)
}

fn parse_text(text: String) -> Result<Spec, SpecError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(SpecError::TooLarge(text.len()));
    }
    if let Some(at) = too_deep(text.as_bytes(), MAX_DEPTH) {
        return Err(SpecError::TooDeep(at));
    }
    let annotations = check_text(&text)?;
    Ok(Spec { text, annotations })
}

/// The checks of [`parse_spec`]; the annotations a plan reads.
fn check_text(text: &str) -> Result<Map<String, Value>, SpecError> {
    let root: &RawValue = serde_json::from_str(text).map_err(SpecError::Json)?;
    let root = root_object(root)?;
    if let Some(linux) = root.object("linux", "linux", LINUX_KEYS)? {
        linux.array("devices", "linux.devices")?;
        if let Some(res) = linux.object("resources", "linux.resources", RESOURCES_KEYS)? {
            res.array("devices", "linux.resources.devices")?;
        }
    }
    if let Some(hooks) = root.object("hooks", "hooks", HOOK_STAGES)? {
        for stage in HOOK_STAGES {
            hooks.array(stage, HOOK_FIELDS[hook_index(stage)])?;
        }
    }
    let mut annotations = Map::new();
    if let Some(a) = root.object("annotations", "annotations", &[])? {
        each_member(a.raw, |key, v| {
            if !v.get().starts_with('"') {
                return Err(SpecError::AnnotationNotString(printable(key), raw_kind(v)));
            }
            if READ_ANNOTATIONS.iter().any(|p| key.starts_with(p)) {
                let s: String = serde_json::from_str(v.get()).map_err(SpecError::Json)?;
                annotations.insert(key.to_owned(), Value::String(s));
            }
            Ok(())
        })?;
    }
    Ok(annotations)
}

const ROOT_KEYS: &[&str] = &["linux", "hooks", "annotations"];
const LINUX_KEYS: &[&str] = &["devices", "resources"];
const RESOURCES_KEYS: &[&str] = &["devices"];
/// The hook stages the edit may add to, and their names in messages.
const HOOK_STAGES: &[&str] = &["poststop", "createRuntime"];
const HOOK_FIELDS: [&str; 2] = ["hooks.poststop", "hooks.createRuntime"];

fn hook_index(stage: &str) -> usize {
    HOOK_STAGES.iter().position(|s| *s == stage).unwrap_or(0)
}

fn root_object(raw: &RawValue) -> Result<Obj<'_>, SpecError> {
    match raw.get().starts_with('{') {
        true => object(raw, "", ROOT_KEYS)?.ok_or(SpecError::NotObject("null")),
        false => Err(SpecError::NotObject(raw_kind(raw))),
    }
}

/// What kind of JSON value `raw` is, for error messages.
fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// An object of the spec's text: its members named in `keys` (the last of
/// each, as JSON readers take it), borrowed; whether it has any member.
struct Obj<'a> {
    raw: &'a RawValue,
    name: &'static str,
    any: bool,
    found: Vec<(&'static str, &'a RawValue)>,
}

/// `raw` as an [`Obj`], None when it is null; an error naming `name` when it
/// is neither.
fn object<'a>(
    raw: &'a RawValue,
    name: &'static str,
    keys: &'static [&'static str],
) -> Result<Option<Obj<'a>>, SpecError> {
    match raw.get().as_bytes().first() {
        Some(b'n') => return Ok(None),
        Some(b'{') => {}
        _ => {
            return Err(SpecError::WrongType {
                field: name,
                found: raw_kind(raw),
                expected: "an object",
            })
        }
    }
    let mut any = false;
    let mut found: Vec<(&'static str, &'a RawValue)> = Vec::new();
    each_member(raw, |k, v| {
        any = true;
        if let Some(key) = keys.iter().find(|key| **key == k) {
            found.retain(|(x, _)| x != key);
            found.push((key, v));
        }
        Ok(())
    })?;
    Ok(Some(Obj {
        raw,
        name,
        any,
        found,
    }))
}

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.found.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// Member `key` as an object (None: absent or null).
    fn object(
        &self,
        key: &str,
        name: &'static str,
        keys: &'static [&'static str],
    ) -> Result<Option<Obj<'a>>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => object(v, name, keys),
        }
    }

    /// Member `key` as an array (None: absent or null).
    fn array(&self, key: &str, name: &'static str) -> Result<Option<&'a RawValue>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get().as_bytes().first() {
                Some(b'n') => Ok(None),
                Some(b'[') => Ok(Some(v)),
                _ => Err(SpecError::WrongType {
                    field: name,
                    found: raw_kind(v),
                    expected: "an array",
                }),
            },
        }
    }
}

/// Calls `f` with each member of the object `raw` (key, value text), in
/// order, without building the values.
fn each_member<'a>(
    raw: &'a RawValue,
    f: impl FnMut(&str, &'a RawValue) -> Result<(), SpecError>,
) -> Result<(), SpecError> {
    struct V<F>(F);
    impl<'de, F: FnMut(&str, &'de RawValue) -> Result<(), SpecError>> Visitor<'de> for V<F> {
        type Value = Result<(), SpecError>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<Self::Value, A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                let v: &'de RawValue = m.next_value()?;
                if let Err(e) = (self.0)(&k, v) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(V(f)).map_err(SpecError::Json)?
}

/// Calls `f` with each element of the array `raw`, in order, without
/// building them.
fn each_element<'a>(raw: &'a RawValue, f: impl FnMut(&'a RawValue)) -> Result<(), SpecError> {
    struct V<F>(F);
    impl<'de, F: FnMut(&'de RawValue)> Visitor<'de> for V<F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut s: A) -> Result<(), A::Error> {
            while let Some(e) = s.next_element::<&'de RawValue>()? {
                (self.0)(e);
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_seq(V(f)).map_err(SpecError::Json)
}

fn check_edit(edit: &SpecEdit) -> Result<Vec<&DeviceNode>, SpecError> {
    if !owner::valid(&edit.owner) {
        return Err(SpecError::BadOwner);
    }
    let devices = check_devices(&edit.devices)?;
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

/// The device nodes, each once; a path listed with two numbers, a bad path
/// or a group node without [`VFIO_CONTAINER`] is refused.
fn check_devices(list: &[DeviceNode]) -> Result<Vec<&DeviceNode>, SpecError> {
    let mut devices: Vec<&DeviceNode> = Vec::new();
    for d in list {
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
    Ok(devices)
}

/// The guest annotation's text; `None` for no networks.
fn guest_text(guest: &[GuestNetwork]) -> Result<Option<String>, SpecError> {
    if guest.is_empty() {
        return Ok(None);
    }
    let text =
        serde_json::to_string(guest).map_err(|e| SpecError::Guest(GuestNetError::Json(e)))?;
    if text.len() > MAX_GUEST_JSON {
        return Err(SpecError::Guest(GuestNetError::TooLarge(text.len())));
    }
    Ok(Some(text))
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

fn path_of(v: &Value) -> Option<&str> {
    v.get("path").and_then(Value::as_str)
}

/// Largest entry of an edited array that is parsed to see whether it is
/// ours (larger ones never are: they are kept as they are, unparsed).
const MAX_OWNED_ENTRY: usize = 64 * 1024;

/// Edits of one text: spans replaced by new text (an insertion is an
/// empty span), applied together.
struct Splices<'a> {
    base: &'a str,
    edits: Vec<(usize, usize, String)>,
}

impl Splices<'_> {
    /// Where `raw` (borrowed from the base text) lies in the base text.
    fn span(&self, raw: &RawValue) -> (usize, usize) {
        let start = (raw.get().as_ptr() as usize)
            .saturating_sub(self.base.as_ptr() as usize)
            .min(self.base.len());
        (start, (start + raw.get().len()).min(self.base.len()))
    }

    fn replace(&mut self, raw: &RawValue, text: String) {
        let (s, e) = self.span(raw);
        self.edits.push((s, e, text));
    }

    fn finish(mut self) -> String {
        self.edits.sort_by_key(|(s, e, _)| (*s, *e));
        let added: usize = self.edits.iter().map(|(_, _, t)| t.len()).sum();
        let mut out = String::with_capacity(self.base.len() + added);
        let mut at = 0;
        for (s, e, t) in &self.edits {
            out.push_str(&self.base[at..*s]);
            out.push_str(t);
            at = *e;
        }
        out.push_str(&self.base[at..]);
        out
    }
}

/// What to set in an object: a finished value text, or (for an object
/// value) some of its own members, leaving the others as they are.
enum Put {
    Text(String),
    Members(&'static [&'static str], Vec<(&'static str, Put)>),
}

fn json_key(k: &str) -> String {
    Value::from(k).to_string()
}

fn render(p: Put) -> String {
    match p {
        Put::Text(t) => t,
        Put::Members(_, members) => {
            let body: Vec<String> = members
                .into_iter()
                .map(|(k, p)| format!("{}:{}", json_key(k), render(p)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
    }
}

/// Sets `puts` in the object `obj` of the text: an existing member's value
/// is replaced (or, for [`Put::Members`] on an object, edited in place), a
/// missing one is added before the closing brace. Bytes around are kept.
fn put_members(
    sp: &mut Splices,
    obj: &Obj,
    puts: Vec<(&'static str, Put)>,
) -> Result<(), SpecError> {
    let mut added = String::new();
    let mut any = obj.any;
    for (key, put) in puts {
        let text = match (obj.get(key), put) {
            (Some(v), Put::Members(keys, sub)) => match object(v, obj.name, keys)? {
                Some(o) => {
                    put_members(sp, &o, sub)?;
                    continue;
                }
                None => {
                    sp.replace(v, render(Put::Members(keys, sub)));
                    continue;
                }
            },
            (Some(v), put) => {
                sp.replace(v, render(put));
                continue;
            }
            (None, put) => render(put),
        };
        if any {
            added.push(',');
        }
        any = true;
        added.push_str(&json_key(key));
        added.push(':');
        added.push_str(&text);
    }
    if !added.is_empty() {
        let (_, end) = sp.span(obj.raw);
        let close = end.saturating_sub(1);
        sp.edits.push((close, close, added));
    }
    Ok(())
}

/// An edited array's text: the elements of `old` that `keep` accepts, byte
/// for byte, then `add`.
fn rebuild(
    old: Option<&RawValue>,
    keep: impl Fn(&Value) -> bool,
    add: &[Value],
) -> Result<String, SpecError> {
    let mut out = String::from("[");
    let mut push = |t: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(t);
    };
    if let Some(a) = old {
        each_element(a, |e| {
            let text = e.get();
            let kept = text.len() > MAX_OWNED_ENTRY
                || serde_json::from_str::<Value>(text).map_or(true, |v| keep(&v));
            if kept {
                push(text);
            }
        })?;
    }
    for v in add {
        push(&v.to_string());
    }
    out.push(']');
    Ok(out)
}

impl Spec {
    /// Applies `edit`: a new spec whose text is this one's with only what
    /// the edit owns changed (see the module doc); every other byte is
    /// kept, numbers and key order included (whitespace too, except
    /// between the entries of the arrays and annotations it rewrites).
    /// Idempotent. The result is checked by [`parse_spec`], so it is never
    /// something this crate's readers refuse.
    pub fn apply(&self, edit: &SpecEdit) -> Result<Spec, SpecError> {
        let devices = check_edit(edit)?;
        let guest = guest_text(&edit.guest)?;
        self.edit(
            &devices,
            guest,
            Some(&edit.owner),
            [&edit.poststop, &edit.create_runtime],
        )
    }

    /// Adds the VFs prepared for a pod (by the DRA agent) to its sandbox's
    /// spec: their device nodes and allow rules, and the guest annotation
    /// set to `guest` (the entries of VFs the host already wrote into this
    /// spec, then the pod's): whatever the spec carried there is replaced.
    /// The owner annotation is left alone (these VFs are released by the
    /// agent's unprepare, never by the sandbox).
    pub fn add_pod_devices(
        &self,
        devices: &[DeviceNode],
        guest: &[GuestNetwork],
    ) -> Result<Spec, SpecError> {
        let devices = check_devices(devices)?;
        validate_guest_networks(guest)?;
        self.edit(&devices, guest_text(guest)?, None, [&None, &None])
    }

    /// Sets the guest annotation to `guest` (validated; none removes it),
    /// changing nothing else: a device plugin pod's VFs reach the VM
    /// through Kata's own cold plug, only their guest side is ours.
    pub fn set_guest(&self, guest: &[GuestNetwork]) -> Result<Spec, SpecError> {
        validate_guest_networks(guest)?;
        self.edit(&[], guest_text(guest)?, None, [&None, &None])
    }

    /// The one text edit: `devices` in `linux`, the hooks, the owner
    /// annotation when given, and the guest annotation (set, or removed
    /// when `None`: a container never supplies its own).
    fn edit(
        &self,
        devices: &[&DeviceNode],
        guest: Option<String>,
        owner: Option<&str>,
        entries: [&Option<HookEntry>; 2],
    ) -> Result<Spec, SpecError> {
        let base = self.text.as_str();
        let root: &RawValue = serde_json::from_str(base).map_err(SpecError::Json)?;
        let root = root_object(root)?;
        let mut puts = Vec::new();

        if !devices.is_empty() {
            let linux = root.object("linux", "linux", LINUX_KEYS)?;
            let old = match &linux {
                Some(l) => l.array("devices", "linux.devices")?,
                None => None,
            };
            let ours: Vec<Value> = devices.iter().map(|d| device_entry(d)).collect();
            let devs = rebuild(
                old,
                |v| !path_of(v).is_some_and(|p| devices.iter().any(|d| d.path == p)),
                &ours,
            )?;
            let mut rules: Vec<Value> = Vec::new();
            for d in devices {
                let r = allow_rule(d);
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
            let res = match &linux {
                Some(l) => l.object("resources", "linux.resources", RESOURCES_KEYS)?,
                None => None,
            };
            let old = match &res {
                Some(r) => r.array("devices", "linux.resources.devices")?,
                None => None,
            };
            let rules = rebuild(old, |v| !rules.contains(v), &rules)?;
            puts.push((
                "linux",
                Put::Members(
                    LINUX_KEYS,
                    vec![
                        ("devices", Put::Text(devs)),
                        (
                            "resources",
                            Put::Members(RESOURCES_KEYS, vec![("devices", Put::Text(rules))]),
                        ),
                    ],
                ),
            ));
        }

        let hooks = root.object("hooks", "hooks", HOOK_STAGES)?;
        let mut stages = Vec::new();
        for (i, hook) in entries.into_iter().enumerate() {
            let Some(hook) = hook else { continue };
            let ours = hook.to_value();
            let args = ours.get("args").cloned();
            let old = match &hooks {
                Some(h) => h.array(HOOK_STAGES[i], HOOK_FIELDS[i])?,
                None => None,
            };
            let list = rebuild(
                old,
                |v| !(path_of(v) == Some(hook.path.as_str()) && v.get("args") == args.as_ref()),
                std::slice::from_ref(&ours),
            )?;
            stages.push((HOOK_STAGES[i], Put::Text(list)));
        }
        if !stages.is_empty() {
            puts.push(("hooks", Put::Members(HOOK_STAGES, stages)));
        }

        let mut ann = String::from("{");
        let mut push = |k: &str, v: &str| {
            if ann.len() > 1 {
                ann.push(',');
            }
            ann.push_str(&json_key(k));
            ann.push(':');
            ann.push_str(v);
        };
        // Ours replace theirs where they were (the first time), or come last.
        let owner = owner.map(|o| Value::from(o).to_string());
        let guest = guest.map(|g| Value::from(g).to_string());
        let (mut owner_put, mut guest_put) = (owner.is_none(), guest.is_none());
        if let Some(a) = root.object("annotations", "annotations", &[])? {
            each_member(a.raw, |k, v| {
                match k {
                    OWNER_ANNOTATION if !owner_put => {
                        push(k, owner.as_deref().unwrap_or_default());
                        owner_put = true;
                    }
                    GUEST_ANNOTATION if !guest_put => {
                        push(k, guest.as_deref().unwrap_or_default());
                        guest_put = true;
                    }
                    GUEST_ANNOTATION => {}
                    OWNER_ANNOTATION if owner.is_some() => {}
                    _ => push(k, v.get()),
                }
                Ok(())
            })?;
        }
        if let (false, Some(o)) = (owner_put, &owner) {
            push(OWNER_ANNOTATION, o);
        }
        if let (false, Some(g)) = (guest_put, &guest) {
            push(GUEST_ANNOTATION, g);
        }
        ann.push('}');
        puts.push(("annotations", Put::Text(ann)));

        let mut sp = Splices {
            base,
            edits: Vec::new(),
        };
        put_members(&mut sp, &root, puts)?;
        let out = sp.finish();
        if out.len() > MAX_INPUT_BYTES {
            return Err(SpecError::EditTooLarge(out.len()));
        }
        parse_text(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guestnet::L3Config;

    /// [`Spec::apply`] on a value: on error `spec` is unchanged.
    fn apply(spec: &mut Value, edit: &SpecEdit) -> Result<(), SpecError> {
        let out = Spec::from_value(spec)?.apply(edit)?;
        *spec = serde_json::from_str(out.text()).unwrap();
        Ok(())
    }

    fn add_pod_devices(
        spec: &mut Value,
        devices: &[DeviceNode],
        guest: &[GuestNetwork],
    ) -> Result<(), SpecError> {
        let out = Spec::from_value(spec)?.add_pod_devices(devices, guest)?;
        *spec = serde_json::from_str(out.text()).unwrap();
        Ok(())
    }

    fn check_spec(spec: &Value) -> Result<(), SpecError> {
        Spec::from_value(spec).map(drop)
    }

    fn parse_v(bytes: &[u8]) -> Result<Value, SpecError> {
        parse_spec(bytes).map(|s| serde_json::from_str(s.text()).unwrap())
    }

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
        let before = parse_v(CONTAINERD_SPEC.as_bytes()).unwrap();
        // The compact form survives a parse/serialize round trip byte for
        // byte: key order and number forms are preserved.
        let compact = text(&before);
        assert_eq!(text(&parse_v(compact.as_bytes()).unwrap()), compact);
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
        let before = parse_v(CONTAINERD_SPEC.as_bytes()).unwrap();
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
            parse_v(b"[]").unwrap_err().to_string(),
            "config.json: the document is an array, expected an object"
        );
        assert!(matches!(parse_v(b"{"), Err(SpecError::Json(_))));
        let big = vec![b' '; MAX_INPUT_BYTES + 1];
        assert!(matches!(parse_v(&big), Err(SpecError::TooLarge(_))));
        assert!(matches!(
            read_spec(std::io::Cursor::new(big)),
            Err(SpecError::TooLarge(n)) if n == MAX_INPUT_BYTES + 1
        ));
    }

    #[test]
    fn bad_edits_are_refused() {
        let spec0 = parse_v(CONTAINERD_SPEC.as_bytes()).unwrap();
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

    #[test]
    fn bytes_outside_the_edit_come_back_as_they_went_in() {
        // Numbers serde would rewrite, odd whitespace, escapes, key order.
        let input = "{\n  \"ociVersion\" : \"1.2.0\",\n  \"x\": [-0, 1e2, 1E+2, 0.10, 123456789012345678901234567890, -9223372036854775809],\n  \"process\": {\"args\": [\"a\\u0041\\n\"],\t\"z\": 1, \"a\": 2},\n  \"linux\": {\"seccomp\": {\"n\": 1.0}, \"devices\": [ {\"path\": \"/dev/fuse\", \"major\": 10, \"minor\": 229, \"x\": 1e0} ]},\n  \"annotations\": {\"k\": \"v\\u00e9\", \"io.kata-sriov.owner\": \"old\"}\n}\n";
        let spec = parse_spec(input.as_bytes()).unwrap();
        let out = spec.apply(&edit()).unwrap();
        let t = out.text();
        // Untouched members, byte for byte, with the whitespace around them.
        for kept in [
            "{\n  \"ociVersion\" : \"1.2.0\",\n  \"x\": [-0, 1e2, 1E+2, 0.10, 123456789012345678901234567890, -9223372036854775809],\n  \"process\": {\"args\": [\"a\\u0041\\n\"],\t\"z\": 1, \"a\": 2},\n  \"linux\": {\"seccomp\": {\"n\": 1.0}, \"devices\": [",
            "{\"path\": \"/dev/fuse\", \"major\": 10, \"minor\": 229, \"x\": 1e0}",
            "\"k\":\"v\\u00e9\"",
        ] {
            assert!(t.contains(kept), "{kept:?} lost in {t}");
        }
        assert!(t.ends_with("}\n"), "{t:?}");
        // The owner keeps its place; the guest annotation comes after.
        assert!(t.contains(r#"{"k":"v\u00e9","io.kata-sriov.owner":"k8s.io/5f2c0e6c1d3b","io.kata-sriov.guest-networks":"#));
        // Added members go before the closing brace of their object.
        assert!(
            t.contains(r#"],"resources":{"devices":[{"allow":true"#),
            "{t}"
        );
        // Applying it again changes nothing.
        assert_eq!(out.apply(&edit()).unwrap().text(), t);
        // Without anything to add, only the annotations object changes.
        let bare = SpecEdit {
            owner: "o".into(),
            ..SpecEdit::default()
        };
        let t2 = spec.apply(&bare).unwrap();
        assert_eq!(
            t2.text(),
            input.replace(
                "{\"k\": \"v\\u00e9\", \"io.kata-sriov.owner\": \"old\"}",
                r#"{"k":"v\u00e9","io.kata-sriov.owner":"o"}"#
            )
        );
    }

    #[test]
    fn deep_odd_or_oversized_specs_are_refused() {
        let deep = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let e = parse_spec(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
        let ok = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        parse_spec(ok.as_bytes()).unwrap();
        let e = parse_spec(br#"{"annotations":{"a":"b","c":["d"]}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"config.json: annotation "c" is an array, expected a string"#
        );
        let e = parse_spec(b"{\"a\":\"\xff\"}").unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = parse_spec(br#"{"hooks":{"createRuntime":1}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hooks.createRuntime is a number"), "{e}");
        // An edit that would take the spec over the limit is refused.
        let pad = " ".repeat(MAX_INPUT_BYTES - 100);
        let near = format!("{{\"a\":1{pad}}}");
        let e = parse_spec(near.as_bytes())
            .unwrap()
            .apply(&edit())
            .unwrap_err();
        assert!(matches!(e, SpecError::EditTooLarge(_)), "{e}");
    }

    #[test]
    fn only_the_annotations_a_plan_reads_are_kept() {
        let s = parse_spec(
            br#"{"annotations":{"io.kata-sriov.networks":"fast","other":"x","io.kubernetes.cri.sandbox-id":"s"}}"#,
        )
        .unwrap();
        let keys: Vec<&str> = s.annotations().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["io.kata-sriov.networks", "io.kubernetes.cri.sandbox-id"]
        );
    }

    #[test]
    fn pod_devices_join_the_hosts_own_and_replace_a_containers_guest_annotation() {
        let mut spec = parse_v(CONTAINERD_SPEC.as_bytes()).unwrap();
        let own = edit();
        apply(&mut spec, &own).unwrap();
        let pod_node = node("/dev/vfio/43", 243, 1);
        let mut pod_guest = own.guest[0].clone();
        pod_guest.mac = Some("02:00:00:00:00:02".parse().unwrap());
        pod_guest.l3.name = Some("net2".parse().unwrap());
        let devices = vec![pod_node.clone(), node(VFIO_CONTAINER, 10, 196)];
        let guest = vec![own.guest[0].clone(), pod_guest];
        // Two VFs named alike are refused, the spec unchanged.
        let before = spec.clone();
        let twice = vec![own.guest[0].clone(), own.guest[0].clone()];
        assert!(add_pod_devices(&mut spec, &devices, &twice).is_err());
        assert_eq!(spec, before);
        add_pod_devices(&mut spec, &devices, &guest).unwrap();
        let once = spec.clone();
        add_pod_devices(&mut spec, &devices, &guest).unwrap();
        assert_eq!(spec, once, "idempotent");
        let devs = spec["linux"]["devices"].as_array().unwrap();
        let paths: Vec<&str> = devs.iter().filter_map(path_of).collect();
        assert_eq!(
            paths,
            ["/dev/fuse", "/dev/vfio/42", "/dev/vfio/43", VFIO_CONTAINER]
        );
        assert!(spec["linux"]["resources"]["devices"]
            .as_array()
            .unwrap()
            .contains(&allow_rule(&pod_node)));
        let ann = &spec["annotations"];
        assert_eq!(ann[OWNER_ANNOTATION], "k8s.io/5f2c0e6c1d3b");
        assert_eq!(
            ann[GUEST_ANNOTATION].as_str().unwrap(),
            serde_json::to_string(&guest).unwrap()
        );

        // Without a claim of the host's own: the container's annotation
        // is replaced, no owner is written.
        let mut spec = parse_v(CONTAINERD_SPEC.as_bytes()).unwrap();
        add_pod_devices(&mut spec, &devices, &guest[1..]).unwrap();
        assert!(spec["annotations"].get(OWNER_ANNOTATION).is_none());
        assert!(!text(&spec).contains("evil"));
        // A group node without the container node changes nothing.
        let before = spec.clone();
        let e = add_pod_devices(&mut spec, &[node("/dev/vfio/44", 243, 2)], &[]).unwrap_err();
        assert!(matches!(e, SpecError::MissingVfioContainer(_)), "{e}");
        assert_eq!(spec, before);
    }

    #[test]
    fn set_guest_changes_only_the_guest_annotation() {
        let spec = parse_spec(CONTAINERD_SPEC.as_bytes()).unwrap();
        let guest = edit().guest;
        let out = spec.set_guest(&guest).unwrap();
        let (a, b) = (
            parse_v(spec.text().as_bytes()).unwrap(),
            parse_v(out.text().as_bytes()).unwrap(),
        );
        for k in keys(&a) {
            if k != "annotations" {
                assert_eq!(text(&a[k]), text(&b[k]), "{k} changed");
            }
        }
        assert_eq!(
            b["annotations"][GUEST_ANNOTATION].as_str().unwrap(),
            serde_json::to_string(&guest).unwrap()
        );
        assert_eq!(
            a["annotations"].get(OWNER_ANNOTATION),
            b["annotations"].get(OWNER_ANNOTATION)
        );
        let twice = vec![guest[0].clone(), guest[0].clone()];
        assert!(spec.set_guest(&twice).is_err());
    }
}
