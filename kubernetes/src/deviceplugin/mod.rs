//! The device plugin mode (`kata-sriov-k8s device-plugin`): one extended
//! resource per pool (`<prefix>/<pool>`), served on
//! `<device-plugins>/kata-sriov-<pool>.sock` and registered with the
//! kubelet on `<device-plugins>/kubelet.sock`.
//!
//! - Every `rescan` (1 to 300 s): sysfs and the ledger are scanned and each
//!   pool's ListAndWatch stream gets the device list again when it changed
//!   (VFs created or removed, health); `kubelet.sock` is checked: a new
//!   one (another inode or mtime: the kubelet restarted) or our sockets
//!   gone (the kubelet deletes them at its start) -> sockets bound again
//!   and every pool registered again.
//! - Every `reconcile` (1 to 300 s): PodResources `List`; see
//!   [`allocate::Reconciler`] for when a VF is released.
//! - At start: [`allocate::recover`] from the ledger.

pub mod allocate;
pub mod devices;
pub mod service;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_sriov::chain;
use slog::{error, info, warn, Logger};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::host::Host;
use crate::names::{self, ResourceNameError};
use crate::server::{self, ServerError};
use allocate::{DpSettings, Reconciler, RecoverError};
use devices::{DevicesError, VfDevice};
use service::PoolPlugin;

/// The kubelet's registration socket in the device-plugins directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Bounds of the rescan and reconcile intervals (the command line takes
/// whole seconds, 1 to 300; tests go down to the minimum).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error(transparent)]
    Name(#[from] ResourceNameError),
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error(transparent)]
    Devices(#[from] DevicesError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("a background task of the device plugin failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Clamps an interval to [`MIN_INTERVAL`], [`MAX_INTERVAL`].
pub fn bounded(d: Duration) -> Duration {
    d.clamp(MIN_INTERVAL, MAX_INTERVAL)
}

struct Pool {
    name: String,
    resource: String,
    socket: PathBuf,
    devices: watch::Sender<Vec<VfDevice>>,
    allocation: kata_sriov::policy::config::Allocation,
}

/// One set of servers (one per pool), started again when the kubelet
/// restarts.
struct Generation {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), ServerError>>>,
}

impl Generation {
    async fn end(self, log: &Logger) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(log, "a device plugin server failed"; "error" => chain(&e)),
                Err(e) => warn!(log, "a device plugin server failed"; "error" => chain(&e)),
            }
        }
    }
}

/// Who `kubelet.sock` is: device, inode, mtime; None when absent.
fn socket_id(p: &Path) -> Option<(u64, u64, i64, i64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
}

struct Run {
    host: Arc<Host>,
    dp: DpSettings,
    pools: Vec<Pool>,
    reconciler: Arc<Mutex<Reconciler>>,
    allocated: Arc<tokio::sync::Notify>,
    log: Logger,
}

/// After an Allocate, pods are listed every [`ATTRIBUTE_EVERY`] for up to
/// [`ATTRIBUTE_WINDOW`] until every VF held has its pod recorded (the
/// shim waits for that at the sandbox's start). These Lists release nothing.
pub const ATTRIBUTE_EVERY: Duration = Duration::from_millis(250);
pub const ATTRIBUTE_WINDOW: Duration = Duration::from_secs(15);

impl Run {
    fn resources(&self) -> HashMap<String, String> {
        self.pools
            .iter()
            .map(|p| (p.name.clone(), p.resource.clone()))
            .collect()
    }

