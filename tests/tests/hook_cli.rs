//! The `kata-sriov` binary end to end on a fake host: hook precreate with a
//! real `runc spec` config, status, poststop, gc, and hostile input (each
//! rejection: non-zero exit, one line on stderr, nothing on stdout, nothing
//! changed). The pool's VFs are already on vfio-pci and it sets nothing on
//! the PF, so no kernel interface is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use kata_sriov::testing::json_strs;
use kata_sriov_tests::{output_with_stdin, workspace_bin, FakeHost};

fn host(vfs: u32) -> FakeHost {
    let bin = workspace_bin("kata-sriov");
    FakeHost::new(
        vfs,
        "vfio-pci",
        &format!(
            "[hook]\nbinary = {:?}\n[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nmac = \"keep\"\n\
             [[pools]]\nname = \"own\"\npfs = [\"0000:3b:00.0\"]\nmac = \"request\"\n",
            bin
        ),
    )
}

fn ks(host: &FakeHost, args: &[&str], stdin: &[u8]) -> Output {
    output_with_stdin(
        Command::new(workspace_bin("kata-sriov"))
            .arg("--config")
            .arg(&host.config)
            .args(args)
            .env("KATA_SRIOV_LOG", host.path().join("log")),
        stdin,
    )
}

fn base_spec() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn with_request(req: &str) -> Value {
    let mut s = base_spec();
    s["annotations"]["io.kata-sriov.networks"] = Value::from(req);
    s
}

/// `hook precreate` of the runc spec asking for `req`.
fn precreate(host: &FakeHost, req: &str) -> Output {
    ks(
        host,
        &["hook", "precreate"],
        &serde_json::to_vec(&with_request(req)).unwrap(),
    )
}

