//! `kata-sriov`: OCI hook modes and the admin CLI, thin over the library.
//! stdout is protocol in hook modes (precreate prints the edited config);
//! logs go to a file (`$KATA_SRIOV_LOG`, default `<state_dir>/kata-sriov.log`
//! for hooks) or stderr, and a failure is one line on stderr.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use slog::{info, Logger};

use kata_sriov::admin::status;
use kata_sriov::engine::claim::Engine;
use kata_sriov::error::printable;
use kata_sriov::integrations::{cdi, flow};
use kata_sriov::json::MAX_INPUT_BYTES;
use kata_sriov::kernel::netlink::KernelNetlink;
use kata_sriov::kernel::sysfs::SysfsRoot;
use kata_sriov::kernel::vfio::SysfsBinder;
use kata_sriov::log;
use kata_sriov::oci::plan::ContainerPlan;
use kata_sriov::oci::{spec, state};
use kata_sriov::policy::config::Config;
use kata_sriov::policy::owner;
use kata_sriov::state::ledger::{self, Ledger, OwnerCheck};

#[derive(Parser)]
#[command(
    name = "kata-sriov",
    version,
    about = "Give containers and Kata VMs an SR-IOV VF"
)]
struct Cli {
    /// Admin config (default $KATA_SRIOV_CONFIG, else /etc/kata-sriov/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// OCI hook modes (state or config on stdin).
    Hook {
        #[command(subcommand)]
        mode: HookMode,
    },
    /// PFs, VFs, settings, leases and quarantined VFs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Finish interrupted claims/releases and release VFs whose owner is gone.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Release every VF held by OWNER (an operator's manual release).
    Release { owner: String },
    /// Prepare the host: VF counts, vfio-pci, PFs up, free VFs in a clean state.
    Setup,
    /// Readiness report; exits non-zero when a check fails.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Add kata-sriov to containerd, docker, podman (hooks.d) or kata (configuration.toml).
    Configure {
        /// containerd, docker, podman or kata
        target: kata_sriov::admin::configure::Target,
        /// Print the change as a unified diff; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The file to edit (podman: the hooks.d directory) instead of the default.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// VFs for CDI-aware engines (`--device kata-sriov.io/vf=NAME`).
    Cdi {
        #[command(subcommand)]
        action: CdiCmd,
    },
    /// Docker network driver (libnetwork remote driver) on a unix socket.
    DockerPlugin {
        /// The socket; its file name is the driver's name in Docker.
        #[arg(long, default_value = kata_sriov::integrations::docker::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum CdiCmd {
    /// Claim a VF of POOL and write its CDI spec ([cdi] dir); prints the
    /// fully qualified device name to pass to `--device`.
    Claim {
        #[arg(long)]
        pool: String,
        /// The device name (default: generated, `vf-<hex>`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Release the VF of CDI device NAME and delete its spec.
    Release { name: String },
}

#[derive(Subcommand)]
enum HookMode {
    /// podman's precreate stage: config.json on stdin, edited config on stdout.
    Precreate,
    /// createRuntime: state on stdin (netdev pools).
    CreateRuntime,
    /// poststop: state on stdin; releases the container's VFs.
    Poststop,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and each of its causes, once each.
            let msg = format!("{e:#}").replace(['\n', '\r'], " ");
            let _ = writeln!(std::io::stderr(), "kata-sriov: {msg}");
            ExitCode::FAILURE
        }
    }
}

struct Host {
    nl: KernelNetlink,
    binder: SysfsBinder,
}

fn host(cfg: &Config) -> Result<Host> {
    Ok(Host {
        nl: KernelNetlink::new().context("opening netlink")?,
        binder: SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root)),
    })
}