    fn start(&self, global: &watch::Receiver<bool>) -> Result<Generation, ServerError> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for p in &self.pools {
            let listener = server::bind(&p.socket)?;
            let plugin = PoolPlugin {
                host: self.host.clone(),
                dp: self.dp.clone(),
                pool: p.name.clone(),
                resource: p.resource.clone(),
                allocation: p.allocation,
                devices: p.devices.subscribe(),
                reconciler: self.reconciler.clone(),
                allocated: self.allocated.clone(),
                stop: rx.clone(),
                log: self.log.clone(),
            };
            let (mut a, mut b) = (rx.clone(), global.clone());
            let stopped = async move {
                tokio::select! {
                    _ = a.wait_for(|v| *v) => {}
                    _ = b.wait_for(|v| *v) => {}
                }
            };
            tasks.push(tokio::spawn(service::serve(
                plugin,
                listener,
                p.socket.clone(),
                stopped,
            )));
        }
        Ok(Generation { stop, tasks })
    }

    /// Registers every pool; true when all succeeded.
    async fn register(&self) -> bool {
        let sock = self.dp.plugin_dir.join(KUBELET_SOCKET);
        let mut all = true;
        for p in &self.pools {
            let endpoint = names::dp_socket(&p.name);
            match service::register(&sock, &endpoint, &p.resource).await {
                Ok(()) => info!(self.log, "registered with the kubelet";
                    "resource" => &p.resource, "endpoint" => endpoint),
                Err(e) => {
                    all = false;
                    warn!(self.log, "registering with the kubelet failed (retried at the next rescan)";
                        "resource" => &p.resource, "error" => e.message().to_owned());
                }
            }
        }
        all
    }

    async fn rescan(&self, problems: &mut Vec<String>) -> Result<(), DevicePluginError> {
        let h = self.host.clone();
        let found = tokio::task::spawn_blocking(move || devices::scan(&h)).await??;
        if found.problems != *problems {
            for p in &found.problems {
                warn!(self.log, "not offering a PF's VFs"; "problem" => p);
            }
            problems.clone_from(&found.problems);
        }
        for p in &self.pools {
            let new = found.pools.get(&p.name).cloned().unwrap_or_default();
            let log = &self.log;
            p.devices.send_if_modified(|cur| {
                if *cur == new {
                    return false;
                }
                for d in new.iter().filter(|d| d.unhealthy.is_some()) {
                    if !cur.iter().any(|c| c == d) {
                        warn!(log, "device unhealthy"; "resource" => &p.resource,
                            "device" => d.vf.to_string(), "why" => d.unhealthy.clone());
                    }
                }
                info!(log, "device list changed"; "resource" => &p.resource,
                    "devices" => new.len(), "healthy" => new.iter().filter(|d| d.unhealthy.is_none()).count());
                *cur = new;
                true
            });
        }
        Ok(())
    }

    /// Records which pod holds which VF; true when every VF held has one.
    async fn attribute(&self) -> bool {
        let Ok(listed) = service::list_pod_devices(&self.dp.pod_resources).await else {
            return false;
        };
        let (host, res) = (self.host.clone(), self.resources());
        let done = tokio::task::spawn_blocking(move || {
            allocate::attribute(&host, &listed, |p| res.get(p).cloned())
        })
        .await;
        match done {
            Ok(Ok(unknown)) => unknown == 0,
            Ok(Err(e)) => {
                warn!(self.log, "recording the pods of VFs failed"; "error" => chain(&e));
                false
            }
            Err(e) => {
                warn!(self.log, "recording the pods of VFs did not finish"; "error" => chain(&e));
                false
            }
        }
    }

    async fn reconcile(&self) {
        let listed = match service::list_pod_devices(&self.dp.pod_resources).await {
            Ok(l) => l,
            Err(e) => {
                // The kubelet is down or restarting: nothing is released.
                warn!(self.log, "PodResources List failed; releasing nothing";
                    "socket" => self.dp.pod_resources.display().to_string(), "error" => e.message().to_owned());
                self.reconciler
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .list_failed();
                return;
            }
        };
        let (host, dp, rec, res) = (
            self.host.clone(),
            self.dp.clone(),
            self.reconciler.clone(),
            self.resources(),
        );
        let done = tokio::task::spawn_blocking(move || {
            rec.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .step(&host, &dp, &listed, |p| res.get(p).cloned())
        })
        .await;
        match done {
            Ok(Ok(r)) => {
                if !r.released.is_empty() {
                    let vfs: Vec<String> = r.released.iter().map(ToString::to_string).collect();
                    info!(self.log, "released VFs no pod holds"; "vfs" => vfs.join(","));
                }
                for (vf, why) in r.failed {
                    error!(self.log, "releasing a VF no pod holds failed (tried again)";
                        "vf" => vf.to_string(), "error" => why);
                }
            }
            Ok(Err(e)) => error!(self.log, "reconciling failed"; "error" => chain(&e)),
            Err(e) => error!(self.log, "reconciling did not finish"; "error" => chain(&e)),
        }
    }
}

