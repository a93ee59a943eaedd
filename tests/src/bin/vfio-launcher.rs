//! `vfio-launcher`: stands in for Kata in the SR-IOV lab. It reads an OCI
//! spec rewritten by `kata-sriov hook precreate` (or the shim), maps every
//! `/dev/vfio/<group>` device of `linux.devices` to the PCI functions of that
//! IOMMU group (`<sysfs>/kernel/iommu_groups/<group>/devices/`), and runs the
//! given QEMU command with one `-device vfio-pci,host=<addr>` per function and
//! the guest annotation `io.kata-sriov.guest-networks`, base64-encoded, added
//! to the kernel command line (`-append`) as `kata_sriov.networks=<b64>`:
//! what `kata-sriov-guest --cmdline` reads inside the VM.
//!
//! ```text
//! vfio-launcher [--dry-run] [--sysfs DIR] SPEC -- QEMU [QEMU ARGS...]
//! ```
//!
//! The final command is printed to stderr, one argument per line after the
//! first; `--dry-run` prints it to stdout and does not run it. Otherwise the
//! launcher `exec`s QEMU (its exit status is QEMU's).
//!
//! Reads: SPEC, `<sysfs>/kernel/iommu_groups/<N>/devices/`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

const GUEST_ANNOTATION: &str = "io.kata-sriov.guest-networks";
const CMDLINE_KEY: &str = "kata_sriov.networks";

/// Standard base64 (RFC 4648, with padding).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The IOMMU groups of the spec's `/dev/vfio/<N>` devices, in spec order.
fn vfio_groups(spec: &Value) -> Vec<u32> {
    spec.pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("path").and_then(Value::as_str))
        .filter_map(|p| p.strip_prefix("/dev/vfio/"))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The PCI functions in IOMMU group `group`, sorted.
fn group_devices(sysfs: &Path, group: u32) -> Result<Vec<String>> {
    let dir = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
    let mut devs = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        devs.push(e.file_name().to_string_lossy().into_owned());
    }
    devs.sort();
    if devs.is_empty() {
        bail!("IOMMU group {group} has no devices ({})", dir.display());
    }
    Ok(devs)
}

/// The QEMU command: `qemu` with the vfio-pci devices and the guest
/// description added.
fn build(spec: &Value, sysfs: &Path, qemu: &[String]) -> Result<Vec<String>> {
    let groups = vfio_groups(spec);
    if groups.is_empty() {
        bail!("the spec has no /dev/vfio/<group> device: nothing to pass through");
    }
    let mut args: Vec<String> = qemu.to_vec();
    let extra = match spec
        .pointer("/annotations")
        .and_then(|a| a.get(GUEST_ANNOTATION))
        .and_then(Value::as_str)
    {
        Some(nets) => format!("{CMDLINE_KEY}={}", base64(nets.as_bytes())),
        None => String::new(),
    };
    if !extra.is_empty() {
        match args.iter().position(|a| a == "-append") {
            Some(i) if i + 1 < args.len() => {
                let cur = &args[i + 1];
                args[i + 1] = if cur.is_empty() {
                    extra
                } else {
                    format!("{cur} {extra}")
                };
            }
            Some(_) => bail!("-append has no value"),
            None => {
                args.push("-append".into());
                args.push(extra);
            }
        }
    }
    for g in groups {
        for d in group_devices(sysfs, g)? {
            args.push("-device".into());
            args.push(format!("vfio-pci,host={d}"));
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    let mut dry = false;
    let mut sysfs = PathBuf::from("/sys");
    let mut spec_path = None;
    let mut qemu = Vec::new();
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--dry-run" => dry = true,
            "--sysfs" => sysfs = PathBuf::from(argv.next().context("--sysfs needs a value")?),
            "--" => {
                qemu = argv.by_ref().collect();
            }
            _ if spec_path.is_none() && !a.starts_with('-') => spec_path = Some(PathBuf::from(a)),
            _ => bail!("usage: vfio-launcher [--dry-run] [--sysfs DIR] SPEC -- QEMU [ARGS...]"),
        }
    }
    let spec_path = spec_path
        .context("usage: vfio-launcher [--dry-run] [--sysfs DIR] SPEC -- QEMU [ARGS...]")?;
    if qemu.is_empty() {
        bail!("no QEMU command after --");
    }
    let text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let spec: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", spec_path.display()))?;
    let args = build(&spec, &sysfs, &qemu)?;
    if dry {
        for a in &args {
            println!("{a}");
        }
        return Ok(());
    }
    eprintln!("vfio-launcher: {}", args.join(" \\\n    "));
    let err = Command::new(&args[0]).args(&args[1..]).exec();
    bail!("exec {}: {err}", args[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn builds_vfio_devices_and_cmdline() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("kernel/iommu_groups/7/devices");
        std::fs::create_dir_all(g.join("0000:00:12.2")).unwrap();
        let spec = json!({
            "annotations": {GUEST_ANNOTATION: "[{\"pci_id\":\"8086:10ca\"}]"},
            "linux": {"devices": [
                {"path": "/dev/vfio/7", "type": "c", "major": 245, "minor": 1},
                {"path": "/dev/vfio/vfio", "type": "c", "major": 10, "minor": 196},
            ]},
        });
        let q: Vec<String> = ["qemu", "-append", "console=ttyS0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = build(&spec, d.path(), &q).unwrap();
        assert_eq!(
            a,
            [
                "qemu",
                "-append",
                "console=ttyS0 kata_sriov.networks=W3sicGNpX2lkIjoiODA4NjoxMGNhIn1d",
                "-device",
                "vfio-pci,host=0000:00:12.2"
            ]
        );
        // No group device: refused; a group that is not there: refused.
        assert!(build(&json!({}), d.path(), &q).is_err());
        let missing = json!({"linux": {"devices": [{"path": "/dev/vfio/8"}]}});
        assert!(build(&missing, d.path(), &q).is_err());
    }
}
