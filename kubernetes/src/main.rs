//! `kata-sriov-k8s`: the Kubernetes node agent (DaemonSet). Logs go to
//! stderr; nothing is printed on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kata_sriov::kernel::netlink::KernelNetlink;
use kata_sriov::kernel::sysfs::SysfsRoot;
use kata_sriov::kernel::vfio::SysfsBinder;
use kata_sriov::policy::config::Config;
use kata_sriov_k8s::agent;
use kata_sriov_k8s::deviceplugin::{self, allocate::DpSettings};
use kata_sriov_k8s::host::{Host, Plug, Settings};

#[derive(Parser)]
#[command(name = "kata-sriov-k8s", about = "kata-sriov's Kubernetes node agent")]
struct Cli {
    /// kata-sriov config (pools, state dir); default /etc/kata-sriov/config.toml or $KATA_SRIOV_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run as a DRA driver: publish ResourceSlices, serve the kubelet's DRA plugin API.
    Dra(DraArgs),
    /// Run as a kubelet device plugin: one extended resource <prefix>/<pool> per pool.
    DevicePlugin(DevicePluginArgs),
}

#[derive(clap::Args)]
struct DevicePluginArgs {
    /// Prefix of the extended resources (<prefix>/<pool>; also the CDI kind).
    #[arg(long, default_value = kata_sriov_k8s::names::DEFAULT_RESOURCE_PREFIX)]
    resource_prefix: String,
    /// The kubelet's device-plugins directory (kubelet.sock and our sockets).
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
    plugin_dir: PathBuf,
    /// The kubelet's PodResources socket.
    #[arg(long, default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pod_resources_socket: PathBuf,
    /// Where CDI specs are written (the runtime's CDI spec directory).
    #[arg(long, default_value = kata_sriov::oci::cdi::DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// Seconds between rescans of sysfs (device list, health) and checks of kubelet.sock (1 to 300).
    #[arg(long, default_value_t = 5)]
    rescan_seconds: u64,
    /// Seconds between PodResources Lists (1 to 300); a VF no pod holds is released after two.
    #[arg(long, default_value_t = 10)]
    reconcile_seconds: u64,
    /// No VF is released sooner than this many seconds after its Allocate.
    #[arg(long, default_value_t = 60)]
    release_grace_seconds: u64,
}

#[derive(clap::Args)]
struct DraArgs {
    /// The DRA driver name (the DeviceClass selects on it).
    #[arg(long, default_value = "kata-sriov.io")]
    driver_name: String,
    /// This node's name (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The kubelet's plugin registration directory.
    #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
    plugins_registry: PathBuf,
    /// The kubelet's plugin directory; the DRA socket is <dir>/<driver>/dra.sock.
    #[arg(long, default_value = "/var/lib/kubelet/plugins")]
    plugins_dir: PathBuf,
    /// Where CDI specs are written (the runtime's CDI spec directory).
    #[arg(long, default_value = kata_sriov::oci::cdi::DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// How prepared VFIO VFs reach the pod: "cold" (our shim adds them to
    /// the pod's sandbox, Kata cold-plugs them; the CDI edits carry no
    /// device node) or "hot" (the CDI edits carry the /dev/vfio nodes:
    /// runc, or Kata hot plug into the containers that reference the claim).
    #[arg(long, default_value = "cold")]
    plug: Plug,
    /// Seconds between rescans of sysfs and the ledger for slice changes.
    #[arg(long, default_value_t = 10)]
    rescan_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = kata_sriov::log::stderr("kata-sriov-k8s");
    match run(cli, log.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            slog::crit!(log, "exiting"; "error" => format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, log: slog::Logger) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let a = match cli.mode {
        Mode::Dra(a) => a,
        Mode::DevicePlugin(a) => return run_device_plugin(cfg, a, log),
    };
    let settings = Settings {
        driver: a.driver_name,
        node: a.node_name,
        cdi_dir: a.cdi_dir,
        plugins_registry: a.plugins_registry,
        plugins_dir: a.plugins_dir,
        rescan: Duration::from_secs(a.rescan_seconds.max(1)),
        plug: a.plug,
    };
    let host = host(cfg)?;
    runtime()?.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the API server (in-cluster or $KUBECONFIG)")?;
        agent::run_dra(host, settings, client, log, stop_on_signal()).await?;
        Ok(())
    })
}

fn run_device_plugin(cfg: Config, a: DevicePluginArgs, log: slog::Logger) -> Result<()> {
    let dp = DpSettings {
        resource_prefix: a.resource_prefix,
        plugin_dir: a.plugin_dir,
        pod_resources: a.pod_resources_socket,
        cdi_dir: a.cdi_dir,
        rescan: Duration::from_secs(a.rescan_seconds.clamp(1, 300)),
        reconcile: Duration::from_secs(a.reconcile_seconds.clamp(1, 300)),
        grace: Duration::from_secs(a.release_grace_seconds),
    };
    let host = host(cfg)?;
    runtime()?.block_on(async move {
        deviceplugin::run(host, dp, log, stop_on_signal()).await?;
        Ok(())
    })
}

fn host(cfg: Config) -> Result<Arc<Host>> {
    let nl = KernelNetlink::new().context("opening netlink")?;
    let binder = SysfsBinder::new(SysfsRoot::new(&cfg.sysfs_root));
    Ok(Arc::new(Host::new(cfg, Arc::new(nl), Arc::new(binder))))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Turns true at SIGTERM or SIGINT (call inside the runtime).
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    rx
}
