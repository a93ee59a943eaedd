//! `containerd-shim-kata-sriov-v2`: a containerd runtime v2 shim that claims
//! the container's SR-IOV VFs in `start`, writes them into the bundle's
//! `config.json`, and then `exec`s the delegate shim (Kata's by default)
//! with the same arguments, environment and stdin, so that containerd talks
//! to the delegate directly. `delete` (containerd's cleanup of a dead shim)
//! releases the owner's VFs, then `exec`s the delegate's `delete`. Every
//! other call is handed over unchanged.
//!
//! Nothing of ours goes to stdout or stderr in `start` (containerd reads
//! both as the shim's address) except one line when `start` fails; logs go
//! to `$KATA_SRIOV_LOG`, else `<state_dir>/kata-sriov.log`. Files read:
//! the config (`$KATA_SRIOV_CONFIG`, else `/etc/kata-sriov/config.toml`),
//! `<bundle>/config.json`; written: `<bundle>/config.json`, the ledger.

mod args;
mod delegate;
mod devplugin;
mod pod;
mod response;

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use slog::{error, info, warn, Logger};

use kata_sriov::engine::claim::Engine;
use kata_sriov::error::chain;
use kata_sriov::integrations::{coldplug, flow};
use kata_sriov::kernel::netlink::KernelNetlink;
use kata_sriov::kernel::sysfs::SysfsRoot;
use kata_sriov::kernel::vfio::SysfsBinder;
use kata_sriov::log;
use kata_sriov::oci::plan::{ContainerPlan, CriKind};
use kata_sriov::policy::config::{Config, GuestMode};
use kata_sriov::policy::owner;
use kata_sriov::state::ledger::OwnerCheck;

use args::ShimArgs;

