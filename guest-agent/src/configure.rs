//! Turns a validated description into configured NICs: waits (bounded) for
//! every entry's NIC, decides all of them before changing anything, moves
//! NICs into the target network namespace when that is not the helper's
//! own, then sets name, MAC, MTU, addresses, up, routes and default route
//! ([`IfConf::apply_l3`]).
//!
//! Kernel interfaces: rtnetlink through `kata_sriov_guest::IfConf`; sysfs under
//! the given root for PCI information (see [`crate::nics`]);
//! `/proc/<pid>/ns/net` and `/proc/thread-self/ns/net` to find and compare
//! network namespaces.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use kata_sriov_guest::{Change, GuestNetwork, IfConf, IfName, IfconfError, Link};

use crate::log::Log;
use crate::nics::{self, describe, pci_info, MatchError, Nic, Pick};

/// How the helper looks for NICs.
#[derive(Debug, Clone)]
pub struct Options {
    /// sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// How long to wait for NICs that are not there yet.
    pub wait: Duration,
    /// Pause between two looks.
    pub poll: Duration,
}

/// Why configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Ifconf(#[from] IfconfError),
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error("{missing}: no matching NIC after waiting {waited:.1} s; NICs seen: {seen}")]
    NotFound {
        missing: String,
        waited: f64,
        seen: String,
    },
    #[error("network namespace of pid {pid}: {cause}")]
    Netns { pid: i32, cause: std::io::Error },
    #[error("{entry}: name {name} is taken by another NIC: {other}")]
    NameTaken {
        entry: String,
        name: IfName,
        other: String,
    },
    #[error("{entry}: NIC {nic} has a name that cannot be carried into another namespace")]
    BadName { entry: String, nic: String },
    #[error("{entry}: NIC {name} vanished after it was moved")]
    Vanished { entry: String, name: String },
}

/// What one run did, per entry: the NIC's final name and the changes made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub index: u32,
    pub changes: Vec<String>,
}

fn ns_id(f: &File) -> std::io::Result<(u64, u64)> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// The target namespace when it is not ours: its fd and a socket in it,
/// and ours (where a moved NIC goes back if a later step fails).
struct Target {
    ns: File,
    conf: IfConf,
    home: File,
}

fn open_target(pid: i32) -> Result<Option<Target>, ConfigureError> {
    let err = |cause| ConfigureError::Netns { pid, cause };
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(err)?;
    let own = File::open("/proc/thread-self/ns/net").map_err(err)?;
    if ns_id(&ns).map_err(err)? == ns_id(&own).map_err(err)? {
        return Ok(None);
    }
    let conf = IfConf::open_in_netns(ns.as_fd())?;
    Ok(Some(Target {
        ns,
        conf,
        home: own,
    }))
}

fn gather(conf: &IfConf, sysfs: Option<&std::path::Path>) -> Result<Vec<Nic>, IfconfError> {
    let links = conf.links()?;
    let addrs = conf.addresses(None)?;
    Ok(links
        .into_iter()
        .map(|link| Nic {
            addrs: addrs
                .iter()
                .filter(|a| a.index == link.index && a.is_global())
                .map(|a| a.cidr)
                .collect(),
            pci: sysfs.and_then(|root| pci_info(root, &link.name, link.index)),
            link,
        })
        .collect())
}

