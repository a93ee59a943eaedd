//! MACs for VFs: generated ones (random, locally administered, unicast)
//! and the checks that keep them unique.
//!
//! A generated MAC is checked, exactly, against:
//! 1. every lease's MAC (the lease set the claim reads under the host-wide
//!    lock, so two claims never hand out the same MAC);
//! 2. every MAC on the VF's embedded switch as the PF reports it: the PF's
//!    own address and each VF's MAC (one `RTM_GETLINK` of the PF, the same
//!    message that reads the VF's original settings, [`crate::kernel::netlink::PfView`]);
//! 3. the interfaces stacked with the PF on this host ([`stacked_macs`]):
//!    its uppers (VLAN devices, macvlans, a bond or bridge it is a port of)
//!    and, when it has a master, that master's other ports.
//!
//! Why this is enough: a MAC has to be unique on its Ethernet segment. A
//! VF's frames reach the PF's embedded switch (the PF and its sibling VFs,
//! 2.), the wire behind the PF, and on this host only what is bridged,
//! bonded or stacked onto the PF (3.). Every other interface of the host
//! (veths, other NICs and their VFs, bridges without the PF) is another
//! segment, where an equal MAC breaks nothing; and a random 46-bit MAC
//! equals one of n other MACs with probability n/2^46 (64,000 interfaces:
//! 1 in 10^9). So the check costs a constant number of reads, not one read
//! per host interface (there is no kernel lookup by MAC, and a full scan
//! grew to 0.16 s per claim at 64,000 VFs).
//!
//! A MAC a container *asks for* ([`crate::policy::config::MacPolicy::Request`])
//! is hostile input, not random: it is checked against every interface of
//! the host ([`host_macs`]) as well.

use std::collections::HashSet;
use std::io;

use crate::kernel::random;
use crate::kernel::sysfs::{self, SysfsRoot};
use crate::pci::{IfName, MacAddr};

/// MACs of the host's network interfaces (`<sysfs>/class/net/*/address`):
/// one read per interface.
pub(crate) fn host_macs(sysfs: &SysfsRoot) -> Vec<MacAddr> {
    let Ok(rd) = std::fs::read_dir(sysfs.path().join("class/net")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| netdev_mac(sysfs, &e.file_name().to_string_lossy()))
        .collect()
}

fn netdev_mac(sysfs: &SysfsRoot, name: &str) -> Option<MacAddr> {
    sysfs::read_attr(&sysfs.path().join("class/net").join(name).join("address"))
        .ok()?
        .parse()
        .ok()
}

/// Names of the `upper_*`/`lower_*` links in a netdev's sysfs directory.
fn linked(sysfs: &SysfsRoot, name: &str, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(sysfs.path().join("class/net").join(name)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(prefix)
                .map(str::to_owned)
        })
        .collect()
}

/// MACs of the interfaces stacked with PF netdev `pf` on this host: the
/// PF's uppers, its master (`master` link) and the master's ports. A
/// handful of reads whatever the number of VFs or host interfaces.
pub(crate) fn stacked_macs(sysfs: &SysfsRoot, pf: &IfName) -> Vec<MacAddr> {
    let mut names = linked(sysfs, pf.as_str(), "upper_");
    let master = std::fs::read_link(
        sysfs
            .path()
            .join("class/net")
            .join(pf.as_str())
            .join("master"),
    )
    .ok()
    .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_owned));
    if let Some(m) = master {
        names.extend(linked(sysfs, &m, "lower_"));
        names.push(m);
    }
    names.sort();
    names.dedup();
    names
        .iter()
        .filter(|n| n.as_str() != pf.as_str())
        .filter_map(|n| netdev_mac(sysfs, n))
        .collect()
}

/// A random locally administered unicast MAC for which `in_use` is false;
/// an error only when the kernel's random source fails.
pub fn generate(in_use: impl Fn(&MacAddr) -> bool) -> io::Result<MacAddr> {
    loop {
        let mut b = [0u8; 6];
        random::fill(&mut b)?;
        b[0] = (b[0] & 0xfc) | 0x02;
        let m = MacAddr(b);
        if m.is_assignable() && !in_use(&m) {
            return Ok(m);
        }
    }
}

/// [`generate`] avoiding every MAC of `used` and of `also`.
pub fn generate_avoiding(used: &HashSet<MacAddr>, also: &[MacAddr]) -> io::Result<MacAddr> {
    generate(|m| used.contains(m) || also.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDevice, FakeSysfs};

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn stacked_macs_are_the_uppers_the_master_and_its_ports_not_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path());
        let pf = fake.add_device(FakeDevice::endpoint("0000:01:00.0"));
        fake.add_netdev(pf, "ens1f0");
        let other = fake.add_device(FakeDevice::endpoint("0000:02:00.0"));
        fake.add_netdev(other, "ens2f0");
        for (n, m) in [
            ("ens1f0", "02:00:00:00:00:01"),
            ("ens2f0", "02:00:00:00:00:02"),
            ("br0", "02:00:00:00:00:03"),
            ("ens1f0.100", "02:00:00:00:00:04"),
            ("veth0", "02:00:00:00:00:05"),
        ] {
            fake.write(&format!("class/net/{n}/address"), &format!("{m}\n"));
        }
        fake.relink("class/net/ens1f0/master", "../br0");
        fake.relink("class/net/br0/lower_ens1f0", "../ens1f0");
        fake.relink("class/net/br0/lower_ens2f0", "../ens2f0");
        fake.relink("class/net/ens1f0/upper_br0", "../br0");
        fake.relink("class/net/ens1f0/upper_ens1f0.100", "../ens1f0.100");
        let mut got = stacked_macs(&fake.root(), &"ens1f0".parse().unwrap());
        got.sort();
        assert_eq!(
            got,
            vec![
                mac("02:00:00:00:00:02"),
                mac("02:00:00:00:00:03"),
                mac("02:00:00:00:00:04")
            ]
        );
        // A PF stacked with nothing: nothing to read.
        assert!(stacked_macs(&fake.root(), &"ens2f0".parse().unwrap()).is_empty());
    }

    #[test]
    fn generated_macs_are_local_unicast_and_avoid_what_is_in_use() {
        let used: HashSet<MacAddr> = HashSet::new();
        for _ in 0..100 {
            let m = generate_avoiding(&used, &[]).unwrap();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m} is locally administered unicast");
        }
        // Candidates in use are drawn again: here every MAC whose last
        // byte is not 0x42 counts as in use.
        let m = generate(|m| m.0[5] != 0x42).unwrap();
        assert_eq!(m.0[5], 0x42);
    }
}
