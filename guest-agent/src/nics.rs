//! The NICs the helper sees and which one each description entry means.
//!
//! Links come from rtnetlink (through `kata_sriov_guest::IfConf`); their PCI side
//! from sysfs under a root (`/sys` in production, a tree built by a test
//! otherwise): `class/net/<name>/ifindex`, the `class/net/<name>/device`
//! link (its last component is the PCI address), `device/vendor`,
//! `device/device` and the `device/driver` link. `/sys/class/net` shows the
//! network namespace of whoever mounted sysfs, so a sysfs entry is used only
//! when its `ifindex` is the netlink link's.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::Path;

use kata_sriov_guest::{GuestNetwork, IfName, IpCidr, Link, MacAddr, PciAddress, PciId};

/// The PCI device behind a netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciInfo {
    pub addr: PciAddress,
    pub id: Option<PciId>,
    pub driver: Option<String>,
}

/// One link with what matching needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub link: Link,
    /// Global-scope addresses it carries (link-local ones left out).
    pub addrs: Vec<IpCidr>,
    pub pci: Option<PciInfo>,
}

impl fmt::Display for Nic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (mac ", self.link.name)?;
        match self.link.mac {
            Some(m) => write!(f, "{m}")?,
            None => f.write_str("none")?,
        }
        match &self.pci {
            Some(p) => {
                write!(f, ", pci {}", p.addr)?;
                if let Some(id) = p.id {
                    write!(f, " [{id}]")?;
                }
                write!(f, ", driver {}", p.driver.as_deref().unwrap_or("none"))?;
            }
            None => f.write_str(", no PCI device")?,
        }
        f.write_str(")")
    }
}

/// The NICs as one comma-separated line.
pub fn list(nics: &[Nic]) -> String {
    if nics.is_empty() {
        return "none".to_owned();
    }
    nics.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn link_basename(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

/// The PCI device of link `name` (index `index`) as sysfs under `sysfs`
/// shows it; `None` for a link with no PCI device (veth, virtio's child
/// device, lo) or one sysfs does not show (another network namespace).
pub fn pci_info(sysfs: &Path, name: &str, index: u32) -> Option<PciInfo> {
    name.parse::<IfName>().ok()?;
    let dir = sysfs.join("class/net").join(name);
    let shown: u32 = fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if shown != index {
        return None;
    }
    let addr: PciAddress = link_basename(&dir.join("device"))?.parse().ok()?;
    let dev = dir.join("device");
    let id = match (
        fs::read_to_string(dev.join("vendor")),
        fs::read_to_string(dev.join("device")),
    ) {
        (Ok(v), Ok(d)) => PciId::from_sysfs(&v, &d).ok(),
        _ => None,
    };
    Some(PciInfo {
        addr,
        id,
        driver: link_basename(&dev.join("driver")),
    })
}

/// Where an entry's NIC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// In the helper's own network namespace (index into `local`).
    Local(usize),
    /// Already in the target namespace (index into `target`).
    Target(usize),
}

/// Why matching cannot go on (waiting longer would not help).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatchError {
    #[error("entry {entry}: {count} NICs have MAC {mac}: {nics}")]
    SameMac {
        entry: usize,
        mac: MacAddr,
        count: usize,
        nics: String,
    },
    #[error(
        "entry {entry}: no NIC has MAC {mac_shown}and {count} unconfigured NICs have PCI ID {pci_id}: {nics}; refusing to guess"
    )]
    Ambiguous {
        entry: usize,
        mac_shown: String,
        pci_id: PciId,
        count: usize,
        nics: String,
    },
}

/// How an entry is described in messages.
pub fn describe(index: usize, n: &GuestNetwork) -> String {
    let mut s = format!("entry {index} (");
    if let Some(m) = n.mac {
        s.push_str(&format!("mac {m}, "));
    }
    s.push_str(&format!("pci {}", n.pci_id));
    if let Some(name) = &n.l3.name {
        s.push_str(&format!(", name {name}"));
    }
    s.push(')');
    s
}

