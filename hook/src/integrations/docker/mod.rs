//! The Docker network driver (`kata-sriov docker-plugin`): a libnetwork
//! remote driver on a unix socket (`/run/docker/plugins/kata-sriov.sock`
//! by default; dockerd finds drivers there by name: the socket's name is
//! the driver's name). Networks map to `netdev` pools (`docker network
//! create -d kata-sriov -o pool=fast vfnet`, or `-o pf=ens1f0 -o vlan=100`,
//! resolved to the configured netdev pool with that PF and VLAN); each
//! endpoint claims one VF under the owner `docker/<network>/<endpoint>`,
//! and Docker moves the VF's interface into the container (named `ethN`)
//! and sets the address its IPAM chose, the MAC and the gateway.
//!
//! Files: the socket; `<state_dir>/docker-networks.json` (network → pool
//! and gateways, 0600, replaced atomically) and
//! `<state_dir>/docker-networks.d/<network>/` (the network's mark: its
//! endpoints' leases are alive for gc while it exists), besides the
//! engine's leases.
//! Everything survives a restart of the plugin: endpoints are found again
//! through their leases.
//!
//!
//! Calls run concurrently, each with its own engine: one DeleteEndpoint
//! waiting for its VF holds up no call about another VF.
//!
//! Split in three: [`driver`] (the calls), [`http`] (the server), [`store`]
//! (the network map).

mod driver;
mod http;
mod store;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::engine::claim::ClaimError;
use crate::error::IoError;
use crate::state::ledger::LedgerError;

pub use driver::{endpoint_owner, Driver, DST_PREFIX};
pub use http::{
    read_request, serve_conn, write_reply, Reply, Request, IO_TIMEOUT, MAX_BODY, MAX_CONNECTIONS,
    MAX_HEAD,
};
pub use store::{NetworkEntry, NETWORKS_FILE};

/// The default socket: the driver is named `kata-sriov`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/kata-sriov.sock";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: another driver instance is listening on it; refusing to take it over")]
    InUse { path: PathBuf },
    #[error("{path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Something wrong with the request itself.
    #[error("{0}")]
    Request(String),
}

/// Binds the driver's socket at `path`: creates its directory, replaces a
/// stale socket (never one a live instance accepts connections on, nor any
/// other kind of file), makes it 0600.
pub fn bind(path: &Path) -> Result<UnixListener, DockerError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| DockerError::Io(IoError::new(op, p, source))
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A live instance answers a connect: never take its socket over.
            if UnixStream::connect(path).is_ok() {
                return Err(DockerError::InUse {
                    path: path.to_owned(),
                });
            }
            fs::remove_file(path).map_err(io("removing", path))?
        }
        Ok(_) => {
            return Err(DockerError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", path)(e)),
    }
    let l = UnixListener::bind(path).map_err(io("binding", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io("chmod", path))?;
    Ok(l)
}

/// Serves the driver on `listener` (see [`http::serve`]): `call` answers
/// each request on its connection's thread, concurrently with the others
/// (the binary gives each call an engine of its own: the engine's locks are
/// files, per VF and host-wide, so engines in one process exclude each
/// other as processes do).
pub fn serve(
    listener: &UnixListener,
    call: &(dyn Fn(&str, &[u8]) -> Reply + Sync),
    logger: &slog::Logger,
) -> io::Result<()> {
    http::serve(listener, call, logger)
}
