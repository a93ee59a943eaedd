//! Peak memory of `kata-sriov hook precreate` (the release binary, on a
//! fake host) for 4 MiB specs of hostile shapes (issue 19, attack 4): each
//! run's peak RSS (`wait4`'s `ru_maxrss`) beside the input's size and the
//! peak of a small real spec measured in the same run. Every spec asks for
//! a VF, so the claim and the rewrite happen; the VF is released after each
//! run. A benchmark, not a test: it prints numbers and asserts nothing.
//!
//! `cargo build --release -p kata-sriov && cargo run --release -p kata-sriov-tests --bin bench-spec-memory [-- KATA_SRIOV_BINARY]`

use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use kata_sriov::json::MAX_INPUT_BYTES;
use kata_sriov_tests::FakeHost;

const REQUEST: &str = r#""io.kata-sriov.networks":"fast""#;

/// A spec of about `MAX_INPUT_BYTES - 8 KiB` bytes (room for the edit): `make(fill)`, a
/// spec that asks for a VF, with `fill` chosen to reach that size.
fn sized(make: impl Fn(usize) -> String) -> String {
    let target = MAX_INPUT_BYTES - 8192;
    let (mut lo, mut hi) = (0, target);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if make(mid).len() <= target {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    make(lo)
}

fn with_request(members: &str) -> String {
    format!("{{\"annotations\":{{{REQUEST}}},{members}}}")
}

fn shapes() -> Vec<(&'static str, String)> {
    let runc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/runc-config.json"),
    )
    .unwrap_or_else(|e| panic!("runc-config.json: {e}"));
    let small = runc.replacen('{', &format!("{{\"annotations\":{{{REQUEST}}},"), 1);
    let nested = |depth: usize| {
        move |n: usize| {
            // `depth` levels, each level a list of `n` empty arrays and the next level.
            let mut s = String::from("[]");
            for _ in 0..depth {
                s = format!("[{}{s}]", "[],".repeat(n));
            }
            with_request(&format!("\"x\":{s}"))
        }
    };
    vec![
        ("runc spec (baseline)", small),
        ("60-deep nested empty arrays", sized(nested(60))),
        ("120-deep nested empty arrays (refused)", sized(nested(120))),
        (
            "flat empty arrays",
            sized(|n| with_request(&format!("\"x\":[{}[]]", "[],".repeat(n)))),
        ),
        (
            "empty objects in linux.devices",
            sized(|n| {
                with_request(&format!(
                    "\"linux\":{{\"devices\":[{}{{}}]}}",
                    "{},".repeat(n)
                ))
            }),
        ),
        (
            "small numbers",
            sized(|n| with_request(&format!("\"x\":[{}0]", "0,".repeat(n)))),
        ),
        (
            "many short keys",
            sized(|n| {
                let keys: Vec<String> = (0..n).map(|i| format!("\"{i:x}\":0")).collect();
                with_request(&format!("\"x\":{{{}}}", keys.join(",")))
            }),
        ),
        (
            "many annotations",
            sized(|n| {
                let keys: Vec<String> = (0..n).map(|i| format!("\"{i:x}\":\"\"")).collect();
                format!("{{\"annotations\":{{{REQUEST},{}}}}}", keys.join(","))
            }),
        ),
    ]
}

/// The owner token in precreate's output, read as it streams by (this
/// process must not hold the output: see [`SPECS`]).
fn owner_of(out: &mut impl Read) -> Option<String> {
    const KEY: &[u8] = b"\"io.kata-sriov.owner\":\"";
    let (mut tail, mut buf, mut owner) = (Vec::new(), vec![0u8; 1 << 16], None);
    loop {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return owner;
        }
        tail.extend_from_slice(&buf[..n]);
        if owner.is_none() {
            if let Some(at) = tail.windows(KEY.len()).position(|w| w == KEY) {
                let rest = &tail[at + KEY.len()..];
                if let Some(end) = rest.iter().position(|b| *b == b'"') {
                    owner = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
                }
            }
        }
        let drop = tail.len().saturating_sub(1024);
        tail.drain(..drop);
    }
}

