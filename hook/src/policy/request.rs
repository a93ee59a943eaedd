//! What a container asks for: the `io.kata-sriov.networks` annotation of its
//! OCI spec, parsed and validated. Touches no file.
//!
//! The value is hostile input. Two forms are accepted:
//!
//! * a comma-separated list of pool names, `fast` or `fast, fast`: one VF
//!   per name, nothing else chosen;
//! * a JSON array of objects, one per VF:
//!   `[{"pool":"fast","name":"net1","ips":["10.0.0.5/24"],"gateway":"10.0.0.1",
//!   "routes":[{"dst":"10.1.0.0/16","via":"10.0.0.1"}],"mtu":1500,"mac":"02:00:00:00:00:01"}]`
//!   where everything but `pool` is optional.
//!
//! A request can only pick a pool, a MAC and guest-side L3 settings. Whether
//! the pool exists, whether it lets the container choose the MAC and whether
//! it has enough VFs is checked later, against the admin's config, by the
//! claim engine.
//!
//! Refused, with an error naming the entry and field: malformed JSON, a
//! shape other than the two above, duplicate keys (at any depth), unknown
//! keys, invalid pool names, addresses, prefixes, gateways, routes or MTUs
//! ([`L3Config::validate`]), zero or multicast MACs, an empty list, more than
//! [`MAX_REQUESTS`] entries, one interface name or MAC used twice, and values
//! over [`MAX_REQUEST_BYTES`].

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::guestnet::{IpCidr, L3Config, L3Error, Route};
use crate::pci::{IfName, MacAddr, ParseError, PciAddress};
pub use crate::policy::config::{PoolName, MAX_POOL_NAME};

/// Annotation a container sets to ask for VFs.
pub const REQUEST_ANNOTATION: &str = "io.kata-sriov.networks";
/// Largest request value accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most VFs one container may ask for.
pub const MAX_REQUESTS: usize = 32;

/// One VF a container asks for. Serializes to the JSON entry form, which
/// [`parse_request`] reads back to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkRequest {
    pub pool: PoolName,
    /// The MAC the container wants; honoured only where the pool allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(flatten)]
    pub l3: L3Config,
    /// Host side only: claim exactly this VF (the Kubernetes agent pins the
    /// VF the scheduler allocated). No parser sets it and it is never
    /// serialized, so no annotation can.
    #[serde(skip)]
    pub vf: Option<PciAddress>,
}

impl NetworkRequest {
    /// A VF from `pool` with nothing else chosen (the comma-list form, and
    /// the admin's default networks).
    pub fn plain(pool: PoolName) -> Self {
        NetworkRequest {
            pool,
            mac: None,
            l3: L3Config::default(),
            vf: None,
        }
    }
}

/// What is wrong with one entry of a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("expected a JSON object, found {0}")]
    NotObject(&'static str),
    #[error("\"pool\" is missing")]
    MissingPool,
    #[error("unknown key {0:?} (allowed: pool, mac, name, ips, gateway, routes, mtu)")]
    UnknownKey(String),
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("pool: {0}")]
    Pool(ParseError),
    #[error("mac: {0}")]
    Mac(ParseError),
    #[error("{0}")]
    L3(L3Error),
}