/// Decides, for every entry, which NIC it means; `None` for an entry whose
/// NIC is not there (yet). `target` is the container's namespace when it is
/// not the helper's own (its NICs have no PCI information).
///
/// In order: a NIC with the entry's MAC (target namespace first); for an
/// entry without a MAC, a NIC that already has the entry's name (a second
/// run) and its PCI ID where that is known; then, in the helper's own
/// namespace only, the one unconfigured NIC with the entry's PCI ID. A NIC
/// is unconfigured for an entry when no other entry claims it (by MAC or
/// name) and every global address it carries is one of the entry's.
pub fn resolve(
    entries: &[GuestNetwork],
    local: &[Nic],
    target: Option<&[Nic]>,
) -> Result<Vec<Option<Pick>>, MatchError> {
    let mut picks: Vec<Option<Pick>> = vec![None; entries.len()];
    let mut taken_local: HashSet<usize> = HashSet::new();
    let mut taken_target: HashSet<usize> = HashSet::new();

    // 1. By MAC.
    for (e, n) in entries.iter().enumerate() {
        let Some(mac) = n.mac else { continue };
        if let Some(t) = target {
            if let Some(i) = by_mac(e, n, mac, t)? {
                picks[e] = Some(Pick::Target(i));
                taken_target.insert(i);
                continue;
            }
        }
        if let Some(i) = by_mac(e, n, mac, local)? {
            picks[e] = Some(Pick::Local(i));
            taken_local.insert(i);
        }
    }

    // 2. By name, for entries without a MAC: the NIC a previous run named.
    for (e, n) in entries.iter().enumerate() {
        if picks[e].is_some() || n.mac.is_some() {
            continue;
        }
        let Some(name) = &n.l3.name else { continue };
        let same = |nic: &Nic| {
            nic.link.name == name.as_str()
                && nic
                    .pci
                    .as_ref()
                    .is_none_or(|p| p.id.is_none_or(|id| id == n.pci_id))
        };
        if let Some(t) = target {
            if let Some(i) = t
                .iter()
                .enumerate()
                .position(|(i, nic)| same(nic) && !taken_target.contains(&i))
            {
                picks[e] = Some(Pick::Target(i));
                taken_target.insert(i);
                continue;
            }
        } else if let Some(i) = local
            .iter()
            .enumerate()
            .position(|(i, nic)| same(nic) && nic.pci.is_some() && !taken_local.contains(&i))
        {
            picks[e] = Some(Pick::Local(i));
            taken_local.insert(i);
        }
    }

    // 3. By PCI ID among unconfigured NICs of the helper's namespace.
    let macs: HashSet<MacAddr> = entries.iter().filter_map(|n| n.mac).collect();
    for (e, n) in entries.iter().enumerate() {
        if picks[e].is_some() {
            continue;
        }
        let other_names: HashSet<&str> = entries
            .iter()
            .enumerate()
            .filter(|(o, _)| *o != e)
            .filter_map(|(_, o)| o.l3.name.as_ref().map(IfName::as_str))
            .collect();
        let cands: Vec<usize> = local
            .iter()
            .enumerate()
            .filter(|(i, nic)| {
                !taken_local.contains(i)
                    && nic.pci.as_ref().and_then(|p| p.id) == Some(n.pci_id)
                    && nic.link.mac.is_none_or(|m| !macs.contains(&m))
                    && !other_names.contains(nic.link.name.as_str())
                    && nic.addrs.iter().all(|a| n.l3.ips.contains(a))
            })
            .map(|(i, _)| i)
            .collect();
        match cands.as_slice() {
            [] => {}
            [i] => {
                picks[e] = Some(Pick::Local(*i));
                taken_local.insert(*i);
            }
            more => {
                let shown: Vec<Nic> = more.iter().map(|i| local[*i].clone()).collect();
                return Err(MatchError::Ambiguous {
                    entry: e,
                    mac_shown: n.mac.map(|m| format!("{m} ")).unwrap_or_default(),
                    pci_id: n.pci_id,
                    count: more.len(),
                    nics: list(&shown),
                });
            }
        }
    }
    Ok(picks)
}

