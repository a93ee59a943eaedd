//! The ledger: one lease file per leased VF under the state directory
//! (`/run/kata-sriov`: tmpfs, since VFs are re-created at boot), written
//! atomically, plus the locks that make claims and releases safe.
//!
//! Layout: `<state>/lock` (host-wide lock, held only while choosing VFs and
//! recording leases), `<state>/leases/<vf-pci-address>.json` (the lease; its
//! name makes a VF impossible to lease twice), `<state>/locks/<vf>` (a VF's
//! own lock, held by whoever changes that VF: a claim's slow steps, a
//! release, gc). Locks are `flock(2)`s, dropped by the kernel when their
//! holder dies. Directories 0700, files 0600, opened with `O_NOFOLLOW`; a
//! state dir that is a symlink, owned by another user or open to others is
//! refused.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::IoError;
use crate::file;
use crate::guestnet::L3Config;
use crate::kernel::netlink::{VfSetting, VfSettings};
use crate::pci::{IfName, MacAddr, PciAddress, PciId};
use crate::state::atomic::{self, Place};

/// Largest lease file read.
const MAX_LEASE: u64 = 256 * 1024;
/// How long to wait for the host-wide lock.
pub const GLOBAL_LOCK_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("state directory {path}: {reason}")]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("lease {path} is unreadable ({reason}); its VF is quarantined: inspect it, restore the VF by hand, then delete the file")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{vf} is already leased ({path} exists)")]
    Exists { vf: PciAddress, path: PathBuf },
    #[error("timed out after {0:?} waiting for {1}")]
    LockTimeout(Duration, PathBuf),
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Recorded, being configured; the VF may be half set up.
    Claiming,
    /// Handed to its owner.
    Claimed,
    /// Being returned; the VF may be half restored.
    Releasing,
}

/// How gc knows whether a lease's owner is still there. Anything it cannot
/// decide keeps the VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerCheck {
    /// Only an explicit release frees the VF.
    None,
    /// Alive while this OCI bundle directory exists (containerd removes it
    /// when the container is deleted); the Docker driver uses a network's
    /// mark directory the same way.
    Bundle(PathBuf),
    /// Alive while this process (pid and start time in clock ticks) runs.
    Process { pid: u32, start: u64 },
    /// A `hook precreate` claim whose container has not appeared yet: alive
    /// while the runtime that ran the hook (`caller`: pid and start time)
    /// runs, and never past `confirm_by` (unix seconds). The container's
    /// createRuntime hook turns it into [`OwnerCheck::Bundle`]; a spec
    /// that never reached a runtime is reclaimed.
    Precreate {
        caller: u32,
        start: u64,
        confirm_by: u64,
    },
}

pub use crate::kernel::netns::NetdevMove;

/// A pod, as the CRI names it to the runtime
/// (`io.kubernetes.cri.sandbox-namespace`, `io.kubernetes.cri.sandbox-uid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub uid: String,
}

/// How a pool's VF reaches the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bound to vfio-pci and passed into a VM (Kata).
    #[default]
    Vfio,
    /// Keeps its kernel driver; its netdev moves into the container.
    Netdev,
}

/// One leased VF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub owner: String,
    pub pool: String,
    pub mode: Mode,
    pub pf: PciAddress,
    pub pf_netdev: Option<IfName>,
    pub vf_index: u32,
    pub vf: PciAddress,
    pub pci_id: PciId,
    pub state: LeaseState,
    /// The driver the VF was on before the claim.
    pub original_driver: Option<String>,
    /// The VF's settings on the PF before the claim (None: the pool makes
    /// no netlink call, so nothing was read or changed).
    pub original_settings: Option<VfSettings>,
    /// What the claim sets on the PF, in order (the MAC first).
    pub settings: Vec<VfSetting>,
    /// The MAC the VF has for its owner, when known.
    pub mac: Option<MacAddr>,
    pub iommu_group: Option<u32>,
    /// The guest-side L3 settings requested.
    #[serde(default)]
    pub l3: L3Config,
    pub owner_check: OwnerCheck,
    /// Kata DAN file written for this VF's sandbox, deleted on release.
    #[serde(default)]
    pub dan_file: Option<PathBuf>,
    #[serde(default)]
    pub netdev_move: Option<NetdevMove>,
    /// The Kubernetes pod (`namespace/name`) that holds a device plugin's
    /// VF, recorded by the node agent from the kubelet's PodResources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pods whose sandbox our shim cold-plugs this VF into (the DRA
    /// agent records the pods a claim is reserved for; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodRef>,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A held lock; dropping it unlocks.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