fn run(cli: Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.cmd {
        Cmd::Hook { mode } => {
            // The default log file only in a state dir that passed its checks.
            let logger = log::from_env(ledger::log_path(&cfg.state_dir).as_deref(), "hook");
            match mode {
                HookMode::Precreate => precreate(&cfg, &logger),
                HookMode::CreateRuntime => create_runtime(&cfg, &logger),
                HookMode::Poststop => poststop(&cfg, &logger),
            }
        }
        Cmd::Status { json } => {
            let ledger = Ledger::open(&cfg.state_dir)?;
            let nl = KernelNetlink::new().ok();
            let st = status::gather(&cfg, &ledger, nl.as_ref().map(|n| n as _))?;
            let out = if json {
                serde_json::to_string_pretty(&st)? + "\n"
            } else {
                status::render(&st)
            };
            std::io::stdout().write_all(out.as_bytes())?;
            Ok(())
        }
        Cmd::Gc { json } => {
            let h = host(&cfg)?;
            let engine = Engine::new(&cfg, &h.nl, &h.binder)?;
            let r = engine.gc()?;
            let specs = cdi::remove_orphans(&engine)?;
            if json {
                let mut v = serde_json::to_value(&r)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("cdi_specs_removed".into(), serde_json::to_value(&specs)?);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (vf, owner) in &r.released {
                    println!("released {vf} (owner {})", printable(owner));
                }
                for (vf, why) in &r.quarantined {
                    println!("quarantined {vf}: {}", printable(why));
                }
                for vf in &r.busy {
                    println!("busy {vf}: another process is working on it");
                }
                for (vf, why) in &r.failed {
                    println!("failed {vf}: {}", printable(why));
                }
                for p in &specs {
                    println!("removed {} (its CDI claim is gone)", p.display());
                }
                println!(
                    "gc: {} released, {} kept, {} quarantined, {} busy, {} failed",
                    r.released.len(),
                    r.kept,
                    r.quarantined.len(),
                    r.busy.len(),
                    r.failed.len()
                );
            }
            if r.failed.is_empty() {
                Ok(())
            } else {
                bail!(
                    "{} release(s) failed; the leases stay for the next gc",
                    r.failed.len()
                )
            }
        }
        Cmd::DockerPlugin { socket } => docker_plugin(&cfg, &socket),
        Cmd::Cdi { action } => cdi_cmd(&cfg, action),
        Cmd::Release { owner } => {
            let h = host(&cfg)?;
            let engine = Engine::new(&cfg, &h.nl, &h.binder)?;
            let done = engine.release(&owner)?;
            for vf in &done {
                println!("released {vf}");
            }
            if done.is_empty() {
                println!("{owner:?} holds no VF");
            }
            if let Some(name) = cdi::name_of(&owner) {
                if let Some(p) = cdi::remove_spec(&engine, name)? {
                    println!("removed {}", p.display());
                }
            }
            Ok(())
        }
        Cmd::Setup => setup_cmd(&cfg),
        Cmd::Check { json } => check_cmd(&cfg, json),
        Cmd::Configure {
            target,
            dry_run,
            file,
        } => configure_cmd(&cfg, target, dry_run, file.as_deref()),
    }
}

fn precreate(cfg: &Config, logger: &Logger) -> Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut input)
        .context("reading config.json from stdin")?;
    let mut spec = spec::parse_spec_owned(input)?;
    let mut plan = ContainerPlan::for_hook(cfg, &spec)?;
    // The result goes to stdout: one that cannot be delivered is no claim.
    let mut out = Stdout::open().context("stdout (where the edited config goes)")?;
    if !plan.asks() {
        // The text as it came in, byte for byte.
        return out
            .deliver(spec.text().as_bytes())
            .context("writing the config to stdout");
    }
    let h = host(cfg)?;
    let engine = Engine::new(cfg, &h.nl, &h.binder)?;
    let owner = owner::generate("precreate")?;
    // With the injected hooks, the container's createRuntime hook confirms
    // the claim; until then it lives only as long as its caller (and its
    // deadline). Without them nothing ever learns of the container.
    let check = match cfg.hook.precreate_poststop() {
        true => ledger::precreate_caller(ledger::now_secs() + u64::from(cfg.hook.confirm_within))
            .context("reading the start time of the process that ran the hook")?,
        false => OwnerCheck::None,
    };
    plan.owned_by(owner.clone(), check);
    let claimed = flow::claim_into_spec(&engine, &mut spec, &plan)?;
    let vfs: Vec<String> = claimed
        .iter()
        .flatten()
        .map(|c| format!("{} ({})", c.vf, c.pool))
        .collect();
    info!(logger, "precreate claimed"; "owner" => &owner, "vfs" => vfs.join(", "));
    if let Err(e) = out.deliver(spec.text().as_bytes()) {
        let rollback = engine.release(&owner);
        info!(logger, "precreate rolled back"; "owner" => &owner, "released" => rollback.is_ok());
        return Err(e).context("writing the edited config to stdout (the claim is rolled back)");
    }
    Ok(())
}

