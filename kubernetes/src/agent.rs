//! The DRA node agent: recovers its prepared claims from the ledger,
//! publishes ResourceSlices and keeps them current (rescan of sysfs and
//! the ledger), and serves the kubelet's registration and DRA sockets
//! until told to stop. (The device plugin of issue #17 will be a second
//! mode beside this one, over the same [`Host`].)

use kata_sriov::chain;
use std::sync::Arc;

use slog::{error, info, warn, Logger};
use tokio::sync::watch;

use crate::host::{Host, Settings};
use crate::names::{self, NameError};
use crate::prepare::{self, RecoverError};
use crate::server::{self, Dra, Registration, ServerError};
use crate::slices::{self, Publisher, SliceError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Slice(#[from] SliceError),
    #[error("a background task of the agent failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

async fn publish_once(
    host: &Arc<Host>,
    settings: &Settings,
    publisher: &mut Publisher,
    problems: &mut Vec<String>,
    log: &Logger,
) -> Result<slices::Published, SliceError> {
    let (h, s) = (host.clone(), settings.clone());
    let (inv, swept) =
        tokio::task::spawn_blocking(move || (slices::inventory(&h, &s), prepare::sweep(&h, &s)))
            .await
            .map_err(SliceError::Task)?;
    match swept {
        Ok(gone) if !gone.is_empty() => {
            info!(log, "deleted CDI specs of claims that hold no VF"; "specs" => gone.join(", "))
        }
        Ok(_) => {}
        Err(e) => warn!(log, "sweeping CDI specs failed"; "error" => chain(&e)),
    }
    let inv = inv?;
    // Said once, not at every rescan.
    if inv.problems != *problems {
        for p in &inv.problems {
            warn!(log, "not offering a PF's VFs"; "problem" => p);
        }
        *problems = inv.problems;
    }
    publisher.publish(inv.pools).await
}

/// Runs the DRA driver until `stop` turns true.
pub async fn run_dra(
    host: Arc<Host>,
    settings: Settings,
    client: kube::Client,
    log: Logger,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    names::check_node(&settings.node)?;
    names::check_pools(&settings.node, &host.pool_names())?;
    let (h, s) = (host.clone(), settings.clone());
    let rec = tokio::task::spawn_blocking(move || prepare::recover(&h, &s)).await??;
    info!(log, "recovered from the ledger";
        "prepared_claims" => rec.prepared.len(), "stale_cdi_specs_removed" => rec.stale_specs.len(),
        "gc" => rec.gc);

    // The DRA socket first: the kubelet may call it as soon as it sees the
    // registration socket.
    let dra_path = settings.dra_socket();
    let reg_path = settings.registration_socket();
    let dra_listener = server::bind(&dra_path)?;
    let dra = Dra {
        host: host.clone(),
        settings: settings.clone(),
        client: client.clone(),
        log: log.clone(),
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let dra_task = tokio::spawn(server::serve_dra(
        dra,
        dra_listener,
        dra_path.clone(),
        stopped(stop.clone()),
    ));
    let reg_listener = server::bind(&reg_path)?;
    let reg_task = tokio::spawn(server::serve_registration(
        Registration {
            settings: settings.clone(),
            log: log.clone(),
        },
        reg_listener,
        reg_path.clone(),
        stopped(stop.clone()),
    ));
    info!(log, "serving"; "registration" => reg_path.display().to_string(),
        "dra" => dra_path.display().to_string());

    let mut publisher = Publisher::new(client, settings.clone());
    let mut problems = Vec::new();
    let mut tick = tokio::time::interval(settings.rescan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {
                match publish_once(&host, &settings, &mut publisher, &mut problems, &log).await {
                    Ok(p) if p.pools.is_empty() && p.deleted.is_empty() => {}
                    Ok(p) => info!(log, "published ResourceSlices";
                        "pools" => format!("{:?}", p.pools), "deleted" => format!("{:?}", p.deleted)),
                    // The API server may be away for a while: retry at the next tick.
                    Err(e) => error!(log, "publishing ResourceSlices failed"; "error" => chain(&e)),
                }
            }
            changed = stop.changed() => {
                let done = changed.is_err() || *stop.borrow();
                if done {
                    break;
                }
            }
        }
    }
    // The registration socket goes first, so the kubelet stops calling.
    reg_task.await??;
    let _ = std::fs::remove_file(&reg_path);
    dra_task.await??;
    let _ = std::fs::remove_file(&dra_path);
    Ok(())
}
