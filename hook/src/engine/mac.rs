//! MACs for VFs: generated ones (random, locally administered, unicast)
//! that no host interface and no lease uses.

use std::collections::HashSet;
use std::io;

use crate::kernel::random;
use crate::kernel::sysfs::{self, SysfsRoot};
use crate::pci::MacAddr;

/// MACs of the host's network interfaces (`<sysfs>/class/net/*/address`).
pub(crate) fn host_macs(sysfs: &SysfsRoot) -> Vec<MacAddr> {
    let Ok(rd) = std::fs::read_dir(sysfs.path().join("class/net")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            sysfs::read_attr(&e.path().join("address"))
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

/// A random locally administered unicast MAC not in `used`; an error only
/// when the kernel's random source fails.
pub fn generate(used: &HashSet<MacAddr>) -> io::Result<MacAddr> {
    loop {
        let mut b = [0u8; 6];
        random::fill(&mut b)?;
        b[0] = (b[0] & 0xfc) | 0x02;
        let m = MacAddr(b);
        if m.is_assignable() && !used.contains(&m) {
            return Ok(m);
        }
    }
}