/// Why a request was refused. Every message starts with the annotation's
/// name and says what was wrong where.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{REQUEST_ANNOTATION}: value is {0} bytes, over the {MAX_REQUEST_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("{REQUEST_ANNOTATION}: value must be a string, found {0}")]
    NotString(&'static str),
    #[error("{REQUEST_ANNOTATION}: empty request; name at least one pool")]
    Empty,
    #[error("{REQUEST_ANNOTATION}: {0} networks requested, at most {MAX_REQUESTS} are allowed")]
    TooMany(usize),
    #[error("{REQUEST_ANNOTATION}: malformed JSON: {0}")]
    Json(serde_json::Error),
    #[error("{REQUEST_ANNOTATION}: expected a JSON array of objects, found {0}")]
    NotArray(&'static str),
    #[error("{REQUEST_ANNOTATION}: entry {index}: {cause}")]
    Entry { index: usize, cause: EntryError },
    #[error("{REQUEST_ANNOTATION}: entries {first} and {second} both use interface name {name}")]
    DuplicateName {
        name: IfName,
        first: usize,
        second: usize,
    },
    #[error("{REQUEST_ANNOTATION}: entries {first} and {second} both ask for mac {mac}")]
    DuplicateMac {
        mac: MacAddr,
        first: usize,
        second: usize,
    },
}

use crate::json::kind;

/// Parses and validates a request value (the annotation's string).
pub fn parse_request(text: &str) -> Result<Vec<NetworkRequest>, RequestError> {
    if text.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge(text.len()));
    }
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let reqs = if trimmed.starts_with(['[', '{', '"']) {
        parse_json(trimmed)?
    } else {
        parse_list(trimmed)?
    };
    check_unique(&reqs)?;
    Ok(reqs)
}

/// The request in a container's annotations: `None` when it asks for
/// nothing (no annotation).
pub fn request_from_annotations(
    annotations: &Map<String, Value>,
) -> Result<Option<Vec<NetworkRequest>>, RequestError> {
    match annotations.get(REQUEST_ANNOTATION) {
        None => Ok(None),
        Some(Value::String(s)) => parse_request(s).map(Some),
        Some(other) => Err(RequestError::NotString(kind(other))),
    }
}

fn parse_list(text: &str) -> Result<Vec<NetworkRequest>, RequestError> {
    if text.is_empty() {
        return Err(RequestError::Empty);
    }
    let count = text.split(',').count();
    if count > MAX_REQUESTS {
        return Err(RequestError::TooMany(count));
    }
    text.split(',')
        .enumerate()
        .map(|(index, name)| {
            name.trim_matches(|c: char| c.is_ascii_whitespace())
                .parse()
                .map(NetworkRequest::plain)
                .map_err(|e| RequestError::Entry {
                    index,
                    cause: EntryError::Pool(e),
                })
        })
        .collect()
}

fn parse_json(text: &str) -> Result<Vec<NetworkRequest>, RequestError> {
    let value = strict_from_str(text).map_err(RequestError::Json)?;
    let Value::Array(entries) = value else {
        return Err(RequestError::NotArray(kind(&value)));
    };
    if entries.is_empty() {
        return Err(RequestError::Empty);
    }
    if entries.len() > MAX_REQUESTS {
        return Err(RequestError::TooMany(entries.len()));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(index, v)| parse_entry(v).map_err(|cause| RequestError::Entry { index, cause }))
        .collect()
}

fn field<T: DeserializeOwned>(name: &'static str, v: Value) -> Result<T, EntryError> {
    serde_json::from_value(v).map_err(|e| EntryError::Field {
        field: name,
        message: one_line(&e.to_string(), 200),
    })
}

/// Parses and validates one entry of the JSON form (an object with `pool`
/// and the optional keys), as the annotation's entries are. For callers
/// that get entries from elsewhere (the Kubernetes agent's opaque config).
pub fn parse_entry(v: Value) -> Result<NetworkRequest, EntryError> {
    let Value::Object(map) = v else {
        return Err(EntryError::NotObject(kind(&v)));
    };
    let mut pool = None;
    let mut mac = None;
    let mut l3 = L3Config::default();
    for (key, value) in map {
        match key.as_str() {
            "pool" => {
                let s: String = field("pool", value)?;
                pool = Some(s.parse().map_err(EntryError::Pool)?);
            }
            "mac" => {
                let s: String = field("mac", value)?;
                mac = Some(MacAddr::parse_assignable(&s).map_err(EntryError::Mac)?);
            }
            "name" => l3.name = Some(field::<IfName>("name", value)?),
            "ips" => l3.ips = field::<Vec<IpCidr>>("ips", value)?,
            "gateway" => l3.gateway = Some(field::<IpAddr>("gateway", value)?),
            "routes" => l3.routes = field::<Vec<Route>>("routes", value)?,
            "mtu" => l3.mtu = Some(field::<u32>("mtu", value)?),
            _ => return Err(EntryError::UnknownKey(cut(&key))),
        }
    }
    let pool = pool.ok_or(EntryError::MissingPool)?;
    l3.validate().map_err(EntryError::L3)?;
    Ok(NetworkRequest {
        pool,
        mac,
        l3,
        vf: None,
    })
}

