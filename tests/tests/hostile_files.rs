//! Issue 19, attack 7, on the real `kata-sriov` binary and a fake host:
//! files planted in the state dir or a bundle never make it block or write
//! where it should not. A FIFO as a lease file quarantines its VF in
//! `status` and `gc` and is skipped by precreate (each finishes at once); a
//! FIFO `config.json` is refused by create-runtime; a state dir that is a
//! symlink gets no log file created in its target; `status` marks a VF
//! that shares its IOMMU group as unclaimable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::stat::Mode;
use serde_json::{json, Value};

use kata_sriov_tests::{output_within, vfio_host, workspace_bin, FakeHost};

fn host(vfs: u32) -> FakeHost {
    vfio_host(vfs, "")
}

/// Runs the binary with `stdin` from a file, failing the test after 20 s
/// (what used to hang forever).
fn ks(host: &FakeHost, args: &[&str], stdin: &[u8]) -> Output {
    let input = host.path().join("stdin");
    std::fs::write(&input, stdin).unwrap();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"f="$1"; shift; exec "$0" "$@" <"$f""#)
        .arg(workspace_bin("kata-sriov"))
        .arg(&input)
        .arg("--config")
        .arg(&host.config)
        .args(args)
        .env_remove("KATA_SRIOV_LOG");
    output_within(&mut c, Duration::from_secs(20))
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn a_fifo_lease_quarantines_its_vf_and_blocks_nothing() {
    let host = host(2);
    let o = ks(&host, &["status", "--json"], b"");
    assert!(o.status.success(), "{o:?}");
    let fifo = host
        .path()
        .join(format!("state/leases/{}.json", host.vf(0)));
    mkfifo(&fifo);

    let o = ks(&host, &["status", "--json"], b"");
    assert!(o.status.success(), "{o:?}");
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        st.to_string().contains("is a FIFO, not a regular file"),
        "{st}"
    );

    let o = ks(&host, &["gc"], b"");
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("quarantined {}: is a FIFO", host.vf(0))),
        "{out}"
    );

    // precreate takes the other VF, and leaves the quarantined one alone.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    spec["annotations"]["io.kata-sriov.networks"] = Value::from("fast");
    let o = ks(
        &host,
        &["hook", "precreate"],
        &serde_json::to_vec(&spec).unwrap(),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(host.leased(), vec![host.vf(0), host.vf(1)]);
    let lease = host
        .path()
        .join(format!("state/leases/{}.json", host.vf(1)));
    let lease: Value = serde_json::from_slice(&std::fs::read(lease).unwrap()).unwrap();
    assert_eq!(lease["state"], "claimed");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(host.driver(0).as_deref(), Some("vfio-pci"));
}

#[test]
fn a_fifo_config_json_is_refused_by_create_runtime() {
    let host = host(1);
    let bundle = host.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    mkfifo(&bundle.join("config.json"));
    let state = json!({"id": "c1", "pid": 1, "bundle": bundle});
    let o = ks(
        &host,
        &["hook", "create-runtime"],
        &serde_json::to_vec(&state).unwrap(),
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.json: is a FIFO"), "{err}");
}

#[test]
fn a_symlinked_state_dir_gets_no_log() {
    let host = host(1);
    let target = host.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    let link = host.path().join("state-link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let text = std::fs::read_to_string(&host.config).unwrap();
    let state_dir = host.path().join("state");
    std::fs::write(
        &host.config,
        text.replace(
            &format!("state_dir = {state_dir:?}"),
            &format!("state_dir = {link:?}"),
        ),
    )
    .unwrap();
    let o = ks(
        &host,
        &["hook", "poststop"],
        br#"{"id":"c1","bundle":"/nonexistent"}"#,
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

/// Issue 19: `status` does not call a VF that can never be claimed `free`:
/// one sharing its IOMMU group with another device is marked unclaimable,
/// with the group-mate named; the other VF stays `free`.
#[test]
fn status_marks_a_vf_sharing_its_iommu_group() {
    use kata_sriov::testing::FakeDevice;
    let host = host(2);
    let vf0 = host.vf(0);
    let g = host.group_of(vf0);
    host.fake
        .add_device(FakeDevice::endpoint("0000:5e:00.0").in_group(g));
    let o = ks(&host, &["status"], b"");
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.contains(&vf0.to_string())).unwrap();
    assert!(
        line.contains("unclaimable: pool fast:") && line.contains("0000:5e:00.0 (i40e)"),
        "{line}"
    );
    assert!(!line.ends_with(" free"), "{line}");
    let other = text
        .lines()
        .find(|l| l.contains(&host.vf(1).to_string()))
        .unwrap();
    assert!(other.ends_with(" free"), "{other}");
    let o = ks(&host, &["status", "--json"], b"");
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(st["pfs"][0]["vfs"][0]["unclaimable"]
        .as_str()
        .unwrap()
        .contains(&format!("shares IOMMU group {g}")));
    assert!(st["pfs"][0]["vfs"][1].get("unclaimable").is_none());
}