/// A lease file as found on disk.
#[derive(Debug)]
pub struct LeaseEntry {
    pub vf: PciAddress,
    pub path: PathBuf,
    /// The lease, or why it could not be read (the VF is quarantined).
    pub lease: Result<Lease, String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

fn check_dir(path: &Path) -> Result<(), LedgerError> {
    let md = fs::symlink_metadata(path).map_err(IoError::at("inspecting", path))?;
    let unsafe_dir = |reason: String| LedgerError::UnsafeDir {
        path: path.to_owned(),
        reason,
    };
    if md.file_type().is_symlink() {
        return Err(unsafe_dir("is a symlink; refusing to follow it".into()));
    }
    if !md.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by this user (uid {me}); remove it or fix its owner",
            md.uid()
        )));
    }
    if md.mode() & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "has mode {:o}; it must be 0700 (chmod 700 it)",
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

fn mkdir_private(path: &Path) -> Result<(), LedgerError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoError::at("creating", path)(e).into()),
    }
}

/// Where a hook's log goes by default: `<state_dir>/kata-sriov.log`, once
/// the state dir has passed [`Ledger::open`]'s checks (a symlinked or
/// foreign state dir gets no log file created in it); None otherwise.
pub fn log_path(dir: &Path) -> Option<PathBuf> {
    Ledger::open(dir).ok().map(|l| l.dir.join("kata-sriov.log"))
}