/// A key cut to a readable length for an error message.
fn cut(s: &str) -> String {
    one_line(s, 64)
}

/// `s` cut to `max` characters with control characters escaped, so that an
/// error message quoting hostile input stays one readable line.
fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn check_unique(reqs: &[NetworkRequest]) -> Result<(), RequestError> {
    for (second, r) in reqs.iter().enumerate() {
        let earlier = &reqs[..second];
        if let Some(name) = &r.l3.name {
            if let Some(first) = earlier
                .iter()
                .position(|o| o.l3.name.as_ref() == Some(name))
            {
                return Err(RequestError::DuplicateName {
                    name: name.clone(),
                    first,
                    second,
                });
            }
        }
        if let Some(mac) = r.mac {
            if let Some(first) = earlier.iter().position(|o| o.mac == Some(mac)) {
                return Err(RequestError::DuplicateMac { mac, first, second });
            }
        }
    }
    Ok(())
}

/// Parses JSON into a [`Value`], refusing duplicate object keys at any
/// depth (a plain `Value` silently keeps the last one) and trailing data.
fn strict_from_str(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = StrictValue::deserialize(&mut de)?;
    de.end()?;
    Ok(v.0)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {:?}",
                    cut(&key)
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse_request(text) {
            Ok(r) => panic!("{text:?} was accepted: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn pool_list() {
        let r = parse_request("fast").unwrap();
        assert_eq!(r, vec![NetworkRequest::plain("fast".parse().unwrap())]);
        let r = parse_request(" fast , slow.1,fast ").unwrap();
        let pools: Vec<&str> = r.iter().map(|r| r.pool.as_str()).collect();
        assert_eq!(pools, ["fast", "slow.1", "fast"]);
        assert!(r
            .iter()
            .all(|r| r.mac.is_none() && r.l3 == L3Config::default()));
    }

    #[test]
    fn pool_names() {
        for good in ["a", "fast", "A_b-c.d", "0", &"x".repeat(64)] {
            assert_eq!(good.parse::<PoolName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".hidden",
            "-opt",
            "a/b",
            "../x",
            "a b",
            "a\n",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(bad.parse::<PoolName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_full_entry() {
        let text = r#"[{"pool":"fast","name":"net1","ips":["10.0.0.5/24","fd00::5/64"],
            "gateway":"10.0.0.1","routes":[{"dst":"10.1.0.0/16","via":"10.0.0.1"},{"dst":"fd01::/64"}],
            "mtu":1500,"mac":"02:00:00:00:00:01"},{"pool":"slow"}]"#;
        let r = parse_request(text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].pool.as_str(), "fast");
        assert_eq!(r[0].mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!(r[0].l3.name.as_ref().unwrap().as_str(), "net1");
        assert_eq!(r[0].l3.ips.len(), 2);
        assert_eq!(r[0].l3.gateway.unwrap().to_string(), "10.0.0.1");
        assert_eq!(r[0].l3.routes[0].via.unwrap().to_string(), "10.0.0.1");
        assert_eq!(r[0].l3.routes[1].via, None);
        assert_eq!(r[0].l3.mtu, Some(1500));
        assert_eq!(r[1], NetworkRequest::plain("slow".parse().unwrap()));
        // The serialized form reads back to the same requests.
        let again = serde_json::to_string(&r).unwrap();
        assert_eq!(parse_request(&again).unwrap(), r);
    }

    #[test]
    fn refusals_name_the_entry_and_field() {
        let cases: &[(&str, &str)] = &[
            ("[", "malformed JSON"),
            (r#"[{"pool":"a"}] x"#, "malformed JSON"),
            (
                r#"{"pool":"a"}"#,
                "expected a JSON array of objects, found an object",
            ),
            (r#""fast""#, "found a string"),
            ("[]", "empty request"),
            ("", "empty request"),
            ("  ", "empty request"),
            ("fast,", "entry 1: pool: invalid pool name \"\""),
            ("fast,,slow", "entry 1: pool"),
            ("a/b", "entry 0: pool: invalid pool name \"a/b\""),
            (r#"[{"pool":"a","pool":"b"}]"#, "duplicate key \"pool\""),
            (
                r#"[{"pool":"a","routes":[{"dst":"10.0.0.0/8","dst":"10.0.0.0/8"}]}]"#,
                "duplicate key \"dst\"",
            ),
            (
                r#"[{"pool":"a","vlan":5}]"#,
                "entry 0: unknown key \"vlan\"",
            ),
            (
                r#"[{"pool":"a"},{"name":"x"}]"#,
                "entry 1: \"pool\" is missing",
            ),
            (
                r#"[{"pool":"a"},7]"#,
                "entry 1: expected a JSON object, found a number",
            ),
            (r#"[{"pool":5}]"#, "entry 0: pool: invalid type"),
            (r#"[{"pool":"-x"}]"#, "entry 0: pool: invalid pool name"),
            (
                r#"[{"pool":"a","ips":["10.0.0.5/33"]}]"#,
                "entry 0: ips: invalid CIDR",
            ),
            (
                r#"[{"pool":"a","ips":"10.0.0.5/24"}]"#,
                "entry 0: ips: invalid type",
            ),
            (
                r#"[{"pool":"a","ips":["10.0.0.0/24"]}]"#,
                "entry 0: ips: 10.0.0.0/24 is a network",
            ),
            (
                r#"[{"pool":"a","ips":["10.0.0.5/24","10.0.0.5/16"]}]"#,
                "is listed twice",
            ),
            (
                r#"[{"pool":"a","gateway":"10.0.0.300"}]"#,
                "entry 0: gateway: invalid IP",
            ),
            (
                r#"[{"pool":"a","ips":["10.0.0.5/24"],"gateway":"10.9.0.1"}]"#,
                "entry 0: gateway 10.9.0.1: no address",
            ),
            (
                r#"[{"pool":"a","gateway":"10.0.0.1"}]"#,
                "entry 0: gateway 10.0.0.1",
            ),
            (
                r#"[{"pool":"a","routes":[{"dst":"10.1.2.3/16"}]}]"#,
                "entry 0: routes: dst 10.1.2.3/16 has host bits",
            ),
            (
                r#"[{"pool":"a","routes":[{"dst":"10.1.0.0/16","via":"fd00::1"}]}]"#,
                "not the same address family",
            ),
            (
                r#"[{"pool":"a","routes":[{"dst":"10.1.0.0/16","dev":"x"}]}]"#,
                "entry 0: routes: unknown field `dev`",
            ),
            (r#"[{"pool":"a","mtu":40}]"#, "entry 0: mtu 40"),
            (r#"[{"pool":"a","mtu":-1}]"#, "entry 0: mtu: invalid value"),
            (r#"[{"pool":"a","mtu":1e3}]"#, "entry 0: mtu: invalid type"),
            (
                r#"[{"pool":"a","mac":"01:00:5e:00:00:01"}]"#,
                "entry 0: mac: invalid MAC address \"01:00:5e:00:00:01\": a multicast",
            ),
            (
                r#"[{"pool":"a","mac":"00:00:00:00:00:00"}]"#,
                "entry 0: mac: invalid MAC address \"00:00:00:00:00:00\": the zero address",
            ),
            (
                r#"[{"pool":"a","mac":"02:00:00:00:00"}]"#,
                "entry 0: mac: invalid MAC",
            ),
            (
                r#"[{"pool":"a","name":"../etc"}]"#,
                "entry 0: name: invalid interface name",
            ),
            (
                r#"[{"pool":"a","name":"waytoolonginterfacename"}]"#,
                "entry 0: name",
            ),
            (
                r#"[{"pool":"a","name":"n"},{"pool":"b"},{"pool":"a","name":"n"}]"#,
                "entries 0 and 2 both use interface name n",
            ),
            (
                r#"[{"pool":"a","mac":"02:00:00:00:00:01"},{"pool":"a","mac":"02:00:00:00:00:01"}]"#,
                "entries 0 and 1 both ask for mac 02:00:00:00:00:01",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with("io.kata-sriov.networks: "), "{got}");
            assert!(got.contains(want), "{text:?}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn limits() {
        let list = vec!["p"; MAX_REQUESTS].join(",");
        assert_eq!(parse_request(&list).unwrap().len(), MAX_REQUESTS);
        let over = format!("{list},p");
        assert!(err(&over).contains("33 networks requested, at most 32"));
        let json = format!("[{}]", vec![r#"{"pool":"p"}"#; MAX_REQUESTS + 1].join(","));
        assert!(matches!(
            parse_request(&json),
            Err(RequestError::TooMany(33))
        ));
        let big = format!("[{}{{\"pool\":\"p\"}}]", " ".repeat(MAX_REQUEST_BYTES));
        assert!(matches!(
            parse_request(&big),
            Err(RequestError::TooLarge(_))
        ));
        let fits = format!("[{}{{\"pool\":\"p\"}}]", " ".repeat(MAX_REQUEST_BYTES - 14));
        assert_eq!(fits.len(), MAX_REQUEST_BYTES);
        assert_eq!(parse_request(&fits).unwrap().len(), 1);
        // Deep nesting is refused by the JSON parser's depth limit, not a stack overflow.
        let deep = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse_request(&deep), Err(RequestError::Json(_))));
        // Hostile text quoted in a message is one short line.
        let nl = r#"[{"pool":"a","routes":[{"dst":"10.0.0.0/8","x\ny":1}]}]"#;
        let e = err(nl);
        assert!(e.contains(r"unknown field `x\ny`"), "{e}");
        let long_field = format!(
            r#"[{{"pool":"a","routes":[{{"dst":"10.0.0.0/8","{}":1}}]}}]"#,
            "k".repeat(5000)
        );
        assert!(err(&long_field).len() < 400);
        // A long unknown key is cut in the message.
        let long_key = format!(r#"[{{"pool":"a","{}":1}}]"#, "k".repeat(1000));
        assert!(err(&long_key).len() < 300);
    }

    #[test]
    fn from_annotations() {
        let mut a = Map::new();
        assert!(request_from_annotations(&a).unwrap().is_none());
        a.insert("other".into(), Value::from("x"));
        assert!(request_from_annotations(&a).unwrap().is_none());
        a.insert(REQUEST_ANNOTATION.into(), Value::from("fast,fast"));
        let r = request_from_annotations(&a).unwrap().unwrap();
        assert_eq!(r.len(), 2);
        a.insert(REQUEST_ANNOTATION.into(), Value::from(3));
        let e = request_from_annotations(&a).unwrap_err().to_string();
        assert_eq!(
            e,
            "io.kata-sriov.networks: value must be a string, found a number"
        );
        a.insert(REQUEST_ANNOTATION.into(), Value::from(""));
        assert!(matches!(
            request_from_annotations(&a),
            Err(RequestError::Empty)
        ));
    }
}