fn status(host: &FakeHost) -> Value {
    let o = ks(host, &["status", "--json"], b"");
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn precreate_status_poststop() {
    let host = host(2);
    let input = serde_json::to_vec(&with_request("fast")).unwrap();
    let o = ks(&host, &["hook", "precreate"], &input);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let group = host.fake.root().iommu_group(host.vf(0)).unwrap().unwrap();
    let devices = out["linux"]["devices"].as_array().unwrap();
    // The existing device stays first; ours follow with the real numbers
    // of the nodes under dev_root.
    assert_eq!(devices[0]["path"], "/dev/fuse");
    let node = devices
        .iter()
        .find(|d| d["path"] == format!("/dev/vfio/{group}"))
        .unwrap();
    assert_eq!(
        (node["major"].as_u64(), node["minor"].as_u64()),
        (Some(240), Some(u64::from(group)))
    );
    assert_eq!(node["type"], "c");
    assert!(devices
        .iter()
        .any(|d| d["path"] == "/dev/vfio/vfio" && d["major"] == 10 && d["minor"] == 196));
    let rules = out["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|r| r["allow"] == true && r["major"] == 240 && r["minor"] == group));
    let ann = &out["annotations"];
    assert_eq!(ann["org.example.keep"], "yes");
    let owner = ann["io.kata-sriov.owner"].as_str().unwrap().to_owned();
    let guest: Value =
        serde_json::from_str(ann["io.kata-sriov.guest-networks"].as_str().unwrap()).unwrap();
    assert_eq!(guest, json!([{"pci_id": "8086:154c"}]));
    let hook = &out["hooks"]["poststop"][0];
    assert_eq!(hook["path"], workspace_bin("kata-sriov").to_str().unwrap());
    assert_eq!(
        hook["env"],
        json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
    let args = json_strs(&hook["args"]);
    assert!(args.ends_with(&["hook", "poststop"]), "{args:?}");
    // Fields the rewrite does not own are untouched.
    let base = base_spec();
    for k in [
        "process",
        "root",
        "mounts",
        "x-unknown-extension",
        "ociVersion",
    ] {
        assert_eq!(out[k], base[k], "{k}");
    }
    assert_eq!(out["linux"]["namespaces"], base["linux"]["namespaces"]);

    // The lease is visible, with its owner.
    let st = status(&host);
    assert_eq!(st["leases"].as_array().unwrap().len(), 1);
    assert_eq!(st["leases"][0]["owner"], owner.as_str());
    assert_eq!(st["leases"][0]["state"], "claimed");
    let vf0 = &st["pfs"][0]["vfs"][0];
    assert_eq!(vf0["driver"], "vfio-pci");
    assert_eq!(vf0["lease"]["owner"], owner.as_str());

    // Poststop with Kata's lenient state: no ociVersion, no status.
    let state = json!({"id": "sandbox-1", "pid": 4242, "bundle": "/nonexistent",
                       "annotations": {"io.kata-sriov.owner": owner}});
    let o = ks(
        &host,
        &["hook", "poststop"],
        &serde_json::to_vec(&state).unwrap(),
    );
    assert!(o.status.success(), "{o:?}");
    assert!(o.stdout.is_empty());
    assert!(host.leased().is_empty());
    assert_eq!(status(&host)["leases"], json!([]));
    // A second poststop (delete, gc racing) finds nothing and succeeds.
    let o = ks(
        &host,
        &["hook", "poststop"],
        &serde_json::to_vec(&state).unwrap(),
    );
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn no_request_passes_the_config_through_byte_for_byte() {
    let host = host(1);
    let input =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json")).unwrap();
    let o = ks(&host, &["hook", "precreate"], &input);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, input);
    assert!(host.leased().is_empty());
}

#[test]
fn poststop_falls_back_to_the_state_id_and_release_by_hand() {
    let host = host(2);
    let o = precreate(&host, "fast");
    assert!(o.status.success());
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let owner = out["annotations"]["io.kata-sriov.owner"].as_str().unwrap();
    // A state without the owner annotation releases by id: not ours.
    let o = ks(&host, &["hook", "poststop"], br#"{"id":"other"}"#);
    assert!(o.status.success());
    assert_eq!(host.leased().len(), 1);
    let o = ks(&host, &["release", owner], b"");
    assert!(o.status.success(), "{o:?}");
    assert!(host.leased().is_empty());
}

/// A rejection: exit 1, one line on stderr naming `needle`, no stdout,
/// nothing leased, the fake tree untouched.
fn assert_rejected(host: &FakeHost, o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{needle}: {err}");
    assert!(o.stdout.is_empty(), "{needle}: stdout not empty");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{needle}: not one line: {err}"
    );
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert!(host.leased().is_empty(), "{needle}: something was leased");
    for i in 0..host.vfs {
        assert_eq!(host.driver(i).as_deref(), Some("vfio-pci"));
    }
}

#[test]
fn hostile_requests_are_refused_and_change_nothing() {
    let host = host(2);
    let long_pool = "a,".repeat(40_000);
    let cases: Vec<(String, &str)> = vec![
        ("slow".into(), "slow"),
        ("[{\"pool\":\"fast\"".into(), "io.kata-sriov.networks"),
        ("{\"pool\":\"fast\"}".into(), "io.kata-sriov.networks"),
        (r#"[{"pool":"fast","pool":"own"}]"#.into(), "duplicate"),
        (
            r#"[{"pool":"fast","ips":["10.0.0.300/24"]}]"#.into(),
            "10.0.0.300",
        ),
        (
            r#"[{"pool":"fast","ips":["10.0.0.5/33"]}]"#.into(),
            "10.0.0.5/33",
        ),
        (
            r#"[{"pool":"fast","ips":["10.0.0.5/24"],"gateway":"10.9.9.1"}]"#.into(),
            "10.9.9.1",
        ),
        (
            r#"[{"pool":"fast","routes":[{"dst":"10.1.0.0/16","via":"fd00::1"}]}]"#.into(),
            "fd00::1",
        ),
        (
            r#"[{"pool":"own","mac":"01:00:5e:00:00:01"}]"#.into(),
            "01:00:5e:00:00:01",
        ),
        (
            r#"[{"pool":"own","mac":"00:00:00:00:00:00"}]"#.into(),
            "00:00:00:00:00:00",
        ),
        (
            r#"[{"pool":"fast","mac":"02:00:00:00:00:01"}]"#.into(),
            "mac policy",
        ),
        (r#"[{"pool":"fast","bogus":1}]"#.into(), "bogus"),
        ("fast,fast,fast".into(), "exhausted"),
        ("../../etc".into(), "pool"),
        (long_pool, "bytes"),
    ];
    for (req, needle) in cases {
        let o = precreate(&host, &req);
        assert_rejected(&host, &o, needle);
    }
}

#[test]
fn hostile_stdin_is_refused() {
    let host = host(1);
    let big = vec![b' '; 4 * 1024 * 1024 + 10];
    let mut wrong_type = with_request("fast");
    wrong_type["linux"]["devices"] = Value::from("oops");
    let cases: Vec<(&[&str], Vec<u8>, &str)> = vec![
        (&["hook", "precreate"], b"not json".to_vec(), "JSON"),
        (&["hook", "precreate"], big.clone(), "limit"),
        (&["hook", "precreate"], b"[1,2]".to_vec(), "object"),
        (
            &["hook", "precreate"],
            serde_json::to_vec(&wrong_type).unwrap(),
            "linux.devices",
        ),
        (&["hook", "poststop"], b"{\"pid\":1}".to_vec(), "\"id\""),
        (&["hook", "poststop"], big, "limit"),
        (
            &["hook", "poststop"],
            br#"{"id":"x","annotations":{"io.kata-sriov.owner":7}}"#.to_vec(),
            "io.kata-sriov.owner",
        ),
        (
            &["hook", "create-runtime"],
            br#"{"id":"x","bundle":"/nonexistent/bundle"}"#.to_vec(),
            "does not exist",
        ),
    ];
    for (args, input, needle) in cases {
        let o = ks(&host, args, &input);
        assert_rejected(&host, &o, needle);
    }
    // config.json that is a symlink.
    let bundle = host.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", bundle.join("config.json")).unwrap();
    let state = json!({"id": "x", "bundle": bundle});
    let o = ks(
        &host,
        &["hook", "create-runtime"],
        &serde_json::to_vec(&state).unwrap(),
    );
    assert_rejected(&host, &o, "symlink");
}

#[test]
fn gc_from_the_cli() {
    let host = host(2);
    let o = precreate(&host, "fast");
    assert!(o.status.success());
    // Corrupt lease for VF 1: quarantined, reported, kept.
    std::fs::write(
        host.path()
            .join(format!("state/leases/{}.json", host.vf(1))),
        "{",
    )
    .unwrap();
    let o = ks(&host, &["gc", "--json"], b"");
    assert!(o.status.success(), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["quarantined"].as_array().unwrap().len(), 1);
    // The precreate lease has no owner check: kept.
    assert_eq!(r["kept"], 1);
    assert_eq!(host.leased().len(), 2);
    let st = status(&host);
    assert_eq!(st["quarantined"][0]["vf"], host.vf(1).to_string());
}

#[test]
fn precreate_refuses_dan_pools() {
    let host = FakeHost::new(
        1,
        "vfio-pci",
        "[[pools]]\nname = \"d\"\npfs = [\"ens1f0\"]\nguest = \"dan\"\n",
    );
    let o = precreate(&host, "d");
    assert_rejected(&host, &o, "containerd-shim-kata-sriov-v2");
}

/// A poststop whose state names another container's owner (issue 19,
/// attack 1) releases nothing; the victim's own poststop does.
#[test]
fn poststop_with_a_forged_owner_releases_nothing() {
    use kata_sriov::kernel::sysfs::SysfsRoot;
    use kata_sriov::kernel::vfio::SysfsBinder;
    use kata_sriov::policy::config::Config;
    use kata_sriov::policy::request::parse_request;
    use kata_sriov::state::ledger::OwnerCheck;
    use kata_sriov::Engine;

    let host = host(2);
    let cfg = Config::load(Some(&host.config)).unwrap();
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let engine = Engine::new(&cfg, &host.nl, &binder).unwrap();
    let victim = host.path().join("victim");
    let attacker = host.path().join("attacker");
    std::fs::create_dir(&victim).unwrap();
    std::fs::create_dir(&attacker).unwrap();
    engine
        .claim(
            "k8s.io/victim",
            &parse_request("fast").unwrap(),
            OwnerCheck::Bundle(victim.clone()),
        )
        .unwrap();
    let before = host.leases();
    let forged = serde_json::json!({"id": "attacker", "bundle": attacker,
        "annotations": {"io.kata-sriov.owner": "k8s.io/victim"}});
    let o = ks(
        &host,
        &["hook", "poststop"],
        &serde_json::to_vec(&forged).unwrap(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another container"), "{err}");
    assert_eq!(host.leases(), before);
    let own = serde_json::json!({"id": "victim", "bundle": victim,
        "annotations": {"io.kata-sriov.owner": "k8s.io/victim"}});
    let o = ks(
        &host,
        &["hook", "poststop"],
        &serde_json::to_vec(&own).unwrap(),
    );
    assert!(o.status.success(), "{o:?}");
    assert!(host.leased().is_empty());
}

/// Owners with terminal escapes and newlines are refused at the claim, and
/// one already on disk (an older version, a hand edit) is printed escaped
/// by `status` and `gc`: no byte reaches the terminal raw and no line is
/// forged (issue 19, attack 5).
#[test]
fn owners_with_control_characters_never_reach_the_terminal() {
    use kata_sriov::kernel::sysfs::SysfsRoot;
    use kata_sriov::kernel::vfio::SysfsBinder;
    use kata_sriov::policy::config::Config;
    use kata_sriov::policy::request::parse_request;
    use kata_sriov::state::ledger::OwnerCheck;
    use kata_sriov::{ClaimError, Engine};

    let evil = "\u{1b}[2J\u{1b}]0;PWNED\u{7}x\nline2";
    let host = host(2);
    let cfg = Config::load(Some(&host.config)).unwrap();
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let engine = Engine::new(&cfg, &host.nl, &binder).unwrap();
    let reqs = parse_request("fast").unwrap();
    let e = engine.claim(evil, &reqs, OwnerCheck::None).unwrap_err();
    assert!(matches!(e, ClaimError::BadOwner(_)), "{e}");
    assert!(host.leased().is_empty());
    // A lease written with such an owner anyway.
    let c = engine.claim("plain", &reqs, OwnerCheck::None).unwrap();
    let p = host.path().join(format!("state/leases/{}.json", c[0].vf));
    let mut lease: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    lease["owner"] = Value::from(evil);
    std::fs::write(&p, serde_json::to_vec(&lease).unwrap()).unwrap();
    for args in [&["status"][..], &["gc"][..]] {
        let o = ks(&host, args, b"");
        assert!(o.status.success(), "{args:?}: {o:?}");
        assert!(
            !o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07),
            "{args:?}"
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(!text.lines().any(|l| l.starts_with("line2")), "{text}");
    }
    let text = String::from_utf8_lossy(&ks(&host, &["status"], b"").stdout).into_owned();
    assert!(text.contains("\\u{1b}[2J"), "{text}");
}

/// The spec files in the fake host's CDI directory.
fn cdi_specs(host: &FakeHost) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(host.path().join("cdi"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn cdi_claim_release_gc_and_bad_requests() {
    let host = host(2);
    let long = "a".repeat(300);
    for (args, needle) in [
        (
            vec!["--pool", "fast", "--name", "../x"],
            "invalid CDI device name",
        ),
        (
            vec!["--pool", "fast", "--name=-a"],
            "invalid CDI device name",
        ),
        (
            vec!["--pool", "fast", "--name", "a b"],
            "invalid CDI device name",
        ),
        (
            vec!["--pool", "fast", "--name", ""],
            "invalid CDI device name",
        ),
        (
            vec!["--pool", "fast", "--name", &long],
            "invalid CDI device name",
        ),
        (
            vec!["--pool", "nope", "--name", "a1"],
            "no pool named \"nope\"",
        ),
        (vec!["--pool", "../p", "--name", "a1"], "pool name \"../p\""),
    ] {
        let o = ks(&host, &[&["cdi", "claim"][..], &args].concat(), b"");
        assert_rejected(&host, &o, needle);
        assert!(cdi_specs(&host).is_empty(), "{args:?} wrote a spec");
    }

    let o = ks(
        &host,
        &["cdi", "claim", "--pool", "fast", "--name", "a1"],
        b"",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "kata-sriov.io/vf=a1\n");
    assert_eq!(cdi_specs(&host), ["kata-sriov-cdi-a1.json"]);
    let spec: Value = serde_json::from_slice(
        &std::fs::read(host.path().join("cdi/kata-sriov-cdi-a1.json")).unwrap(),
    )
    .unwrap();
    let group = host.fake.root().iommu_group(host.vf(0)).unwrap().unwrap();
    let nodes = &spec["devices"][0]["containerEdits"]["deviceNodes"];
    assert_eq!(nodes[1]["path"], format!("/dev/vfio/{group}"), "{spec}");
    assert_eq!(nodes[1]["minor"], group, "{spec}");
    assert_eq!(host.leased(), [host.vf(0)]);

    // The same name twice: refused, the first claim untouched.
    let o = ks(
        &host,
        &["cdi", "claim", "--pool", "fast", "--name", "a1"],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already claimed"),
        "{o:?}"
    );
    assert_eq!(host.leased(), [host.vf(0)]);

    // A generated name; `release cdi/NAME` deletes its spec as well.
    let o = ks(&host, &["cdi", "claim", "--pool", "fast"], b"");
    assert!(o.status.success(), "{o:?}");
    let q = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let name = q.strip_prefix("kata-sriov.io/vf=vf-").unwrap();
    assert_eq!(name.len(), 12, "{q}");
    assert_eq!(cdi_specs(&host).len(), 2);
    let o = ks(&host, &["release", &format!("cdi/vf-{name}")], b"");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(cdi_specs(&host), ["kata-sriov-cdi-a1.json"]);
    assert_eq!(host.leased(), [host.vf(0)]);

    // gc deletes a spec of ours whose claim is gone, keeps a1's.
    std::fs::copy(
        host.path().join("cdi/kata-sriov-cdi-a1.json"),
        host.path().join("cdi/kata-sriov-cdi-gone.json"),
    )
    .unwrap();
    let o = ks(&host, &["gc"], b"");
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("kata-sriov-cdi-gone.json"),
        "{o:?}"
    );
    assert_eq!(cdi_specs(&host), ["kata-sriov-cdi-a1.json"]);
    std::fs::copy(
        host.path().join("cdi/kata-sriov-cdi-a1.json"),
        host.path().join("cdi/kata-sriov-cdi-gone2.json"),
    )
    .unwrap();
    let o = ks(&host, &["gc", "--json"], b"");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let removed = r["cdi_specs_removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r}");
    assert!(removed[0]
        .as_str()
        .unwrap()
        .ends_with("kata-sriov-cdi-gone2.json"));
    assert_eq!(cdi_specs(&host), ["kata-sriov-cdi-a1.json"]);
    assert_eq!(host.leased(), [host.vf(0)]);

    let o = ks(&host, &["cdi", "release", "a1"], b"");
    assert!(o.status.success(), "{o:?}");
    assert!(cdi_specs(&host).is_empty());
    assert!(host.leased().is_empty());
    let o = ks(&host, &["cdi", "release", "a1"], b"");
    assert_rejected(&host, &o, "no CDI claim named \"a1\"");
}

#[test]
fn cdi_claim_refuses_pools_it_cannot_describe() {
    let host = FakeHost::new(
        1,
        "vfio-pci",
        "[[pools]]\nname = \"d\"\npfs = [\"ens1f0\"]\nguest = \"dan\"\n",
    );
    let o = ks(&host, &["cdi", "claim", "--pool", "d", "--name", "x"], b"");
    assert_rejected(
        &host,
        &o,
        "only mode = \"vfio\" pools with the guest helper",
    );
    assert!(cdi_specs(&host).is_empty());
}

/// Issue 19, attack 4: precreate keeps every byte it does not own (numbers
/// serde would rewrite, whitespace, a deep subtree, megabytes of it), and
/// what it writes is read back by the binary's own create-runtime; an edit
/// that would take the spec over the readers' limit is refused and changes
/// nothing.
#[test]
fn precreate_keeps_unowned_bytes_and_its_output_reads_back() {
    let host = host(1);
    let deep = format!("{}{}", "[".repeat(60), "]".repeat(60));
    let pad = "[],".repeat(1_300_000);
    let head = format!(
        "{{\n  \"ociVersion\" : \"1.2.0\",\n  \"x\": [-0, 1e2, 0.10, 123456789012345678901234567890, {deep}],\n  \"y\": [{pad}0],\n"
    );
    let input = format!("{head}  \"annotations\": {{\"io.kata-sriov.networks\": \"fast\"}}\n}}\n");
    let o = ks(&host, &["hook", "precreate"], input.as_bytes());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with(&head), "the unowned members changed");
    assert!(out.ends_with("}\n"));
    let v: Value = serde_json::from_str(&out).unwrap();
    let owner = v["annotations"]["io.kata-sriov.owner"].as_str().unwrap();
    // The runtime gets the file; the injected createRuntime hook reads it.
    let bundle = host.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), &out).unwrap();
    let state = json!({"id": "c1", "pid": 1, "bundle": bundle,
                       "annotations": {"io.kata-sriov.owner": owner}});
    let o = ks(
        &host,
        &["hook", "create-runtime"],
        &serde_json::to_vec(&state).unwrap(),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        host.leases()[0]["owner_check"]["bundle"],
        bundle.to_str().unwrap()
    );
    let o = ks(&host, &["release", owner], b"");
    assert!(o.status.success(), "{o:?}");

    // Near the limit, the edit would not fit: refused, nothing claimed.
    let room = kata_sriov::json::MAX_INPUT_BYTES - input.len() - 16;
    let full = input.replacen("\"y\": [", &format!("\"y\": [{}", "0,".repeat(room / 2)), 1);
    let o = ks(&host, &["hook", "precreate"], full.as_bytes());
    assert_rejected(&host, &o, "over the 4194304-byte limit");
    // Too deep, a non-string annotation, annotations not an object.
    let too_deep = format!("{{\"x\":{}{}}}", "[".repeat(65), "]".repeat(65));
    let o = ks(&host, &["hook", "precreate"], too_deep.as_bytes());
    assert_rejected(&host, &o, "nested deeper than 64");
    let o = ks(
        &host,
        &["hook", "precreate"],
        br#"{"annotations":{"io.kata-sriov.networks":"fast","x":{}}}"#,
    );
    assert_rejected(
        &host,
        &o,
        r#"annotation "x" is an object, expected a string"#,
    );
    let o = ks(
        &host,
        &["hook", "precreate"],
        br#"{"annotations":[["io.kata-sriov.networks","fast"]]}"#,
    );
    assert_rejected(&host, &o, "annotations is an array, expected an object");
}