impl Ledger {
    /// Opens (creating it 0700 when missing) and checks the state dir.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        if let Some(parent) = dir.parent() {
            if !parent.exists() {
                fs::create_dir_all(parent).map_err(IoError::at("creating", parent))?;
            }
        }
        mkdir_private(dir)?;
        check_dir(dir)?;
        for sub in ["leases", "locks"] {
            let p = dir.join(sub);
            mkdir_private(&p)?;
            check_dir(&p)?;
        }
        Ok(Ledger {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_file(&self, path: &Path, wait: Duration) -> Result<Option<LockGuard>, LedgerError> {
        let f = file::open_regular(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600),
            path,
        )
        .map_err(IoError::at("opening lock", path))?;
        let deadline = Instant::now() + wait;
        let mut f = f;
        let mut pause = Duration::from_millis(1);
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(Some(LockGuard { _lock: l })),
                Err((back, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    f = back;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err((_, errno)) => {
                    return Err(LedgerError::Io(IoError::new(
                        "locking",
                        path.to_owned(),
                        io::Error::from(errno),
                    )))
                }
            }
        }
    }

    /// The host-wide lock.
    pub fn lock_global(&self) -> Result<LockGuard, LedgerError> {
        let p = self.dir.join("lock");
        self.lock_file(&p, GLOBAL_LOCK_WAIT)?
            .ok_or(LedgerError::LockTimeout(GLOBAL_LOCK_WAIT, p))
    }

    /// A VF's own lock, waiting at most `wait` (None: not acquired).
    pub fn lock_vf(
        &self,
        vf: PciAddress,
        wait: Duration,
    ) -> Result<Option<LockGuard>, LedgerError> {
        self.lock_file(&self.dir.join("locks").join(vf.to_string()), wait)
    }

    pub fn lease_path(&self, vf: PciAddress) -> PathBuf {
        self.dir.join("leases").join(format!("{vf}.json"))
    }

    fn encode(&self, lease: &Lease) -> Result<Vec<u8>, LedgerError> {
        let mut data = serde_json::to_vec_pretty(lease).map_err(|e| {
            LedgerError::Io(IoError::new(
                "encoding lease for",
                self.lease_path(lease.vf),
                io::Error::other(e),
            ))
        })?;
        data.push(b'\n');
        Ok(data)
    }

    /// Records a new lease; fails with [`LedgerError::Exists`] when the VF
    /// has one. The file appears whole or not at all.
    pub fn create(&self, lease: &Lease) -> Result<(), LedgerError> {
        let dst = self.lease_path(lease.vf);
        match atomic::write(&dst, &self.encode(lease)?, 0o600, Place::Exclusive) {
            Ok(()) => Ok(()),
            Err(e) if e.already_exists() => Err(LedgerError::Exists {
                vf: lease.vf,
                path: dst,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces an existing lease atomically.
    pub fn update(&self, lease: &Lease) -> Result<(), LedgerError> {
        let dst = self.lease_path(lease.vf);
        Ok(atomic::write(
            &dst,
            &self.encode(lease)?,
            0o600,
            Place::Replace,
        )?)
    }

    /// Deletes a lease (a missing one is fine).
    pub fn remove(&self, vf: PciAddress) -> Result<(), LedgerError> {
        let p = self.lease_path(vf);
        match fs::remove_file(&p) {
            Ok(()) => {
                let dir = self.dir.join("leases");
                Ok(atomic::sync_dir(&dir).map_err(IoError::at("syncing", &dir))?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IoError::at("deleting", &p)(e).into()),
        }
    }

    fn parse_file(path: &Path) -> Result<Option<Lease>, String> {
        let f = match file::read_regular(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let md = f.metadata().map_err(|e| e.to_string())?;
        if md.len() > MAX_LEASE {
            return Err(format!("{} bytes is too large for a lease", md.len()));
        }
        let mut s = String::new();
        f.take(MAX_LEASE)
            .read_to_string(&mut s)
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| format!("not a valid lease: {e}"))
    }

    /// Reads a VF's lease: None when it has none.
    pub fn read(&self, vf: PciAddress) -> Result<Option<Lease>, LedgerError> {
        let path = self.lease_path(vf);
        Ledger::parse_file(&path).map_err(|reason| LedgerError::Corrupt { path, reason })
    }

    /// The VFs that have a lease file, readable or not (a VF whose lease
    /// cannot be read is quarantined: never handed out).
    pub fn leased(&self) -> Result<HashSet<PciAddress>, LedgerError> {
        let dir = self.dir.join("leases");
        let rd = fs::read_dir(&dir).map_err(IoError::at("listing", &dir))?;
        Ok(rd
            .flatten()
            .filter_map(|e| lease_name(&e.file_name().to_string_lossy()))
            .collect())
    }

    /// Every lease file, parsed.
    pub fn list(&self) -> Result<Vec<LeaseEntry>, LedgerError> {
        let mut vfs: Vec<PciAddress> = self.leased()?.into_iter().collect();
        vfs.sort();
        Ok(vfs
            .into_iter()
            .filter_map(|vf| {
                let path = self.lease_path(vf);
                match Ledger::parse_file(&path) {
                    Ok(None) => None,
                    Ok(Some(l)) => Some(LeaseEntry {
                        vf,
                        path,
                        lease: Ok(l),
                    }),
                    Err(e) => Some(LeaseEntry {
                        vf,
                        path,
                        lease: Err(e),
                    }),
                }
            })
            .collect())
    }

    /// Files in `leases/` that are neither leases nor temp files of a live
    /// process: left by a writer that died. Returns what was removed.
    pub fn remove_stale_temps(&self) -> Vec<PathBuf> {
        let dir = self.dir.join("leases");
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&dir) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = atomic::stale_temp_pid(&name) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_file(e.path()).is_ok() {
                out.push(e.path());
            }
        }
        out
    }
}

fn lease_name(name: &str) -> Option<PciAddress> {
    name.strip_suffix(".json")?.parse().ok()
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat`
/// field 22), or None when it does not exist.
pub fn process_start(proc_root: &Path, pid: u32) -> Option<u64> {
    let s = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process, as an [`OwnerCheck`].
pub fn this_process() -> OwnerCheck {
    let pid = std::process::id();
    match process_start(Path::new("/proc"), pid) {
        Some(start) => OwnerCheck::Process { pid, start },
        None => OwnerCheck::None,
    }
}

/// The calling process (this one's parent), as a precreate claim's
/// [`OwnerCheck`] that must be confirmed by `confirm_by`; None when its
/// start time cannot be read.
pub fn precreate_caller(confirm_by: u64) -> Option<OwnerCheck> {
    let caller = u32::try_from(nix::unistd::getppid().as_raw()).ok()?;
    let start = process_start(Path::new("/proc"), caller)?;
    Some(OwnerCheck::Precreate {
        caller,
        start,
        confirm_by,
    })
}

/// Liveness of a lease's owner: Some(true) alive, Some(false) gone, None
/// cannot tell (which keeps the VF).
pub fn owner_alive(check: &OwnerCheck, proc_root: &Path) -> Option<bool> {
    match check {
        OwnerCheck::Precreate {
            caller,
            start,
            confirm_by,
        } => {
            if now_secs() > *confirm_by {
                return Some(false);
            }
            owner_alive(
                &OwnerCheck::Process {
                    pid: *caller,
                    start: *start,
                },
                proc_root,
            )
        }
        OwnerCheck::None => None,
        OwnerCheck::Bundle(p) => match fs::symlink_metadata(p) {
            Ok(_) => Some(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(false),
            Err(_) => None,
        },
        OwnerCheck::Process { pid, start } => {
            if !proc_root.join("self").exists() {
                return None;
            }
            Some(process_start(proc_root, *pid) == Some(*start))
        }
    }
}

/// Makes a file or directory private (0600/0700), for files created
/// outside [`Ledger`].
pub fn set_mode(path: &Path, mode: u32) -> Result<(), LedgerError> {
    Ok(fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(IoError::at("chmod", path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::sample_lease as sample;

    #[test]
    fn state_dir_is_private_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("state");
        let l = Ledger::open(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        assert_eq!(l.dir(), d);
        set_mode(&d, 0o755).unwrap();
        let e = Ledger::open(&d).unwrap_err().to_string();
        assert!(e.contains("0700"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = Ledger::open(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        let other = t.path().join("other");
        fs::create_dir(&other).unwrap();
        set_mode(&other, 0o700).unwrap();
        nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = Ledger::open(&other).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
    }

    #[test]
    fn create_is_exclusive_and_atomic() {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::open(&t.path().join("s")).unwrap();
        let lease = sample("0000:3b:10.0", "default/a");
        l.create(&lease).unwrap();
        let md = fs::metadata(l.lease_path(lease.vf)).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert!(matches!(
            l.create(&sample("0000:3b:10.0", "default/b")),
            Err(LedgerError::Exists { .. })
        ));
        assert_eq!(l.read(lease.vf).unwrap().unwrap().owner, "default/a");
        let mut up = lease.clone();
        up.state = LeaseState::Claimed;
        l.update(&up).unwrap();
        assert_eq!(
            l.read(lease.vf).unwrap().unwrap().state,
            LeaseState::Claimed
        );
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(t.path().join("s/leases"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        l.remove(lease.vf).unwrap();
        l.remove(lease.vf).unwrap();
        assert!(l.read(lease.vf).unwrap().is_none());
    }

    #[test]
    fn corrupt_leases_are_reported_not_dropped() {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::open(&t.path().join("s")).unwrap();
        let leases = t.path().join("s/leases");
        fs::write(leases.join("0000:3b:10.0.json"), "").unwrap();
        fs::write(leases.join("0000:3b:10.1.json"), "{\"owner\": \"x\"").unwrap();
        fs::write(leases.join("0000:3b:10.2.json"), "[1,2,3]").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", leases.join("0000:3b:10.3.json")).unwrap();
        fs::write(leases.join("junk"), "x").unwrap();
        let list = l.list().unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.iter().all(|e| e.lease.is_err()));
        assert_eq!(l.leased().unwrap().len(), 4);
        assert!(matches!(
            l.read("0000:3b:10.3".parse().unwrap()),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    #[test]
    fn locks_exclude_each_other_and_die_with_their_holder() {
        let t = tempfile::tempdir().unwrap();
        let l = Ledger::open(&t.path().join("s")).unwrap();
        let vf: PciAddress = "0000:3b:10.0".parse().unwrap();
        let g = l.lock_vf(vf, Duration::ZERO).unwrap();
        assert!(g.is_some());
        // flock is per open file description: a second open conflicts.
        assert!(l.lock_vf(vf, Duration::from_millis(20)).unwrap().is_none());
        drop(g);
        assert!(l.lock_vf(vf, Duration::ZERO).unwrap().is_some());
    }

    #[test]
    fn liveness() {
        let me = this_process();
        assert_eq!(owner_alive(&me, Path::new("/proc")), Some(true));
        let OwnerCheck::Process { pid, start } = me else {
            panic!("no start time for this process");
        };
        let reused = OwnerCheck::Process {
            pid,
            start: start + 1,
        };
        assert_eq!(owner_alive(&reused, Path::new("/proc")), Some(false));
        assert_eq!(owner_alive(&OwnerCheck::None, Path::new("/proc")), None);
        let t = tempfile::tempdir().unwrap();
        let b = OwnerCheck::Bundle(t.path().join("bundle"));
        assert_eq!(owner_alive(&b, Path::new("/proc")), Some(false));
        fs::create_dir(t.path().join("bundle")).unwrap();
        assert_eq!(owner_alive(&b, Path::new("/proc")), Some(true));
        // Without a readable /proc, liveness is unknown.
        assert_eq!(owner_alive(&me, t.path()), None);
    }
}