fn by_mac(
    e: usize,
    n: &GuestNetwork,
    mac: MacAddr,
    nics: &[Nic],
) -> Result<Option<usize>, MatchError> {
    let with: Vec<usize> = nics
        .iter()
        .enumerate()
        .filter(|(_, nic)| nic.link.mac == Some(mac))
        .map(|(i, _)| i)
        .collect();
    if with.len() <= 1 {
        return Ok(with.first().copied());
    }
    // A VLAN or macvlan child shares its parent's MAC: prefer the PCI device.
    let pci: Vec<usize> = with
        .iter()
        .copied()
        .filter(|i| nics[*i].pci.as_ref().and_then(|p| p.id) == Some(n.pci_id))
        .collect();
    if let [one] = pci.as_slice() {
        return Ok(Some(*one));
    }
    let shown: Vec<Nic> = with.iter().map(|i| nics[*i].clone()).collect();
    Err(MatchError::SameMac {
        entry: e,
        mac,
        count: with.len(),
        nics: list(&shown),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kata_sriov_guest::parse_guest_networks;
    use std::os::unix::fs::symlink;

    fn nic(index: u32, name: &str, mac: &str, pci: Option<(&str, &str)>, addrs: &[&str]) -> Nic {
        Nic {
            link: Link {
                index,
                name: name.to_owned(),
                mac: Some(mac.parse().unwrap()),
                mtu: 1500,
                up: false,
            },
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pci: pci.map(|(a, id)| PciInfo {
                addr: a.parse().unwrap(),
                id: Some(id.parse().unwrap()),
                driver: Some("igbvf".into()),
            }),
        }
    }

    fn nets(s: &str) -> Vec<GuestNetwork> {
        parse_guest_networks(s).unwrap()
    }

    #[test]
    fn by_mac_first_then_pci() {
        let local = vec![
            nic(1, "lo", "00:00:00:00:00:00", None, &[]),
            nic(
                2,
                "eth0",
                "02:00:00:00:00:09",
                Some(("0000:00:03.0", "1af4:1041")),
                &["10.88.0.2/16"],
            ),
            nic(
                3,
                "eth1",
                "02:00:00:00:00:01",
                Some(("0000:00:05.0", "8086:10ca")),
                &[],
            ),
            nic(
                4,
                "eth2",
                "7e:aa:00:00:00:02",
                Some(("0000:00:06.0", "8086:10ca")),
                &[],
            ),
        ];
        let e = nets(
            r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:10ca"},
                {"mac":"02:00:00:00:00:02","pci_id":"8086:10ca","ips":["10.1.0.2/24"]}]"#,
        );
        let p = resolve(&e, &local, None).unwrap();
        assert_eq!(p, vec![Some(Pick::Local(2)), Some(Pick::Local(3))]);
    }

    #[test]
    fn pci_fallback_needs_exactly_one() {
        let local = vec![
            nic(
                3,
                "eth1",
                "7e:00:00:00:00:01",
                Some(("0000:00:05.0", "8086:10ca")),
                &[],
            ),
            nic(
                4,
                "eth2",
                "7e:00:00:00:00:02",
                Some(("0000:00:06.0", "8086:10ca")),
                &[],
            ),
        ];
        let e = nets(r#"[{"pci_id":"8086:10ca","name":"net1"}]"#);
        let err = resolve(&e, &local, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("2 unconfigured NICs have PCI ID 8086:10ca"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "eth1 (mac 7e:00:00:00:00:01, pci 0000:00:05.0 [8086:10ca], driver igbvf)"
            ),
            "{msg}"
        );
        // A NIC configured for something else is not a candidate.
        let mut l2 = local.clone();
        l2[1].addrs = vec!["192.168.9.9/24".parse().unwrap()];
        assert_eq!(resolve(&e, &l2, None).unwrap(), vec![Some(Pick::Local(0))]);
        // Nothing with that PCI ID: not found (yet).
        let e2 = nets(r#"[{"pci_id":"15b3:101e"}]"#);
        assert_eq!(resolve(&e2, &local, None).unwrap(), vec![None]);
    }

    #[test]
    fn second_run_finds_named_nic() {
        let local = vec![
            nic(
                3,
                "net1",
                "7e:00:00:00:00:01",
                Some(("0000:00:05.0", "8086:10ca")),
                &["10.0.0.5/24"],
            ),
            nic(
                4,
                "eth2",
                "7e:00:00:00:00:02",
                Some(("0000:00:06.0", "8086:10ca")),
                &[],
            ),
        ];
        let e = nets(r#"[{"pci_id":"8086:10ca","name":"net1","ips":["10.0.0.5/24"]}]"#);
        assert_eq!(
            resolve(&e, &local, None).unwrap(),
            vec![Some(Pick::Local(0))]
        );
    }

    #[test]
    fn target_namespace_first() {
        let local = vec![nic(
            3,
            "eth1",
            "02:00:00:00:00:01",
            Some(("0000:00:05.0", "8086:10ca")),
            &[],
        )];
        let target = vec![nic(7, "net1", "02:00:00:00:00:01", None, &[])];
        let e = nets(r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:10ca","name":"net1"}]"#);
        assert_eq!(
            resolve(&e, &local, Some(&target)).unwrap(),
            vec![Some(Pick::Target(0))]
        );
        assert_eq!(
            resolve(&e, &local, Some(&[])).unwrap(),
            vec![Some(Pick::Local(0))]
        );
        let e = nets(r#"[{"pci_id":"8086:10ca","name":"net1"}]"#);
        assert_eq!(
            resolve(&e, &[], Some(&target)).unwrap(),
            vec![Some(Pick::Target(0))]
        );
    }

    #[test]
    fn same_mac_twice() {
        let local = vec![
            nic(3, "eth1", "02:00:00:00:00:01", None, &[]),
            nic(4, "eth1.5", "02:00:00:00:00:01", None, &[]),
        ];
        let e = nets(r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:10ca"}]"#);
        assert!(matches!(
            resolve(&e, &local, None),
            Err(MatchError::SameMac { count: 2, .. })
        ));
        let mut l2 = local.clone();
        l2[0].pci = nic(
            0,
            "x",
            "02:00:00:00:00:01",
            Some(("0000:00:05.0", "8086:10ca")),
            &[],
        )
        .pci;
        assert_eq!(resolve(&e, &l2, None).unwrap(), vec![Some(Pick::Local(0))]);
    }

    #[test]
    fn sysfs_pci_info() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let dev = r.join("devices/pci0000:00/0000:00:05.0");
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(r.join("bus/pci/drivers/igbvf")).unwrap();
        fs::write(dev.join("vendor"), "0x8086\n").unwrap();
        fs::write(dev.join("device"), "0x10ca\n").unwrap();
        symlink("../../../bus/pci/drivers/igbvf", dev.join("driver")).unwrap();
        let net = r.join("class/net/eth1");
        fs::create_dir_all(&net).unwrap();
        fs::write(net.join("ifindex"), "3\n").unwrap();
        symlink(
            "../../../devices/pci0000:00/0000:00:05.0",
            net.join("device"),
        )
        .unwrap();
        let p = pci_info(r, "eth1", 3).unwrap();
        assert_eq!(p.addr.to_string(), "0000:00:05.0");
        assert_eq!(p.id.unwrap().to_string(), "8086:10ca");
        assert_eq!(p.driver.as_deref(), Some("igbvf"));
        // Another namespace's link of the same name.
        assert_eq!(pci_info(r, "eth1", 4), None);
        assert_eq!(pci_info(r, "eth9", 3), None);
        assert_eq!(pci_info(r, "..", 3), None);
        // Not a PCI device (virtio's child device).
        let v = r.join("class/net/eth0");
        fs::create_dir_all(&v).unwrap();
        fs::write(v.join("ifindex"), "2\n").unwrap();
        fs::create_dir_all(r.join("devices/virtio0")).unwrap();
        symlink("../../../devices/virtio0", v.join("device")).unwrap();
        assert_eq!(pci_info(r, "eth0", 2), None);
    }
}
