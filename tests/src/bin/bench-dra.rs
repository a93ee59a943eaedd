//! Benchmarks of the DRA agent on fake sysfs trees (tmpfs), with the
//! in-memory netlink fake and the fake binder (no timed assertions: ratios
//! against a baseline measured in the same run).
//!
//! 1. Prepare + unprepare of one claim (one VF, pool with VLAN 100 and
//!    spoof checking) against the engine's own claim + release of the same
//!    VF, alternated cycle by cycle on one tree: `prepare::prepare` +
//!    `prepare::unprepare` (the library calls the gRPC service makes: the
//!    claim's allocation and opaque config parsed, the pinned claim, the
//!    CDI spec written and deleted), and the same over the real gRPC
//!    protocol from a kubelet client (`kata_sriov_k8s::testing`), with the
//!    claim read from the stand-in API server at every prepare.
//! 2. ResourceSlice publication for PFs with 8, 1,000 and 8,000 VFs: the
//!    sysfs/ledger scan (`slices::inventory`) and the first publication of
//!    every slice (`Publisher::publish`, 128 devices per slice) to the
//!    stand-in API server over HTTP, which parses each body as a
//!    ResourceSlice; ratio to 8 VFs.
//!
//! `cargo run --release -p kata-sriov-tests --bin bench-dra [-- --iters 200 --sizes 8,1000,8000 --reps 5]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_sriov::kernel::netlink::VfNetlink;
use kata_sriov::kernel::vfio::DriverBinder;
use kata_sriov::policy::config::Config;
use kata_sriov::policy::request::NetworkRequest;
use kata_sriov::state::ledger::OwnerCheck;
use kata_sriov::testing::{FakeBinder, FakeSysfs, RecordingNetlink};
use kata_sriov_k8s::host::{Host, Plug, Settings};
use kata_sriov_k8s::slices::{self, Publisher};
use kata_sriov_k8s::testing::{
    claim, kubelet_prepare, kubelet_register, kubelet_unprepare, ApiServer, DRIVER, NODE,
};
use kata_sriov_k8s::{agent, names, prepare};

const UID: &str = "0c4a5f8e-1d2b-4c3a-9f00-123456789abc";

struct Tree {
    dir: tempfile::TempDir,
    fake: Arc<FakeSysfs>,
    cfg: Config,
    nl: Arc<RecordingNetlink>,
}

fn tree(vfs: u32) -> anyhow::Result<Tree> {
    let (dir, fake, cfg) =
        kata_sriov_tests::bench_tree(vfs, "vlan = 100\nspoofchk = true\nmac = \"keep\"")?;
    let nl = Arc::new(RecordingNetlink::new());
    nl.add_pf(&"ens1f0".parse()?, vfs);
    Ok(Tree {
        dir,
        fake: Arc::new(fake),
        cfg,
        nl,
    })
}

fn settings(t: &Tree, rescan: Duration) -> Settings {
    let d = t.dir.path();
    Settings {
        driver: DRIVER.into(),
        node: NODE.into(),
        cdi_dir: d.join("cdi"),
        plugins_registry: d.join("registry"),
        plugins_dir: d.join("plugins"),
        rescan,
        plug: Plug::Hot,
    }
}

fn host(t: &Tree) -> Host {
    let binder: Arc<dyn DriverBinder> = Arc::new(FakeBinder::new(&t.fake));
    let nl: Arc<dyn VfNetlink> = t.nl.clone();
    let mut h = Host::new(t.cfg.clone(), nl, binder);
    h.node_wait = Some(Duration::ZERO);
    h
}

fn per(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n)
}

