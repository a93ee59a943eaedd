//! Test-only driver of the claim engine, for multi-process and kill tests:
//! the file-backed netlink fake and the fake binder on the fake tree named
//! by the config, and `--kill-at STEP`, which SIGKILLs this process right
//! after that step of claim or release. This binary is the only way to
//! reach the engine's step probe; the product binaries never set it.
//!
//! Usage: claim-worker CONFIG claim OWNER REQUEST [--kill-at STEP]
//!        claim-worker CONFIG release OWNER [--kill-at STEP]
//!        claim-worker CONFIG gc
//! Exit: 0 ok, 3 pool exhausted, 1 other error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kata_sriov::engine::claim::{ClaimError, Engine, Step};
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::parse_request;
use kata_sriov::testing::{FakeBinder, FakeSysfs, FileNetlink};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claim-worker: {e}");
            if matches!(e, WorkerError::Claim(ClaimError::Exhausted { .. })) {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[derive(Debug)]
enum WorkerError {
    Claim(ClaimError),
    Other(String),
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Claim(e) => write!(f, "{e}"),
            WorkerError::Other(s) => f.write_str(s),
        }
    }
}

impl From<ClaimError> for WorkerError {
    fn from(e: ClaimError) -> Self {
        WorkerError::Claim(e)
    }
}

fn other(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Other(e.to_string())
}

fn run() -> Result<(), WorkerError> {
    let args: Vec<String> = std::env::args().collect();
    let mut kill_at: Option<String> = None;
    let mut pos = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--kill-at" {
            kill_at = it.next().cloned();
        } else {
            pos.push(a.as_str());
        }
    }
    let [config, cmd, rest @ ..] = pos.as_slice() else {
        return Err(other("usage: claim-worker CONFIG claim|release|gc ..."));
    };
    let cfg = Config::load(Some(Path::new(config))).map_err(other)?;
    let dir = Path::new(config)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let nl = FileNetlink::new(&dir.join("nl"));
    let fake = FakeSysfs::new(&cfg.sysfs_root);
    let binder = FakeBinder::new(&fake);
    let probe = move |s: Step| {
        if kill_at.as_deref() == Some(format!("{s:?}").as_str()) {
            // SAFETY: kill(2) on our own pid with SIGKILL has no memory
            // effects; the process ends here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    };
    let mut engine = Engine::new(&cfg, &nl, &binder)?;
    engine.probe = Some(&probe);
    engine.node_wait = std::time::Duration::from_millis(200);
    engine.release_wait = std::time::Duration::from_millis(200);
    match (*cmd, rest) {
        ("claim", [owner, request]) => {
            let reqs = parse_request(request).map_err(other)?;
            let got = engine.claim(owner, &reqs, kata_sriov::state::ledger::this_process())?;
            for c in got {
                println!("{}", c.vf);
            }
            Ok(())
        }
        ("release", [owner]) => {
            for vf in engine.release(owner)? {
                println!("{vf}");
            }
            Ok(())
        }
        ("gc", []) => {
            let r = engine.gc()?;
            println!("{}", serde_json::to_string(&r).map_err(other)?);
            if r.failed.is_empty() {
                Ok(())
            } else {
                Err(other(format!("gc failures: {:?}", r.failed)))
            }
        }
        _ => Err(other("usage: claim-worker CONFIG claim|release|gc ...")),
    }
}
