//! The Docker driver's network map: `<state_dir>/docker-networks.json`
//! (network -> pool and gateways, 0600, replaced atomically, compact), read
//! with a size cap and without following symlinks; never written over that
//! cap (a new network that would not fit is refused). Beside it,
//! `<state_dir>/docker-networks.d/<network>/`, one empty directory per
//! network, made by CreateNetwork and removed by DeleteNetwork: an
//! endpoint's lease is alive while its network's directory exists (gc
//! reclaims the leases a refused DeleteEndpoint left once Docker deletes
//! the network).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::http::MAX_BODY;
use super::DockerError;
use crate::error::{chain, IoError};
use crate::state::atomic::{self, Place};

/// The network → pool map, in the state dir.
pub const NETWORKS_FILE: &str = "docker-networks.json";

/// The directory of the networks' liveness marks, in the state dir.
pub const NETWORK_MARKS: &str = "docker-networks.d";

/// The mark of network `id` (an id [`super::driver`] checked: no `/`, not
/// `.` or `..`).
pub(super) fn mark(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(NETWORK_MARKS).join(id)
}

/// Makes the mark of network `id` (0700; there already is fine).
pub(super) fn make_mark(state_dir: &Path, id: &str) -> Result<PathBuf, DockerError> {
    let p = mark(state_dir, id);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&p)
        .map_err(|source| DockerError::Io(IoError::new("creating", p.clone(), source)))?;
    Ok(p)
}

/// Removes the mark of network `id` (gone already is fine).
pub(super) fn remove_mark(state_dir: &Path, id: &str) -> Result<(), DockerError> {
    let p = mark(state_dir, id);
    match std::fs::remove_dir(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(DockerError::Io(IoError::new("removing", p, e)))
        }
        _ => Ok(()),
    }
}

/// What one network of this driver is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEntry {
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<IpAddr>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Store {
    pub(super) networks: BTreeMap<String, NetworkEntry>,
}

/// Largest network map read, so the largest one written.
pub const MAX_STORE: usize = MAX_BODY * 4;

pub(super) fn load(path: &Path) -> Result<Store, DockerError> {
    let f = match crate::file::read_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Store::default()),
        Err(e) => {
            return Err(DockerError::Io(IoError::new(
                "opening",
                path.to_path_buf(),
                e,
            )))
        }
    };
    let mut s = String::new();
    f.take(MAX_STORE as u64 + 1)
        .read_to_string(&mut s)
        .map_err(|source| DockerError::Io(IoError::new("reading", path.to_path_buf(), source)))?;
    if s.len() > MAX_STORE {
        return Err(DockerError::Store {
            path: path.to_path_buf(),
            reason: format!("over {MAX_STORE} bytes; fix or delete it"),
        });
    }
    serde_json::from_str(&s).map_err(|e| DockerError::Store {
        path: path.to_path_buf(),
        reason: format!(
            "not a valid network map ({ec}); fix or delete it",
            ec = chain(&e)
        ),
    })
}

pub(super) fn save(path: &Path, store: &Store) -> Result<(), DockerError> {
    let mut data = serde_json::to_vec(store).map_err(|e| {
        DockerError::Request(format!("encoding the network map: {ec}", ec = chain(&e)))
    })?;
    data.push(b'\n');
    // Never write what `load` would refuse: the map could not be read back
    // (DeleteNetwork included).
    if data.len() > MAX_STORE {
        return Err(DockerError::Request(format!(
            "the network map would be {} bytes, over its {MAX_STORE}-byte limit: delete unused networks first",
            data.len()
        )));
    }
    atomic::write(path, &data, 0o600, Place::Replace).map_err(DockerError::Io)
}