/// The CRI annotation telling a pod's sandbox from its other containers.
/// containerd kills `delete` after 5 s (`io.containerd.timeout.shim.cleanup`);
/// the release gets this much of it, the delegate's delete the rest.
const DELETE_RELEASE_DEADLINE: Duration = Duration::from_secs(3);
/// How long `delete`'s release waits for the hypervisor to close the VF
/// before leaving the lease to `kata-sriov gc`.
const DELETE_RELEASE_WAIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (argv0, rest) = match argv.split_first() {
        Some((a, r)) => (a.clone(), r.to_vec()),
        None => (OsString::from(delegate::OWN_NAME), Vec::new()),
    };
    let a = ShimArgs::parse(&rest);
    match a.action.as_deref() {
        Some("start") => match start(&argv0, &rest, &a) {
            Ok(never) => match never {},
            Err(e) => {
                // The one line containerd shows the user.
                let msg = format!("{e:#}").replace('\n', " ");
                let _ = writeln!(std::io::stderr(), "kata-sriov: {msg}");
                ExitCode::FAILURE
            }
        },
        Some("delete") => delete(&argv0, &rest, &a),
        _ => {
            let cfg = Config::load(None).unwrap_or_default();
            let e = match find_delegate(&argv0, &cfg, &a) {
                Ok(path) => delegate::exec(&path, &rest),
                Err(e) => e,
            };
            let _ = writeln!(std::io::stderr(), "kata-sriov: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log: `$KATA_SRIOV_LOG`, else `<state_dir>/kata-sriov.log` once the
/// state dir has passed its checks; nowhere when it cannot be opened (never
/// stderr, which `start` must keep clean).
fn open_log(cfg: &Config) -> Logger {
    let path = match std::env::var_os(log::ENV_LOG) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => kata_sriov::state::ledger::log_path(&cfg.state_dir),
    };
    match path.filter(|p| log::open(p).is_ok()) {
        Some(p) => log::file(&p, "shim"),
        None => log::discard(),
    }
}

fn find_delegate(
    argv0: &OsStr,
    cfg: &Config,
    a: &ShimArgs,
) -> Result<PathBuf, delegate::DelegateError> {
    let (name, origin) = delegate::choose(argv0, &cfg.shim);
    if let delegate::Origin::Handler(handler) = origin {
        let path = PathBuf::from(&name);
        if !delegate::is_executable_file(&path) {
            return Err(delegate::DelegateError::HandlerMissing { handler, path });
        }
    }
    let own = std::env::current_exe().ok();
    delegate::resolve(
        &name,
        std::env::var_os("PATH").as_deref(),
        a.publish_binary.as_deref(),
        own.as_deref(),
    )
}

fn bundle_dir(a: &ShimArgs) -> Result<PathBuf> {
    match &a.bundle {
        Some(b) => Ok(b.clone()),
        None => std::env::current_dir().context("reading the working directory (the bundle)"),
    }
}

/// A pod's non-sandbox container asking for DAN pools: allowed only when
/// its sandbox holds VFs (the sandbox's DAN file serves the whole pod).
fn refuse_late_dan(engine: &Engine<'_>, plan: &ContainerPlan, a: &ShimArgs) -> Result<()> {
    if !plan.wants(engine.cfg, GuestMode::Dan) {
        return Ok(());
    }
    let sandbox_owner = match (a.namespace.as_deref(), plan.sandbox_id.as_deref()) {
        (Some(ns), Some(sb)) => owner::for_container(ns, sb),
        _ => None,
    };
    if let Some(o) = sandbox_owner {
        if !engine.leases_of(&o)?.is_empty() {
            return Ok(());
        }
    }
    Err(kata_sriov::oci::dan::DanError::NotSandbox(a.id.clone().unwrap_or_default()).into())
}

fn start(argv0: &OsStr, rest: &[OsString], a: &ShimArgs) -> Result<Infallible> {
    let cfg = Config::load(None)?;
    let path = find_delegate(argv0, &cfg, a)?;
    let bundle = bundle_dir(a)?;
    let id = a.id.as_deref().unwrap_or("");
    let mut spec = flow::read_bundle_config(&bundle)?;
    let mut plan = ContainerPlan::from_spec(&cfg, &spec)?;
    if plan.cri == CriKind::Container {
        if plan.asks() {
            let nl = KernelNetlink::new().context("opening netlink")?;
            let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
            refuse_late_dan(&Engine::new(&cfg, &nl, &binder)?, &plan, a)?;
        }
        let log = open_log(&cfg);
        info!(log, "start: CRI container of a pod, the sandbox holds the VFs"; "id" => id, "delegate" => %path.display());
        return Err(delegate::exec(&path, rest).into());
    }
    plan.resolve_dan(&cfg, &spec, id)?;
    if !plan.asks() {
        return start_unclaimed(&cfg, &path, rest, &bundle, spec, id);
    }
    let nl = KernelNetlink::new().context("opening netlink")?;
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let engine = Engine::new(&cfg, &nl, &binder)?;
    let log = open_log(&cfg);
    if plan.cri == CriKind::Sandbox {
        if let Some(edited) = devplugin::edit(&engine, &spec, &plan.requests, &log)? {
            flow::write_bundle_config(&bundle, &edited)?;
            return Err(exec_restoring(&path, rest, &bundle, &spec, &log).into());
        }
    }
    let owner = a
        .owner()
        .ok_or_else(|| anyhow!("start: -namespace and -id are needed to claim a VF"))?;
    let original = spec.clone();
    plan.owned_by(owner.clone(), OwnerCheck::Bundle(bundle.clone()));
    let claimed = flow::claim_for_shim(&engine, &mut spec, &plan)
        .with_context(|| format!("claiming a VF for {owner}"))?;
    let own = claimed.as_deref().unwrap_or_default();
    let pod = match pod::add_prepared(&engine, &mut spec, own, &log) {
        Ok(p) => p,
        Err(e) => {
            release_after_failure(&engine, &owner, &log);
            return Err(e);
        }
    };
    if claimed.is_some() || pod > 0 {
        if let Err(e) = flow::write_bundle_config(&bundle, &spec) {
            release_after_failure(&engine, &owner, &log);
            return Err(e.into());
        }
    }
    let vfs: Vec<String> = claimed
        .iter()
        .flatten()
        .map(|c| format!("{} ({})", c.vf, c.pool))
        .collect();
    info!(log, "start: claimed"; "owner" => &owner, "vfs" => vfs.join(", "), "delegate" => %path.display());
    let e = exec_restoring(&path, rest, &bundle, &original, &log);
    release_after_failure(&engine, &owner, &log);
    Err(e.into())
}

/// Hands over to the delegate; if the exec comes back (it failed), puts
/// the bundle's `original` config.json back. Returns the exec's error.
fn exec_restoring(
    path: &std::path::Path,
    rest: &[OsString],
    bundle: &std::path::Path,
    original: &kata_sriov::oci::spec::Spec,
    log: &Logger,
) -> delegate::DelegateError {
    let e = delegate::exec(path, rest);
    error!(log, "start: {e}"; "bundle" => %bundle.display());
    if let Err(w) = flow::write_bundle_config(bundle, original) {
        error!(log, "start: restoring config.json: {w}"; "bundle" => %bundle.display());
    }
    e
}

/// `start` of a spec that asks for nothing itself: a pod's sandbox still
/// gets the VFs the DRA agent prepared for the pod ([`pod::add_prepared`]);
/// anything else goes to the delegate unchanged.
fn start_unclaimed(
    cfg: &Config,
    path: &std::path::Path,
    rest: &[OsString],
    bundle: &std::path::Path,
    spec: kata_sriov::oci::spec::Spec,
    id: &str,
) -> Result<Infallible> {
    let log = open_log(cfg);
    // No state directory: nothing was ever prepared on this host.
    if coldplug::sandbox_pod(&spec).is_some() && cfg.state_dir.is_dir() {
        let nl = KernelNetlink::new().context("opening netlink")?;
        let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
        let engine = Engine::new(cfg, &nl, &binder)?;
        let mut edited = spec.clone();
        if pod::add_prepared(&engine, &mut edited, &[], &log)? > 0 {
            flow::write_bundle_config(bundle, &edited)?;
            return Err(exec_restoring(path, rest, bundle, &spec, &log).into());
        }
    }
    info!(log, "start: no request"; "id" => id, "delegate" => %path.display());
    Err(delegate::exec(path, rest).into())
}

fn release_after_failure(engine: &Engine<'_>, owner: &str, log: &Logger) {
    if let Err(e) = engine.release(owner) {
        error!(log, "releasing after a failed start: {}", chain(&e); "owner" => owner);
    }
}

/// Releases `owner`'s VFs, giving up after [`DELETE_RELEASE_DEADLINE`]
/// (the lease then stays for `kata-sriov gc`, and the log says so).
fn release_bounded(cfg: &Config, owner: &str, log: &Logger) {
    if !cfg.state_dir.is_dir() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let (cfg2, owner2) = (cfg.clone(), owner.to_owned());
    let spawned = std::thread::Builder::new()
        .name("release".into())
        .spawn(move || {
            let r = (|| -> Result<usize> {
                let nl = KernelNetlink::new().context("opening netlink")?;
                let binder = SysfsBinder::new(SysfsRoot::new(&cfg2.sysfs_root));
                let mut engine = Engine::new(&cfg2, &nl, &binder)?;
                engine.release_wait = engine.release_wait.min(DELETE_RELEASE_WAIT);
                Ok(engine.release(&owner2)?.len())
            })();
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        warn!(log, "delete: cannot start the release: {e}"; "owner" => owner);
        return;
    }
    match rx.recv_timeout(DELETE_RELEASE_DEADLINE) {
        Ok(Ok(n)) => info!(log, "delete: released"; "owner" => owner, "vfs" => n),
        Ok(Err(e)) => {
            warn!(log, "delete: release failed, leaving it to gc: {e:#}"; "owner" => owner);
            let _ = writeln!(
                std::io::stderr(),
                "kata-sriov: releasing VFs of {owner}: {e:#}"
            );
        }
        Err(_) => {
            warn!(log, "delete: release still running after {DELETE_RELEASE_DEADLINE:?} (containerd allows delete 5 s); leaving the lease to `kata-sriov gc`"; "owner" => owner)
        }
    }
}

/// `delete`: release, then the delegate's `delete`; when no delegate can
/// run, answer containerd ourselves so that it can clean up.
fn delete(argv0: &OsStr, rest: &[OsString], a: &ShimArgs) -> ExitCode {
    // stderr is only a warning for containerd here; stdout is the response.
    let cfg = match Config::load(None) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kata-sriov: {e}; releasing nothing");
            Config::default()
        }
    };
    let log = open_log(&cfg);
    match a.owner() {
        Some(owner) if cfg.source.is_some() => release_bounded(&cfg, &owner, &log),
        _ => {}
    }
    let e = match find_delegate(argv0, &cfg, a) {
        Ok(path) => {
            info!(log, "delete: handing over"; "id" => a.id.as_deref().unwrap_or(""), "delegate" => %path.display());
            delegate::exec(&path, rest)
        }
        Err(e) => e,
    };
    warn!(log, "delete: {e}; answering containerd ourselves"; "id" => a.id.as_deref().unwrap_or(""));
    let _ = writeln!(
        std::io::stderr(),
        "kata-sriov: {e}; reporting the task as killed"
    );
    match response::dead_shim_delete() {
        Ok(b) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&b).and_then(|()| out.flush()).is_ok() {
                return ExitCode::SUCCESS;
            }
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn bundle_prefers_the_flag() {
        let a = ShimArgs {
            bundle: Some(PathBuf::from("/b")),
            ..Default::default()
        };
        assert_eq!(bundle_dir(&a).unwrap(), Path::new("/b"));
        let a = ShimArgs::default();
        assert_eq!(bundle_dir(&a).unwrap(), std::env::current_dir().unwrap());
    }
}
