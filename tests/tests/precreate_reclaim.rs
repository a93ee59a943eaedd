//! `hook precreate` claims are reclaimable (issue 19, attack 3), on the
//! real binary and a fake host: a claim lives while the runtime that ran
//! the hook lives, until its container's createRuntime hook ties it to the
//! bundle, and never past `[hook] confirm_within`; a claim whose result
//! cannot be delivered (stdout closed, or a pipe nobody reads) is rolled
//! back with a non-zero exit; and random SIGKILLs of precreate over many
//! runs leave gc able to free every VF not held by a live owner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use kata_sriov::testing::json_strs;
use kata_sriov_tests::{output_with_stdin, output_within, vfio_host, workspace_bin, FakeHost};

fn host(vfs: u32, hook: &str) -> FakeHost {
    vfio_host(vfs, hook)
}

fn ks_cmd(host: &FakeHost, args: &[&str]) -> Command {
    let mut c = Command::new(workspace_bin("kata-sriov"));
    c.arg("--config")
        .arg(&host.config)
        .args(args)
        .env("KATA_SRIOV_LOG", host.path().join("log"));
    c
}

fn ks(host: &FakeHost, args: &[&str], stdin: &[u8]) -> Output {
    output_with_stdin(&mut ks_cmd(host, args), stdin)
}

fn spec_file(host: &FakeHost) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    s["annotations"]["io.kata-sriov.networks"] = Value::from("fast");
    let f = host.path().join("spec.json");
    std::fs::write(&f, serde_json::to_vec(&s).unwrap()).unwrap();
    f
}

/// `hook precreate` run by `sh -c SCRIPT` (`$0` the binary, `$1` the
/// config, `$2` the spec file).
fn precreate_in_sh(host: &FakeHost, script: &str) -> Output {
    let spec = spec_file(host);
    output_within(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(workspace_bin("kata-sriov"))
            .arg(&host.config)
            .arg(&spec)
            .env("KATA_SRIOV_LOG", host.path().join("log")),
        Duration::from_secs(30),
    )
}

/// `hook precreate` run by a shell that exits right after it (as a
/// runtime that ran the hook and went away): its stdout.
fn precreate_by_passing_caller(host: &FakeHost) -> Output {
    precreate_in_sh(
        host,
        r#""$0" --config "$1" hook precreate <"$2"; e=$?; exit $e"#,
    )
}