/// Part 1: the three ways, alternated, `iters` cycles each.
fn prepare_vs_claim(iters: u32) -> anyhow::Result<()> {
    let t = tree(8)?;
    let h = Arc::new(host(&t));
    let s = settings(&t, Duration::from_secs(3600));
    let vf = t.fake.root().vf_addr("0000:00:00.0".parse()?, 2)?;
    let device = names::device_name(vf);
    let pool = names::dra_pool(NODE, "fast");
    let c = claim("default", "c1", UID, &[(&pool, &device)], None);
    let mut req = NetworkRequest::plain("fast".parse()?);
    req.vf = Some(vf);
    let reqs = vec![req];

    let api = ApiServer::start();
    api.add_claim(c.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // kube's client spawns its buffer task: it needs the runtime.
    let _in_rt = rt.enter();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = rt.spawn(agent::run_dra(
        h.clone(),
        s.clone(),
        api.client(),
        kata_sriov::log::discard(),
        stopped,
    ));
    let mut k = rt.block_on(kubelet_register(
        &s.plugins_registry,
        Duration::from_secs(30),
    ));

    let engine_cycle = || -> anyhow::Result<()> {
        let e = h.engine()?;
        e.claim(UID, &reqs, OwnerCheck::None)?;
        e.release(UID)?;
        Ok(())
    };
    let prepare_cycle = || -> anyhow::Result<()> {
        let got = prepare::prepare(&h, &s, UID, &c)?;
        anyhow::ensure!(got.len() == 1, "prepared {got:?}");
        prepare::unprepare(&h, &s, UID)?;
        Ok(())
    };
    let mut grpc_cycle = || -> anyhow::Result<()> {
        rt.block_on(async {
            let r = kubelet_prepare(&mut k, "default", "c1", UID).await;
            anyhow::ensure!(r.error.is_empty(), "prepare: {}", r.error);
            let e = kubelet_unprepare(&mut k, UID).await;
            anyhow::ensure!(e.is_empty(), "unprepare: {e}");
            Ok(())
        })
    };
    for _ in 0..3 {
        engine_cycle()?;
        prepare_cycle()?;
        grpc_cycle()?;
    }
    let (mut te, mut tp, mut tg) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..iters {
        let a = Instant::now();
        engine_cycle()?;
        te += a.elapsed();
        let a = Instant::now();
        prepare_cycle()?;
        tp += a.elapsed();
        let a = Instant::now();
        grpc_cycle()?;
        tg += a.elapsed();
        t.nl.clear_calls();
    }
    let _ = stop.send(true);
    let _ = rt.block_on(agent);
    let base = per(te, iters);
    println!("one claim, one VF (VLAN 100, spoofchk), {iters} cycles each, alternated:");
    println!("  engine claim + release          {base:>9.1} us/cycle  ratio 1.00");
    for (what, d) in [
        ("prepare + unprepare (library)", tp),
        ("prepare + unprepare (gRPC)", tg),
    ] {
        let v = per(d, iters);
        println!("  {what:<31} {v:>9.1} us/cycle  ratio {:.2}", v / base);
    }
    Ok(())
}

/// Part 2: scan + first publication for each size, median of `reps`.
fn publication(sizes: &[u32], reps: u32) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _in_rt = rt.enter();
    println!("ResourceSlice publication (first publication of every slice), median of {reps}:");
    let mut base = None;
    for &n in sizes {
        let t = tree(n)?;
        let h = host(&t);
        let s = settings(&t, Duration::from_secs(3600));
        let mut scans = Vec::new();
        let mut pubs = Vec::new();
        let mut slices_made = 0;
        for _ in 0..reps {
            let api = ApiServer::start();
            let a = Instant::now();
            let inv = slices::inventory(&h, &s)?;
            scans.push(a.elapsed());
            let devices: usize = inv.pools.iter().map(|p| p.devices.len()).sum();
            anyhow::ensure!(devices == n as usize, "{devices} devices of {n}");
            let mut p = Publisher::new(api.client(), s.clone());
            let a = Instant::now();
            rt.block_on(p.publish(inv.pools))?;
            pubs.push(a.elapsed());
            slices_made = api.slices().len();
        }
        scans.sort();
        pubs.sort();
        let (scan, publ) = (scans[scans.len() / 2], pubs[pubs.len() / 2]);
        let total = scan + publ;
        let (b_scan, b_publ, b_total) = *base.get_or_insert((scan, publ, total));
        let ratio = |x: Duration, b: Duration| x.as_secs_f64() / b.as_secs_f64();
        println!(
            "  {n:>5} VFs ({slices_made:>2} slices): scan {:>8.2} ms (ratio {:>6.1}) + publish {:>7.2} ms (ratio {:>5.1}) = {:>8.2} ms (ratio {:>6.1})",
            scan.as_secs_f64() * 1e3,
            ratio(scan, b_scan),
            publ.as_secs_f64() * 1e3,
            ratio(publ, b_publ),
            total.as_secs_f64() * 1e3,
            ratio(total, b_total)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| kata_sriov_tests::flag_value(&args, name);
    let iters: u32 = arg("--iters")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let reps: u32 = arg("--reps").map(|s| s.parse()).transpose()?.unwrap_or(5);
    let sizes: Vec<u32> = arg("--sizes")
        .unwrap_or_else(|| "8,1000,8000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    prepare_vs_claim(iters)?;
    publication(&sizes, reps.max(1))?;
    Ok(())
}