/// fd 1, written without the standard library's stdout (which treats a
/// closed fd 1 as a sink that accepts everything).
struct Stdout(std::mem::ManuallyDrop<std::fs::File>);

impl Stdout {
    fn open() -> std::io::Result<Stdout> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let fd = std::io::stdout().as_raw_fd();
        let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
        // The standard library's start-up puts /dev/null on a closed fd 1:
        // nothing written there reaches anyone.
        let null = nix::sys::stat::makedev(1, 3);
        if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == null {
            return Err(std::io::Error::other(
                "is closed or /dev/null: the edited config would reach no runtime",
            ));
        }
        // SAFETY: fd 1 is open (checked above) and stays open for the life
        // of the process; ManuallyDrop never closes it.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        Ok(Stdout(std::mem::ManuallyDrop::new(f)))
    }

    fn deliver(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all(data)?;
        self.0.flush()
    }
}

fn create_runtime(cfg: &Config, logger: &Logger) -> Result<()> {
    let state = state::read_state(std::io::stdin().lock())?;
    let Some(bundle) = &state.bundle else {
        return Ok(());
    };
    let config = flow::read_bundle_config(bundle)?;
    let plan = ContainerPlan::from_spec(cfg, &config)?;
    let precreated = owner::from_state(&state.annotations, &state.id)
        .ok()
        .filter(|o| owner::is_generated(o));
    if !plan.netdev && precreated.is_none() {
        return Ok(());
    }
    let h = host(cfg)?;
    let engine = Engine::new(cfg, &h.nl, &h.binder)?;
    if let Some(owner) = &precreated {
        // The spec from `hook precreate` reached a runtime: tie its claim
        // to this container's bundle (gc reclaims it otherwise).
        let bound = engine.confirm(owner, bundle)?;
        info!(logger, "create-runtime confirmed"; "owner" => owner, "vfs" => bound);
    }
    if !plan.netdev {
        return Ok(());
    }
    let done = kata_sriov::integrations::netdev::create_runtime_planned(&engine, &state, &plan)?;
    for a in &done {
        info!(logger, "create-runtime moved";
            "id" => &state.id, "vf" => a.vf.to_string(), "pool" => &a.pool,
            "from" => a.host_name.to_string(), "to" => a.container_name.to_string());
    }
    Ok(())
}

fn docker_plugin(cfg: &Config, socket: &std::path::Path) -> Result<()> {
    use kata_sriov::integrations::docker::{self, Driver, Reply};
    let logger = log::from_env(None, "docker-plugin");
    // A bad state dir or no netlink fails the start, not every call.
    {
        let h = host(cfg)?;
        Engine::new(cfg, &h.nl, &h.binder)?;
    }
    let listener = docker::bind(socket)?;
    info!(logger, "listening"; "socket" => socket.display().to_string());
    // An engine per call, on the call's own thread: a release waiting for
    // its VF holds up no other call.
    let call = |method: &str, body: &[u8]| -> Reply {
        let h = match host(cfg) {
            Ok(h) => h,
            Err(e) => return Reply::err(500, format!("{e:#}")),
        };
        match Engine::new(cfg, &h.nl, &h.binder) {
            Ok(engine) => Driver::new(&engine, logger.clone()).handle(method, body),
            Err(e) => Reply::err(500, kata_sriov::error::chain(&e)),
        }
    };
    docker::serve(&listener, &call, &logger).context("accepting connections")
}