fn gc(host: &FakeHost) -> Value {
    let o = ks(host, &["gc", "--json"], b"");
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

fn owner_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["annotations"]["io.kata-sriov.owner"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn create_runtime(host: &FakeHost, owner: &str, bundle: &Path) -> Output {
    let state = json!({"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 1,
                       "bundle": bundle, "annotations": {"io.kata-sriov.owner": owner}});
    std::fs::create_dir_all(bundle).unwrap();
    std::fs::copy(spec_file(host), bundle.join("config.json")).unwrap();
    ks(
        host,
        &["hook", "create-runtime"],
        &serde_json::to_vec(&state).unwrap(),
    )
}

fn assert_all_free(host: &FakeHost) {
    assert!(host.leased().is_empty(), "{:?}", host.leases());
    for i in 0..host.vfs {
        assert_eq!(host.driver(i).as_deref(), Some("vfio-pci"));
    }
}

#[test]
fn the_edited_spec_carries_the_confirming_hook() {
    let host = host(1, "");
    let o = precreate_by_passing_caller(&host);
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let hook = &out["hooks"]["createRuntime"][0];
    assert_eq!(hook["path"], workspace_bin("kata-sriov").to_str().unwrap());
    assert!(json_strs(&hook["args"]).ends_with(&["hook", "create-runtime"]));
    let lease = &host.leases()[0];
    assert!(
        lease["owner_check"]["precreate"]["confirm_by"]
            .as_u64()
            .is_some(),
        "{lease}"
    );
}

#[test]
fn an_unconfirmed_claim_goes_with_its_caller_a_confirmed_one_with_its_bundle() {
    let host = host(2, "");
    // Caller gone, container never created: gc reclaims.
    let lost = owner_of(&precreate_by_passing_caller(&host));
    // Caller gone after the container's createRuntime hook confirmed it.
    let kept = owner_of(&precreate_by_passing_caller(&host));
    let bundle = host.path().join("bundle-c1");
    let o = create_runtime(&host, &kept, &bundle);
    assert!(o.status.success(), "{o:?}");
    let lease = host
        .leases()
        .into_iter()
        .find(|l| l["owner"] == kept.as_str())
        .unwrap();
    assert_eq!(lease["owner_check"]["bundle"], bundle.to_str().unwrap());

    let r = gc(&host);
    assert_eq!(r["released"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["released"][0][1], lost.as_str());
    assert_eq!(host.leased().len(), 1);
    // Confirming the reclaimed claim fails: the container must not start
    // without its VF; nothing else changes.
    let o = create_runtime(&host, &lost, &host.path().join("bundle-c2"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds no VF any more"), "{err}");
    assert_eq!(host.leased().len(), 1);
    // A second createRuntime for the kept claim from another bundle is refused.
    let o = create_runtime(&host, &kept, &host.path().join("bundle-c3"));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another container"));

    assert_eq!(gc(&host)["kept"], 1);
    std::fs::remove_dir_all(&bundle).unwrap();
    let r = gc(&host);
    assert_eq!(r["released"][0][1], kept.as_str(), "{r}");
    assert_all_free(&host);
}

#[test]
fn a_live_caller_keeps_its_claim_until_the_deadline() {
    let host = host(1, "confirm_within = 1");
    // This test process runs the hook: the caller stays alive.
    let spec = std::fs::read(spec_file(&host)).unwrap();
    let owner = owner_of(&ks(&host, &["hook", "precreate"], &spec));
    assert_eq!(gc(&host)["kept"], 1);
    std::thread::sleep(Duration::from_millis(2100));
    let r = gc(&host);
    assert_eq!(r["released"][0][1], owner.as_str(), "{r}");
    assert_all_free(&host);
}

#[test]
fn without_injected_hooks_precreate_claims_stay_until_released() {
    // `[hook] poststop = false`: nothing would confirm the claim, so it
    // is recorded without a liveness check (as before) and no hook added.
    let host = host(1, "poststop = false");
    let o = precreate_by_passing_caller(&host);
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(out["hooks"].get("createRuntime").is_none());
    assert_eq!(gc(&host)["kept"], 1);
}

fn undeliverable(host: &FakeHost, stdout: Stdio) -> Output {
    let spec = std::fs::File::open(spec_file(host)).unwrap();
    ks_cmd(host, &["hook", "precreate"])
        .stdin(spec)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap()
}

#[test]
fn a_claim_that_cannot_be_delivered_is_rolled_back() {
    let host = host(1, "");
    // A pipe whose reader is gone: the write fails (EPIPE).
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let o = undeliverable(&host, Stdio::from(w));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rolled back"), "{err}");
    assert_all_free(&host);

    // stdout closed: refused before anything is claimed.
    let o = precreate_in_sh(&host, r#"exec "$0" --config "$1" hook precreate <"$2" >&-"#);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stdout"), "{err}");
    assert_all_free(&host);
}

/// A small deterministic generator (seeded from the clock, printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn random_kills_of_precreate_leave_nothing_gc_cannot_free() {
    const VFS: u32 = 3;
    const ROUNDS: usize = 12;
    let host = host(VFS, "");
    let spec = spec_file(&host);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let mut live: Vec<(String, PathBuf)> = Vec::new();
    let mut confirmed = 0;
    let (mut killed, mut delivered) = (0, 0);
    for round in 0..ROUNDS {
        // Three precreates at once, each killed (SIGKILL) after a random
        // delay by the shell that ran it, which then exits.
        let kids: Vec<_> = (0..VFS)
            .map(|_| {
                let delay = format!("0.{:03}", rng.below(40));
                Command::new("sh")
                    .arg("-c")
                    .arg(
                        r#""$0" --config "$1" hook precreate <"$2" >"$4" & p=$!
                           sleep "$3"; kill -9 $p 2>/dev/null; wait $p; true"#,
                    )
                    .arg(workspace_bin("kata-sriov"))
                    .arg(&host.config)
                    .arg(&spec)
                    .arg(&delay)
                    .arg(host.path().join(format!("out-{round}-{delay}")))
                    .env("KATA_SRIOV_LOG", host.path().join("log"))
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut k in kids {
            k.wait().unwrap();
        }
        // Some survivors reach a runtime: confirm one in three.
        for entry in std::fs::read_dir(host.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("out-{round}-")) {
                continue;
            }
            let out = std::fs::read(entry.path()).unwrap();
            std::fs::remove_file(entry.path()).unwrap();
            let Ok(v) = serde_json::from_slice::<Value>(&out) else {
                killed += 1;
                continue;
            };
            delivered += 1;
            let owner = v["annotations"]["io.kata-sriov.owner"]
                .as_str()
                .unwrap()
                .to_owned();
            if rng.below(3) == 0 {
                let bundle = host.path().join(format!("bundle-{round}-{confirmed}"));
                confirmed += 1;
                let o = create_runtime(&host, &owner, &bundle);
                assert!(o.status.success(), "{o:?}");
                live.push((owner, bundle));
            }
        }
        // Some containers end (their bundle goes).
        if !live.is_empty() && rng.below(2) == 0 {
            let (_, b) = live.remove(0);
            std::fs::remove_dir_all(b).unwrap();
        }
        gc(&host);
        // Every VF is free or held by a live owner.
        let leases = host.leases();
        for l in &leases {
            assert_eq!(l["state"], "claimed", "{l}");
            assert!(
                live.iter().any(|(o, b)| l["owner"] == o.as_str()
                    && l["owner_check"]["bundle"] == b.to_str().unwrap()),
                "round {round}: a VF held by no live owner: {l}"
            );
        }
        assert_eq!(leases.len(), live.len());
        let held: Vec<String> = leases
            .iter()
            .map(|l| l["vf"].as_str().unwrap().to_owned())
            .collect();
        for i in 0..VFS {
            if !held.contains(&host.vf(i).to_string()) {
                assert_eq!(host.driver(i).as_deref(), Some("vfio-pci"));
            }
        }
    }
    eprintln!("{killed} killed or refused, {delivered} delivered, {confirmed} confirmed");
    for (_, b) in live.drain(..) {
        std::fs::remove_dir_all(b).unwrap();
    }
    gc(&host);
    assert_all_free(&host);
}
