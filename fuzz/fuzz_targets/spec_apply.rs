//! The OCI spec rewrite and the hook state parser on arbitrary input:
//! never panic; a refused spec is left unchanged; an accepted one gives
//! the same result when the edit is applied a second time, keeps every
//! top-level field it does not own, and holds each device exactly once.
//! Inputs are also planted (first byte picks where) into the fields the
//! edit owns.
#![no_main]

use std::path::Path;

use kata_sriov::guestnet::{GuestNetwork, L3Config};
use kata_sriov::integrations::hooks::default_poststop;
use kata_sriov::oci::spec::{apply, check_spec, parse_spec, DeviceNode, SpecEdit, VFIO_CONTAINER};
use kata_sriov::oci::state::parse_state;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn edits() -> Vec<SpecEdit> {
    let guest = GuestNetwork {
        mac: Some("02:00:00:00:00:01".parse().expect("mac")),
        pci_id: "8086:10ca".parse().expect("pci id"),
        l3: L3Config {
            name: Some("net1".parse().expect("ifname")),
            ips: vec!["10.0.0.5/24".parse().expect("cidr")],
            ..L3Config::default()
        },
    };
    let dev = |path: &str, major, minor| DeviceNode {
        path: path.to_owned(),
        major,
        minor,
    };
    vec![
        SpecEdit {
            owner: "k8s.io/fuzz".to_owned(),
            devices: vec![dev("/dev/vfio/42", 243, 0), dev(VFIO_CONTAINER, 10, 196)],
            guest: vec![guest],
            poststop: Some(default_poststop(
                Path::new("/usr/local/bin/kata-sriov"),
                None,
            )),
            create_runtime: None,
        },
        SpecEdit {
            owner: "precreate-fuzz".to_owned(),
            ..SpecEdit::default()
        },
        SpecEdit {
            owner: "x".to_owned(),
            devices: vec![
                dev("/dev/vfio/7", 243, 1),
                dev("/dev/vfio/8", 243, 2),
                dev(VFIO_CONTAINER, 10, 196),
            ],
            guest: vec![],
            poststop: Some(default_poststop(
                Path::new("/opt/kata-sriov"),
                Some(Path::new("/etc/kata-sriov/config.toml")),
            )),
            create_runtime: None,
        },
    ]
}

fn text(v: &Value) -> String {
    serde_json::to_string(v).expect("values serialize")
}

/// Runs every edit on `spec` and checks the properties above.
fn check(spec: &Value) {
    let original = text(spec);
    for edit in edits() {
        let mut s = spec.clone();
        match apply(&mut s, &edit) {
            Err(_) => {
                assert_eq!(text(&s), original, "spec changed on error");
                assert!(
                    check_spec(spec).is_err(),
                    "valid edits fail only on the spec"
                );
            }
            Ok(()) => {
                assert!(check_spec(spec).is_ok());
                let once = text(&s);
                apply(&mut s, &edit).expect("second application");
                assert_eq!(text(&s), once, "not idempotent");
                let (Value::Object(before), Value::Object(after)) = (spec, &s) else {
                    panic!("root is not an object");
                };
                // Existing top-level keys keep their order; new ones come after.
                let old: Vec<&String> = before.keys().collect();
                let new: Vec<&String> = after.keys().take(old.len()).collect();
                assert_eq!(old, new);
                for (k, v) in before {
                    if !["linux", "hooks", "annotations"].contains(&k.as_str()) {
                        assert_eq!(text(v), text(&after[k]), "{k} changed");
                    }
                }
                for d in &edit.devices {
                    let n = after["linux"]["devices"]
                        .as_array()
                        .expect("devices array")
                        .iter()
                        .filter(|e| e.get("path").and_then(Value::as_str) == Some(&d.path))
                        .count();
                    assert_eq!(n, 1, "{} present {n} times", d.path);
                }
                assert_eq!(
                    after["annotations"]["io.kata-sriov.owner"].as_str(),
                    Some(edit.owner.as_str())
                );
            }
        }
    }
}

/// Puts `v` at one of the places the edit owns, chosen by `pick`, so the
/// fuzzer spends its time there rather than on JSON syntax.
fn planted(pick: u8, v: Value) -> Value {
    use serde_json::json;
    match pick % 6 {
        0 => json!({"ociVersion": "1.0.2", "linux": v}),
        1 => json!({"linux": {"devices": v, "resources": {"devices": []}}}),
        2 => json!({"linux": {"devices": [], "resources": {"devices": v}}}),
        3 => json!({"hooks": {"poststop": v}, "process": {}}),
        4 => json!({"annotations": v}),
        _ => json!({"hooks": v, "annotations": {}}),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_state(data);
    if let Ok(spec) = parse_spec(data) {
        check(&spec);
    }
    if let Some((&pick, rest)) = data.split_first() {
        if let Ok(v) = serde_json::from_slice::<Value>(rest) {
            check(&planted(pick, v));
        }
    }
});
