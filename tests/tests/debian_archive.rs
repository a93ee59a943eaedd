//! `scripts/debian-archive.sh`, which install-deps.sh and forky-root.sh use
//! to take the Debian archive (mirror, proxy) and its key from the
//! machine's own apt sources, run on apt directories made by the test
//! (`APT_ETC`, `OS_RELEASE`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-archive.sh")
}

/// An apt directory with `sources.list` (when given) and `name -> text`
/// files in sources.list.d; the script's output.
fn run(list: Option<&str>, parts: &[(&str, &str)]) -> Output {
    let d = tempfile::tempdir().unwrap();
    let etc = d.path().join("apt");
    std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
    if let Some(l) = list {
        std::fs::write(etc.join("sources.list"), l).unwrap();
    }
    for (name, text) in parts {
        std::fs::write(etc.join("sources.list.d").join(name), text).unwrap();
    }
    let osr = d.path().join("os-release");
    std::fs::write(&osr, "ID=debian\nVERSION_CODENAME=bookworm\n").unwrap();
    Command::new("bash")
        .arg(script())
        .env("APT_ETC", &etc)
        .env("OS_RELEASE", &osr)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const KEY: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[test]
fn deb822_mirror_with_its_key_skipping_disabled_and_other_suites() {
    let o = run(
        None,
        &[(
            "debian.sources",
            &format!(
                "Types: deb\nURIs: http://sec.mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                 # a comment\nTypes: deb\nURIs: http://off.mirror.test/debian\nSuites: bookworm\nEnabled: no\n\n\
                 Types: deb deb-src\nuris: http://mirror.test:3142/debian/ http://second.test/debian\n\
                 Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: {KEY}\n"
            ),
        )],
    );
    assert_eq!(
        stdout(&o),
        format!("URI=http://mirror.test:3142/debian\nSIGNED_BY={KEY}\n")
    );
}

#[test]
fn one_line_sources_with_and_without_signed_by() {
    let o = run(
        Some(&format!(
            "# deb http://old.test/debian bookworm main\n\
             deb [arch=amd64 signed-by={KEY}] http://local.test/debian bookworm main contrib\n"
        )),
        &[],
    );
    assert_eq!(
        stdout(&o),
        format!("URI=http://local.test/debian\nSIGNED_BY={KEY}\n")
    );
    // A key file that does not exist, and an inline key, are not reused.
    let o = run(
        Some("deb [signed-by=/nonexistent.gpg] http://local.test/debian bookworm main\n"),
        &[],
    );
    assert_eq!(stdout(&o), "URI=http://local.test/debian\nSIGNED_BY=\n");
    let o = run(
        None,
        &[(
            "x.sources",
            "Types: deb\nURIs: http://inline.test/debian\nSuites: bookworm\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n",
        )],
    );
    assert_eq!(stdout(&o), "URI=http://inline.test/debian\nSIGNED_BY=\n");
}

#[test]
fn no_source_for_the_release_is_a_clear_error() {
    let o = run(
        Some("deb http://local.test/debian trixie main\n"),
        &[(
            "a.sources",
            "Types: deb\nURIs: http://x.test/debian\nSuites: bookworm-backports\n",
        )],
    );
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no enabled deb source for suite bookworm"),
        "{e}"
    );
}

#[test]
fn the_scripts_name_no_archive_host() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for host in ["deb.debian.org", "ftp.debian.org", "security.debian.org"] {
            assert!(!text.contains(host), "{} names {host}", e.path().display());
        }
    }
}
