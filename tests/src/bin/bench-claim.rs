//! Benchmark of claim + release on fake sysfs trees (tmpfs), with the
//! in-memory netlink fake and the fake binder.
//!
//! 1. Cost per claim+release cycle on PFs with 8, 1,000 and 64,000 VFs,
//!    reported as a ratio to the 8-VF tree measured in the same run.
//! 2. 16 claims at once against 16 VFs whose binding takes 200 ms: wall
//!    time as a ratio to one claim alone (goal: near 1, not 16).
//!
//! `cargo run --release -p kata-sriov-tests --bin bench-claim [-- --sizes 8,1000,64000 --iters 200]`

use std::time::{Duration, Instant};

use kata_sriov::engine::claim::Engine;
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::parse_request;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov::testing::RecordingNetlink;
use kata_sriov::testing::{FakeBinder, FakeSysfs};

struct Tree {
    _dir: tempfile::TempDir,
    fake: FakeSysfs,
    cfg: Config,
    nl: RecordingNetlink,
}

fn tree(vfs: u32, mac: &str) -> anyhow::Result<Tree> {
    let (dir, fake, cfg) =
        kata_sriov_tests::bench_tree(vfs, &format!("vlan = 100\nspoofchk = true\nmac = {mac:?}"))?;
    let nl = RecordingNetlink::new();
    nl.add_pf(&"ens1f0".parse()?, vfs);
    Ok(Tree {
        _dir: dir,
        fake,
        cfg,
        nl,
    })
}

fn cycles(t: &Tree, iters: u32) -> anyhow::Result<Duration> {
    let binder = FakeBinder::new(&t.fake);
    let mut e = Engine::new(&t.cfg, &t.nl, &binder)?;
    e.node_wait = Duration::ZERO;
    let r = parse_request("fast")?;
    for i in 0..3 {
        e.claim(&format!("warm{i}"), &r, OwnerCheck::None)?;
        e.release(&format!("warm{i}"))?;
    }
    let start = Instant::now();
    for i in 0..iters {
        let owner = format!("c{i}");
        e.claim(&owner, &r, OwnerCheck::None)?;
        e.release(&owner)?;
        t.nl.clear_calls();
    }
    Ok(start.elapsed() / iters)
}

fn parallel(n: u32, delay: Duration) -> anyhow::Result<Duration> {
    let t = tree(n, "generate")?;
    let binder = FakeBinder::new(&t.fake).with_delay(delay);
    let r = parse_request("fast")?;
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (t, binder, r) = (&t, &binder, &r);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut e = Engine::new(&t.cfg, &t.nl, binder)?;
                    e.node_wait = Duration::ZERO;
                    e.claim(&format!("p{i}"), r, OwnerCheck::None)?;
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("claim thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| kata_sriov_tests::flag_value(&args, name);
    let sizes: Vec<u32> = arg("--sizes")
        .unwrap_or_else(|| "8,1000,64000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let iters: u32 = arg("--iters")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);

    let mac = arg("--mac").unwrap_or_else(|| "generate".into());
    println!(
        "claim+release cycle cost by PF size ({iters} cycles each, tmpfs fake tree, mac = {mac})"
    );
    let mut base = None;
    for &n in &sizes {
        let built = Instant::now();
        let t = tree(n, &mac)?;
        let build = built.elapsed();
        let per = cycles(&t, iters)?;
        let b = *base.get_or_insert(per);
        println!(
            "  {n:>6} VFs: {:>8.1} us/cycle  ratio {:>5.2}  (tree built in {:.1} s)",
            per.as_secs_f64() * 1e6,
            per.as_secs_f64() / b.as_secs_f64(),
            build.as_secs_f64()
        );
    }

    let delay = Duration::from_millis(200);
    let one = parallel(1, delay)?;
    let sixteen = parallel(16, delay)?;
    println!(
        "16 concurrent claims, binding slowed to {} ms each: {:.0} ms wall; one claim alone: {:.0} ms; ratio {:.2} (16 serial bindings would be 16)",
        delay.as_millis(),
        sixteen.as_secs_f64() * 1e3,
        one.as_secs_f64() * 1e3,
        sixteen.as_secs_f64() / one.as_secs_f64()
    );
    Ok(())
}