fn poststop(cfg: &Config, logger: &Logger) -> Result<()> {
    let state = state::read_state(std::io::stdin().lock())?;
    let owner = owner::from_state(&state.annotations, &state.id)?;
    let from_annotation = state.annotations.contains_key(owner::OWNER_ANNOTATION);
    let h = host(cfg)?;
    let engine = Engine::new(cfg, &h.nl, &h.binder)?;
    // Only what the host side recorded for this container is released.
    engine.authorize(&owner, state.bundle.as_deref(), from_annotation)?;
    let done = engine.release(&owner)?;
    info!(logger, "poststop released"; "owner" => &owner, "vfs" => done.len());
    Ok(())
}

fn setup_cmd(cfg: &Config) -> Result<()> {
    let nl = KernelNetlink::new().context("opening netlink")?;
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    let load = || binder.ensure_vfio_pci();
    let r = kata_sriov::admin::setup::Setup::new(cfg, &nl, &load).run(&mut std::io::stdout())?;
    if !r.failures.is_empty() {
        bail!("setup: {} step(s) failed (see above)", r.failures.len());
    }
    Ok(())
}

fn check_cmd(cfg: &Config, json: bool) -> Result<()> {
    let report = kata_sriov::admin::check::run(cfg, &kata_sriov::admin::check::CheckEnv::host());
    let out = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.render()
    };
    std::io::stdout().write_all(out.as_bytes())?;
    if report.failed() {
        bail!("{} check(s) failed", report.fail);
    }
    Ok(())
}

fn configure_cmd(
    cfg: &Config,
    target: kata_sriov::admin::configure::Target,
    dry_run: bool,
    file: Option<&std::path::Path>,
) -> Result<()> {
    let plan = kata_sriov::admin::configure::plan(target, file, cfg)?;
    let mut out = std::io::stdout().lock();
    if !plan.changed() {
        for f in &plan.files {
            writeln!(out, "{}: already configured, no change", f.path.display())?;
        }
        return Ok(());
    }
    if dry_run {
        out.write_all(plan.diff().as_bytes())?;
        writeln!(out, "(dry run: nothing written)")?;
    } else {
        plan.apply()?;
        for f in plan.files.iter().filter(|f| f.changed()) {
            let p = f.path.display();
            if f.old.is_some() && f.base.is_none() {
                let bak = kata_sriov::admin::configure::backup_path(&f.path);
                writeln!(out, "{p}: updated (backup {})", bak.display())?;
            } else {
                writeln!(out, "{p}: created")?;
            }
        }
    }
    for n in &plan.notes {
        writeln!(out, "note: {n}")?;
    }
    Ok(())
}

fn cdi_cmd(cfg: &Config, action: CdiCmd) -> Result<()> {
    let h = host(cfg)?;
    let engine = Engine::new(cfg, &h.nl, &h.binder)?;
    match action {
        CdiCmd::Claim { pool, name } => {
            let name = match name {
                Some(n) => n,
                None => cdi::generate_name()?,
            };
            let c = cdi::claim(&engine, &pool, &name)?;
            let vfs: Vec<String> = c.vfs.iter().map(|v| v.vf.to_string()).collect();
            eprintln!(
                "claimed {} for {}; spec {}",
                vfs.join(", "),
                c.qualified,
                c.spec.display()
            );
            println!("{}", c.qualified);
        }
        CdiCmd::Release { name } => {
            let r = cdi::release(&engine, &name)?;
            for vf in &r.vfs {
                println!("released {vf}");
            }
            match &r.spec {
                Some(p) => println!("removed {}", p.display()),
                None if r.vfs.is_empty() => bail!("no CDI claim named {name:?}"),
                None => {}
            }
        }
    }
    Ok(())
}