/// Runs precreate with `spec` (a file) on stdin: exit status, peak RSS in
/// KiB, the owner token it printed, stderr.
// Reaped by `wait4` (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run(bin: &Path, host: &FakeHost, spec: &Path) -> (ExitStatus, i64, Option<String>, String) {
    let input = File::open(spec).unwrap_or_else(|e| panic!("{}: {e}", spec.display()));
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&host.config)
        .args(["hook", "precreate"])
        .env("KATA_SRIOV_LOG", host.path().join("log"))
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning kata-sriov: {e}"));
    let mut err = child.stderr.take();
    let errs = std::thread::spawn(move || {
        let mut e = String::new();
        if let Some(r) = err.as_mut() {
            let _ = r.read_to_string(&mut e);
        }
        e
    });
    let out = child.stdout.take().and_then(|mut o| owner_of(&mut o));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (not yet reaped: `Child::wait` was
    // never called); `status` and `usage` are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        panic!("wait4: {}", std::io::Error::last_os_error());
    }
    let errs = errs.join().unwrap_or_default();
    (ExitStatus::from_raw(status), usage.ru_maxrss, out, errs)
}

/// Env var naming the directory of generated specs: set, this process
/// measures them. A process's `ru_maxrss` includes what its parent had
/// resident when it exec'ed, so the measuring process must stay small:
/// it is a fresh one that never held the generated specs.
const SPECS: &str = "KS_BENCH_SPECS";

fn main() {
    // The binary measured: the first argument, else the one built beside this.
    let bin = match std::env::args_os().nth(1) {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()
            .unwrap_or_else(|e| panic!("current_exe: {e}"))
            .with_file_name("kata-sriov"),
    };
    let Some(dir) = std::env::var_os(SPECS) else {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        for (i, (name, spec)) in shapes().into_iter().enumerate() {
            let p = dir.path().join(format!("{i:02}-{name}"));
            std::fs::write(&p, spec).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        let me = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let st = Command::new(me)
            .arg(&bin)
            .env(SPECS, dir.path())
            .status()
            .unwrap_or_else(|e| panic!("measuring: {e}"));
        std::process::exit(st.code().unwrap_or(1));
    };
    let host = FakeHost::new(
        1,
        "vfio-pci",
        &format!(
            "[hook]\nbinary = {bin:?}\n[[pools]]\nname = \"fast\"\npfs = [\"ens1f0\"]\nmac = \"keep\"\n"
        ),
    );
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .flatten()
        .map(|e| e.path())
        .collect();
    specs.sort();
    println!("kata-sriov hook precreate ({}), peak RSS", bin.display());
    println!(
        "{:<40} {:>10} {:>6} {:>10} {:>11} {:>14}",
        "spec", "input KiB", "exit", "peak KiB", "peak/input", "(peak-base)/in"
    );
    let mut baseline = 0;
    for spec in specs {
        let name = spec.file_name().unwrap_or_default().to_string_lossy()[3..].to_owned();
        let size = std::fs::metadata(&spec).map(|m| m.len()).unwrap_or(0);
        let (status, peak, out, err) = run(&bin, &host, &spec);
        if baseline == 0 {
            baseline = peak;
        }
        if let Some(owner) = out.filter(|_| status.success()) {
            let o = Command::new(&bin)
                .arg("--config")
                .arg(&host.config)
                .args(["release", &owner])
                .output()
                .unwrap_or_else(|e| panic!("release: {e}"));
            assert!(o.status.success(), "release: {o:?}");
        }
        let kib = size as f64 / 1024.0;
        println!(
            "{name:<40} {kib:>10.0} {:>6} {peak:>10} {:>11.2} {:>14.2}",
            status.code().unwrap_or(-1),
            peak as f64 / kib,
            (peak - baseline) as f64 / kib
        );
        if !status.success() {
            println!("    {}", err.trim());
        }
    }
}