/// Configures every entry, in the network namespace of `pid` when given
/// (moving NICs there first if it is not the helper's own), else here.
pub fn configure(
    entries: &[GuestNetwork],
    pid: Option<i32>,
    opts: &Options,
    log: &Log,
) -> Result<Vec<Outcome>, ConfigureError> {
    let local = IfConf::open()?;
    let target = match pid {
        Some(p) => open_target(p)?,
        None => None,
    };
    if let (Some(p), Some(_)) = (pid, &target) {
        log.info(&format!(
            "pid {p} is in another network namespace: NICs found here are moved there"
        ));
    }

    let start = Instant::now();
    let mut said_waiting = false;
    let (picks, local_nics, target_nics) = loop {
        let local_nics = gather(&local, Some(&opts.sysfs))?;
        let target_nics = match &target {
            Some(t) => Some(gather(&t.conf, None)?),
            None => None,
        };
        let picks = nics::resolve(entries, &local_nics, target_nics.as_deref())?;
        if picks.iter().all(Option::is_some) {
            break (picks, local_nics, target_nics);
        }
        let missing: Vec<String> = picks
            .iter()
            .zip(entries)
            .enumerate()
            .filter(|(_, (p, _))| p.is_none())
            .map(|(i, (_, n))| describe(i, n))
            .collect();
        if start.elapsed() >= opts.wait {
            let mut seen = nics::list(&local_nics);
            if let Some(t) = &target_nics {
                seen = format!("{seen}; in the target namespace: {}", nics::list(t));
            }
            return Err(ConfigureError::NotFound {
                missing: missing.join(", "),
                waited: start.elapsed().as_secs_f64(),
                seen,
            });
        }
        if !said_waiting {
            log.info(&format!(
                "waiting up to {:.1} s for {}",
                opts.wait.as_secs_f64(),
                missing.join(", ")
            ));
            said_waiting = true;
        }
        thread::sleep(opts.poll);
    };

    // Check every name before changing anything.
    let mut chosen: Vec<(&GuestNetwork, Pick, &Nic)> = Vec::new();
    for (e, (n, pick)) in entries.iter().zip(&picks).enumerate() {
        let Some(pick) = *pick else { continue };
        let nic = match pick {
            Pick::Local(i) => &local_nics[i],
            Pick::Target(i) => match &target_nics {
                Some(t) => &t[i],
                None => continue,
            },
        };
        let Some(name) = &n.l3.name else {
            chosen.push((n, pick, nic));
            continue;
        };
        // Where the NIC ends up, and who else is there. A name held by
        // another NIC is refused, even one another entry would rename away.
        let there: &[Nic] = target_nics.as_deref().unwrap_or(&local_nics);
        if let Some(other) = there
            .iter()
            .find(|o| o.link.name == name.as_str() && !std::ptr::eq(*o, nic))
        {
            return Err(ConfigureError::NameTaken {
                entry: describe(e, n),
                name: name.clone(),
                other: other.to_string(),
            });
        }
        chosen.push((n, pick, nic));
    }

    let mut out = Vec::new();
    let mut done: Vec<(&IfConf, u32, Link, Vec<Change>)> = Vec::new();
    // NICs moved into the target: their index there and their name here.
    let mut moved: Vec<(u32, Option<IfName>)> = Vec::new();
    // All or nothing across entries: what was configured goes back as it
    // was, then what was moved goes back home under its own name.
    let roll_back = |done: &[(&IfConf, u32, Link, Vec<Change>)],
                     moved: &[(u32, Option<IfName>)]| {
        for (c, index, before, applied) in done.iter().rev() {
            if let Err(u) = IfConf::undo(c, *index, before, applied) {
                log.info(&format!("undoing link index {index}: {u}"));
            }
        }
        if let Some(t) = &target {
            for (index, name) in moved.iter().rev() {
                if let Err(u) = t.conf.move_to_netns(*index, t.home.as_fd(), name.as_ref()) {
                    log.info(&format!("moving link index {index} back: {u}"));
                }
            }
        }
    };
    for (e, (n, pick, nic)) in chosen.into_iter().enumerate() {
        let entry = describe(e, n);
        let mut changes = Vec::new();
        let (conf, link) = match (&target, pick) {
            (Some(t), Pick::Local(_)) => {
                let name = match &n.l3.name {
                    Some(x) => x.clone(),
                    None => nic.link.name.parse().map_err(|_| ConfigureError::BadName {
                        entry: entry.clone(),
                        nic: nic.to_string(),
                    })?,
                };
                if let Err(err) = local.move_to_netns(nic.link.index, t.ns.as_fd(), Some(&name)) {
                    roll_back(&done, &moved);
                    return Err(err.into());
                }
                changes.push(format!(
                    "moved {} into the target namespace as {name}",
                    nic.link.name
                ));
                let link = match t.conf.link_by_name(name.as_str()) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        roll_back(&done, &moved);
                        return Err(ConfigureError::Vanished {
                            entry: entry.clone(),
                            name: name.to_string(),
                        });
                    }
                    Err(err) => {
                        roll_back(&done, &moved);
                        return Err(err.into());
                    }
                };
                moved.push((link.index, nic.link.name.parse().ok()));
                (&t.conf, link)
            }
            (Some(t), Pick::Target(_)) => (&t.conf, nic.link.clone()),
            (None, _) => (&local, nic.link.clone()),
        };
        let before = match conf.link(link.index) {
            Ok(b) => b.unwrap_or_else(|| link.clone()),
            Err(err) => {
                roll_back(&done, &moved);
                return Err(err.into());
            }
        };
        let applied = match conf.apply_l3(&link, &n.l3, n.mac) {
            Ok(a) => a,
            Err(err) => {
                roll_back(&done, &moved);
                return Err(err.into());
            }
        };
        changes.extend(applied.iter().map(ToString::to_string));
        done.push((conf, link.index, before, applied));
        let name =
            n.l3.name
                .as_ref()
                .map_or(link.name.clone(), |x| x.to_string());
        if changes.is_empty() {
            log.info(&format!(
                "{entry}: {name} (index {}) is already configured; nothing changed",
                link.index
            ));
        } else {
            log.info(&format!(
                "{entry}: {name} (index {}) configured: {}",
                link.index,
                changes.join(", ")
            ));
        }
        out.push(Outcome {
            name,
            index: link.index,
            changes,
        });
    }
    Ok(out)
}
