//! Benchmark, run explicitly (ignored by default):
//!
//!     cargo build -p kata-sriov --bin kata-sriov
//!     cargo test -p containerd-shim-kata-sriov-v2 --test bench -- --ignored --nocapture
//!
//! `ctr run --rm` start to exit of `/bin/true` through our shim (runc's shim
//! as the delegate) against runc's shim directly, alternated in one run
//! with a rotating order, N = 20 each: without a request, and with one on
//! the fake tree (claim, config.json rewrite, poststop hook release).
//! Prints medians, means and the ratios to runc's.

// Test helpers: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;

/// Runs of each kind (`KSS_BENCH_N` overrides).
fn n() -> usize {
    std::env::var("KSS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn start_to_exit_through_the_shim_vs_runc() {
    let lab = Lab::new(1, "containerd-shim-runc-v2");
    let kinds: [(&str, &str, Option<&str>); 3] = [
        ("runc", RUNC, None),
        ("shim", RUNTIME, None),
        ("shim+request", RUNTIME, Some(POOL)),
    ];
    let time = |k: usize, id: &str| -> f64 {
        let (_, rt, req) = kinds[k];
        let t = Instant::now();
        let out = lab.run(rt, id, req, "true");
        let dt = t.elapsed();
        assert!(out.status.success(), "{out:?}");
        dt.as_secs_f64() * 1000.0
    };
    for k in 0..3 {
        time(k, &format!("warm{k}"));
    }
    let n = n();
    let mut samples: [Vec<f64>; 3] = Default::default();
    for i in 0..n {
        for j in 0..3 {
            let k = (i + j) % 3;
            samples[k].push(time(k, &format!("b{i}-{k}")));
        }
    }
    assert!(lab.host.leases().is_empty());
    let samples_raw = samples.clone();
    let stats: Vec<(f64, f64)> = samples.iter_mut().map(|v| (median(v), mean(v))).collect();
    println!("ctr run --rm /bin/true, N={n} each, alternated (ms):");
    for (k, (med, avg)) in stats.iter().enumerate() {
        println!(
            "  {:<13} median {med:7.1}  mean {avg:7.1}  ratio to runc: median {:.3}  mean {:.3}",
            kinds[k].0,
            med / stats[0].0,
            avg / stats[0].1
        );
    }
    // Per round the three runs are back to back: their ratios cancel the
    // drift of a machine shared with other work.
    for k in 1..3 {
        let mut r: Vec<f64> = (0..n)
            .map(|i| samples_raw[k][i] / samples_raw[0][i])
            .collect();
        println!(
            "  {:<13} median of per-round ratios to runc: {:.3}",
            kinds[k].0,
            median(&mut r)
        );
    }
    // Sanity only (the numbers are the result): a start never takes 10x.
    assert!(stats[1].0 < stats[0].0 * 10.0);
}
