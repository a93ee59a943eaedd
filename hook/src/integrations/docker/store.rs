//! The Docker driver's network map: `<state_dir>/docker-networks.json`
//! (network -> pool and gateways, 0600, replaced atomically, compact), read
//! with a size cap and without following symlinks; never written over that
//! cap (a new network that would not fit is refused).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::http::MAX_BODY;
use super::DockerError;
use crate::error::{chain, IoError};
use crate::state::atomic::{self, Place};

/// The network → pool map, in the state dir.
pub const NETWORKS_FILE: &str = "docker-networks.json";

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