/// Runs the device plugin until `stop` turns true.
pub async fn run(
    host: Arc<Host>,
    mut dp: DpSettings,
    log: Logger,
    mut stop: watch::Receiver<bool>,
) -> Result<(), DevicePluginError> {
    dp.rescan = bounded(dp.rescan);
    dp.reconcile = bounded(dp.reconcile);
    let mut pools = Vec::new();
    for p in &host.cfg.pools {
        pools.push(Pool {
            name: p.name.clone(),
            resource: names::resource_name(&dp.resource_prefix, &p.name)?,
            socket: dp.plugin_dir.join(names::dp_socket(&p.name)),
            devices: watch::channel(Vec::new()).0,
            allocation: p.allocation,
        });
    }
    let run = Run {
        reconciler: Arc::new(Mutex::new(Reconciler::new(dp.grace))),
        allocated: Arc::new(tokio::sync::Notify::new()),
        host,
        dp,
        pools,
        log,
    };
    let (h, d, res) = (run.host.clone(), run.dp.clone(), run.resources());
    let rec =
        tokio::task::spawn_blocking(move || allocate::recover(&h, &d, |p| res.get(p).cloned()))
            .await??;
    info!(run.log, "recovered from the ledger"; "held" => rec.prepared.len(),
        "stale_cdi_specs_removed" => rec.stale_specs.len(), "gc" => rec.gc);
    let mut problems = Vec::new();
    run.rescan(&mut problems).await?;

    let kubelet = run.dp.plugin_dir.join(KUBELET_SOCKET);
    let mut gen = run.start(&stop)?;
    let mut seen = socket_id(&kubelet);
    let mut registered = seen.is_some() && run.register().await;
    let mut rescan = tokio::time::interval(run.dp.rescan);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile = tokio::time::interval(run.dp.reconcile);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await;
    let mut fast = tokio::time::interval(ATTRIBUTE_EVERY);
    let mut fast_until: Option<tokio::time::Instant> = None;
    while !*stop.borrow() {
        tokio::select! {
            _ = rescan.tick() => {
                if let Err(e) = run.rescan(&mut problems).await {
                    error!(run.log, "scanning VFs failed"; "error" => chain(&e));
                }
                let now = socket_id(&kubelet);
                let ours_gone = run.pools.iter().any(|p| !p.socket.exists());
                if ours_gone {
                    info!(run.log, "our sockets were removed (kubelet restart?): serving again");
                    gen.end(&run.log).await;
                    gen = run.start(&stop)?;
                }
                if now != seen || ours_gone {
                    if now.is_some() {
                        info!(run.log, "kubelet.sock is new: registering again");
                    }
                    registered = false;
                    seen = now;
                }
                if !registered && seen.is_some() {
                    registered = run.register().await;
                }
            }
            _ = reconcile.tick() => run.reconcile().await,
            _ = run.allocated.notified() => {
                fast_until = Some(tokio::time::Instant::now() + ATTRIBUTE_WINDOW);
            }
            _ = fast.tick(), if fast_until.is_some() => {
                let over = fast_until.is_some_and(|t| t <= tokio::time::Instant::now());
                if over || run.attribute().await {
                    fast_until = None;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    gen.end(&run.log).await;
    for p in &run.pools {
        let _ = std::fs::remove_file(&p.socket);
    }
    Ok(())
}
