//! The SR-IOV lab's kubelet and API server for the DRA agent: plays both
//! around the real `kata-sriov-k8s dra` binary, on real VFs.
//!
//! `dra-kubelet AGENT CONFIG WORK DRA_POOL DEVICE`: serves the stand-in API
//! server (`kata_sriov_k8s::testing`) and writes `WORK/kubeconfig`; starts
//! `AGENT --config CONFIG dra --plug hot` for node `node-1` with its
//! sockets and CDI specs under WORK (log `WORK/agent.log`); registers with
//! it as the kubelet's plugin watcher does (the socket found in
//! `WORK/registry`, GetInfo); waits for its ResourceSlices; then, for claim
//! `default/lab-claim` allocated to DEVICE of DRA_POOL (opaque config: name
//! `net1`, address, MTU), calls NodePrepareResources over v1 and prints
//! what it got; waits for the file `WORK/unprepare`; calls
//! NodeUnprepareResources twice (idempotent) and stops the agent. One line
//! per step on stdout, `KEY value`; the exit status says whether every call
//! succeeded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kata_sriov_k8s::testing::{
    claim, kubelet_prepare, kubelet_register, kubelet_unprepare, ApiServer, NODE,
};

/// The claim's UID.
pub const UID: &str = "1ab0c0de-0000-4000-8000-00000000d2a1";

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let [_, agent, config, work, pool, device] = a.as_slice() else {
        bail!("usage: dra-kubelet AGENT CONFIG WORK DRA_POOL DEVICE");
    };
    let work = PathBuf::from(work);
    let api = ApiServer::start();
    let kubeconfig = work.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let log = std::fs::File::create(work.join("agent.log")).context("agent.log")?;
    let mut child = Command::new(agent)
        .arg("--config")
        .arg(config)
        .args([
            "dra",
            "--node-name",
            NODE,
            "--plug",
            "hot",
            "--rescan-seconds",
            "1",
        ])
        .args(
            [
                ("--plugins-registry", "registry"),
                ("--plugins-dir", "plugins"),
                ("--cdi-dir", "cdi"),
            ]
            .iter()
            .flat_map(|(flag, sub)| {
                [
                    std::ffi::OsString::from(*flag),
                    work.join(sub).into_os_string(),
                ]
            }),
        )
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {agent}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(play(&api, &work, pool, device));
    stop(&mut child);
    r
}

async fn play(api: &ApiServer, work: &Path, pool: &str, device: &str) -> Result<()> {
    let t = Instant::now();
    let mut k = kubelet_register(&work.join("registry"), Duration::from_secs(60)).await;
    println!(
        "REGISTERED {} {} {}",
        k.info.name,
        k.info.endpoint,
        k.info.supported_versions.join(",")
    );
    println!("TIMING registered_ms {}", t.elapsed().as_millis());
    let slices = api
        .wait_for_slices("publication", |s| {
            s.values().any(|s| {
                s.spec.pool.name == pool && s.spec.devices.as_ref().is_some_and(|d| !d.is_empty())
            })
        })
        .await;
    for s in slices.values() {
        let names: Vec<&str> = s
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| d.name.as_str())
            .collect();
        println!("SLICE {} {}", s.spec.pool.name, names.join(","));
    }
    api.add_claim(claim(
        "default",
        "lab-claim",
        UID,
        &[(pool, device)],
        Some(serde_json::json!({"name": "net1", "ips": ["10.100.0.5/24"], "mtu": 1400})),
    ));
    let t = Instant::now();
    let one = kubelet_prepare(&mut k, "default", "lab-claim", UID).await;
    println!("TIMING prepare_ms {}", t.elapsed().as_millis());
    if !one.error.is_empty() {
        println!("PREPARE_ERROR {}", one.error);
        bail!("prepare failed: {}", one.error);
    }
    for d in &one.devices {
        println!(
            "PREPARED {} {} {}",
            d.pool_name,
            d.device_name,
            d.cdi_device_ids.join(",")
        );
    }
    let go = work.join("unprepare");
    let waited = Instant::now();
    while !go.exists() {
        if waited.elapsed() > Duration::from_secs(300) {
            bail!("{} never appeared", go.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for round in ["UNPREPARED", "UNPREPARED_AGAIN"] {
        let t = Instant::now();
        let err = kubelet_unprepare(&mut k, UID).await;
        println!(
            "TIMING {}_ms {}",
            round.to_lowercase(),
            t.elapsed().as_millis()
        );
        match err.as_str() {
            "" => println!("{round} ok"),
            other => bail!("unprepare: {other}"),
        }
    }
    Ok(())
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
