//! The shipped Docker config (`configs/docker/`): the sample config parses,
//! the driver maps the how-to's `-o pf=... -o vlan=...` onto its pools (in
//! process, on a fake tree), and the systemd unit passes
//! `systemd-analyze verify` with no warning.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use serde_json::json;

use kata_sriov::engine::claim::Engine;
use kata_sriov::integrations::docker::Driver;
use kata_sriov::policy::config::{Config, Mode};
use kata_sriov::testing::{FakeBinder, FakeSysfs, FileNetlink};

fn configs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/docker")
}

#[test]
fn sample_config_parses_and_pf_vlan_map_to_its_pools() {
    let t = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(&t.path().join("sys"));
    fake.add_pf("0000:3b:00.0", "ens1f0", 2, 8);
    let sample = std::fs::read_to_string(configs().join("config.toml")).unwrap();
    let text = sample.replace(
        "state_dir = \"/run/kata-sriov\"",
        &format!(
            "state_dir = {:?}\nsysfs_root = {:?}",
            t.path().join("state"),
            t.path().join("sys")
        ),
    );
    assert_ne!(text, sample, "the sample sets state_dir");
    let cfg = Config::parse(&text, Path::new("config.toml")).unwrap();
    assert!(cfg.pools.iter().all(|p| p.mode == Mode::Netdev));
    let nl = FileNetlink::new(&t.path().join("nl"));
    let binder = FakeBinder::new(&fake);
    let engine = Engine::new(&cfg, &nl, &binder).unwrap();
    let d = Driver::new(&engine, kata_sriov::log::discard());
    let create = |id: &str, opts: serde_json::Value| {
        let body = json!({ "NetworkID": id, "Options": { "com.docker.network.generic": opts } });
        d.handle(
            "NetworkDriver.CreateNetwork",
            &serde_json::to_vec(&body).unwrap(),
        )
    };
    for (id, opts) in [
        ("n1", json!({ "pf": "ens1f0" })),
        ("n2", json!({ "pf_iface": "ens1f0", "vlanid": "100" })),
        ("n3", json!({ "pf": "0000:3b:00.0", "vlan": "100" })),
        ("n4", json!({ "pool": "fast" })),
    ] {
        let r = create(id, opts);
        assert_eq!((r.status, r.body.clone()), (200, json!({})), "{id}");
    }
    let r = create("n5", json!({ "pf": "ens1f0", "vlan": "200" }));
    assert!(
        r.body["Err"].as_str().unwrap().contains("vlan = 200"),
        "{r:?}"
    );
    let nets = d.networks().unwrap();
    let pools: Vec<(&str, &str)> = nets
        .iter()
        .map(|(k, v)| (k.as_str(), v.pool.as_str()))
        .collect();
    assert_eq!(
        pools,
        [
            ("n1", "fast"),
            ("n2", "vlan100"),
            ("n3", "vlan100"),
            ("n4", "fast")
        ]
    );
    // The map is private and replaced atomically (no temp file left).
    let ls = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("docker") || n.starts_with('n'))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        ls(&t.path().join("state")),
        ["docker-networks.d", "docker-networks.json"]
    );
    // One private liveness mark per network (endpoint leases hang on it).
    let marks = t.path().join("state/docker-networks.d");
    assert_eq!(ls(&marks), ["n1", "n2", "n3", "n4"]);
    use std::os::unix::fs::PermissionsExt;
    for m in [marks.clone(), marks.join("n1")] {
        let mode = std::fs::metadata(&m).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", m.display());
    }
    let r = d.handle(
        "NetworkDriver.DeleteNetwork",
        &serde_json::to_vec(&json!({ "NetworkID": "n1" })).unwrap(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(ls(&marks), ["n2", "n3", "n4"]);
    // An id naming anything but a mark of its own is refused.
    for bad in ["..", ".", ".x"] {
        let r = create(bad, json!({ "pool": "fast" }));
        assert!(
            r.body["Err"]
                .as_str()
                .unwrap()
                .contains("not starting with '.'"),
            "{r:?}"
        );
    }
    assert!(t.path().join("state").is_dir());
    let mode = std::fs::metadata(t.path().join("state/docker-networks.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(configs().join("kata-sriov-docker-plugin.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/kata-sriov docker-plugin"));
    // verify checks that ExecStart is executable: point it at a real file.
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("kata-sriov-docker-plugin.service");
    std::fs::write(&p, unit.replace("/usr/local/bin/kata-sriov", "/bin/true")).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&p)
        .output()
        .expect("systemd-analyze");
    assert!(o.status.success(), "{o:?}");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
