//! The guest-side network description: the JSON array carried in the
//! `io.kata-sriov.guest-networks` annotation (and on a VM's kernel command
//! line as `kata_sriov.networks=<base64>`). The host side writes it, the
//! guest helper (`kata-sriov-guest`) reads exactly this. Touches no file.
//!
//! ```json
//! [{"mac":"02:..","pci_id":"8086:10ca","name":"net1",
//!   "ips":["10.0.0.5/24","fd00::5/64"],"gateway":"10.0.0.1",
//!   "routes":[{"dst":"10.1.0.0/16","via":"10.0.0.1"}],"mtu":1500}]
//! ```
//!
//! `pci_id` is always present; `mac` whenever the host knows it; the rest is
//! optional. Unknown keys and duplicate keys are errors.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::{IfName, MacAddr, ParseError, PciId};

/// Annotation carrying the guest networks.
pub const GUEST_ANNOTATION: &str = "io.kata-sriov.guest-networks";
/// Kernel command line key for VMs without Kata.
pub const CMDLINE_KEY: &str = "kata_sriov.networks";
/// Largest guest description accepted, in bytes.
pub const MAX_GUEST_JSON: usize = 64 * 1024;
/// Most addresses or routes one interface may carry.
pub const MAX_LIST: usize = 64;

/// An address with its prefix length, `10.0.0.5/24` or `fd00::5/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpCidr {
    pub fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }
    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }
    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && IpCidr {
                addr: ip,
                prefix: self.prefix,
            }
            .network()
                == self.network()
    }
}

impl FromStr for IpCidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("CIDR", s, reason);
        if s.len() > 64 {
            return Err(err("too long"));
        }
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| err("not an IP address"))?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("prefix must be a number"));
        }
        let prefix: u8 = p.parse().map_err(|_| err("prefix must be a number"))?;
        if prefix > IpCidr::max_prefix(addr) {
            return Err(err("prefix too long for the address family"));
        }
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

crate::serde_via_str!(IpCidr);

/// A route through the interface: to `dst`, optionally via a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub dst: IpCidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
}

/// L3 settings for one interface, as a container may request them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L3Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<IfName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpCidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Why an L3 description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L3Error {
    #[error("{field}: more than {MAX_LIST} entries")]
    TooMany { field: &'static str },
    #[error("mtu {0}: must be 68 to 65535 (1280 or more with IPv6 addresses)")]
    Mtu(u32),
    #[error("ips: {0} is a network or unspecified address, not a host address")]
    NotHost(IpCidr),
    #[error("ips: {0} is listed twice")]
    DuplicateIp(IpCidr),
    #[error("gateway {0}: not a unicast host address")]
    BadGateway(IpAddr),
    #[error("gateway {0}: no address of this family in ips is on a network that contains it")]
    GatewayUnreachable(IpAddr),
    #[error("routes: via {via} is not the same address family as dst {dst}")]
    RouteFamily { dst: IpCidr, via: IpAddr },
    #[error("routes: dst {0} has host bits set; write the network address")]
    RouteHostBits(IpCidr),
    #[error("routes: via {0} is not a unicast host address")]
    BadVia(IpAddr),
    #[error("routes: {dst} via {via}: no address in ips is on a network that contains {via}")]
    ViaUnreachable { dst: IpCidr, via: IpAddr },
}

fn unicast_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
    }
}

impl L3Config {
    /// Checks everything that does not depend on the host: sizes, address
    /// families, gateway reachability, MTU range.
    pub fn validate(&self) -> Result<(), L3Error> {
        if self.ips.len() > MAX_LIST {
            return Err(L3Error::TooMany { field: "ips" });
        }
        if self.routes.len() > MAX_LIST {
            return Err(L3Error::TooMany { field: "routes" });
        }
        for (i, ip) in self.ips.iter().enumerate() {
            let single = ip.prefix == IpCidr::max_prefix(ip.addr);
            let broadcast_v4 = match ip.addr {
                IpAddr::V4(a) => {
                    ip.prefix < 31 && {
                        let host = u32::MAX.checked_shr(u32::from(ip.prefix)).unwrap_or(0);
                        u32::from(a) & host == host
                    }
                }
                IpAddr::V6(_) => false,
            };
            let network_addr = !single && ip.prefix < 31 && ip.network() == ip.addr;
            if !unicast_host(ip.addr) || network_addr || broadcast_v4 {
                return Err(L3Error::NotHost(*ip));
            }
            if self.ips[..i].iter().any(|o| o.addr == ip.addr) {
                return Err(L3Error::DuplicateIp(*ip));
            }
        }
        if let Some(mtu) = self.mtu {
            let min = if self.ips.iter().any(|c| c.addr.is_ipv6()) {
                1280
            } else {
                68
            };
            if !(min..=65535).contains(&mtu) {
                return Err(L3Error::Mtu(mtu));
            }
        }
        if let Some(gw) = self.gateway {
            if !unicast_host(gw) {
                return Err(L3Error::BadGateway(gw));
            }
            if !self.ips.iter().any(|c| c.contains(gw)) {
                return Err(L3Error::GatewayUnreachable(gw));
            }
        }
        for r in &self.routes {
            if r.dst.network() != r.dst.addr {
                return Err(L3Error::RouteHostBits(r.dst));
            }
            if let Some(via) = r.via {
                if via.is_ipv4() != r.dst.addr.is_ipv4() {
                    return Err(L3Error::RouteFamily { dst: r.dst, via });
                }
                if !unicast_host(via) {
                    return Err(L3Error::BadVia(via));
                }
                // The kernel refuses a next hop on no network of the NIC,
                // after the name, addresses and link were already set:
                // refuse it here, before anything changes.
                if !self.ips.iter().any(|c| c.contains(via)) {
                    return Err(L3Error::ViaUnreachable { dst: r.dst, via });
                }
            }
        }
        Ok(())
    }
}

/// One VF as the guest helper sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    pub pci_id: PciId,
    #[serde(flatten)]
    pub l3: L3Config,
}

/// Why a guest description was refused.
#[derive(Debug, thiserror::Error)]
pub enum GuestNetError {
    #[error("guest networks: {0} bytes is over the {MAX_GUEST_JSON}-byte limit")]
    TooLarge(usize),
    #[error("guest networks: {0}")]
    Json(serde_json::Error),
    #[error("guest networks: entry {index}: {cause}")]
    Invalid { index: usize, cause: L3Error },
    #[error("guest networks: entry {index}: mac {mac} is zero or multicast")]
    BadMac { index: usize, mac: MacAddr },
    #[error("guest networks: name {0} is used twice")]
    DuplicateName(IfName),
    #[error("guest networks: mac {0} is used twice (one NIC cannot be two entries)")]
    DuplicateMac(MacAddr),
}

// Not `#[from]`: the message already shows it, so it is not a source.
impl From<serde_json::Error> for GuestNetError {
    fn from(e: serde_json::Error) -> Self {
        GuestNetError::Json(e)
    }
}

/// Parses and validates the guest description.
pub fn parse_guest_networks(text: &str) -> Result<Vec<GuestNetwork>, GuestNetError> {
    if text.len() > MAX_GUEST_JSON {
        return Err(GuestNetError::TooLarge(text.len()));
    }
    let nets: Vec<GuestNetwork> = serde_json::from_str(text)?;
    validate_guest_networks(&nets)?;
    Ok(nets)
}

/// The checks of [`parse_guest_networks`] on already-typed values.
pub fn validate_guest_networks(nets: &[GuestNetwork]) -> Result<(), GuestNetError> {
    for (index, n) in nets.iter().enumerate() {
        if let Some(mac) = n.mac {
            if !mac.is_assignable() {
                return Err(GuestNetError::BadMac { index, mac });
            }
        }
        n.l3.validate()
            .map_err(|cause| GuestNetError::Invalid { index, cause })?;
        if let Some(name) = &n.l3.name {
            if nets[..index]
                .iter()
                .any(|o| o.l3.name.as_ref() == Some(name))
            {
                return Err(GuestNetError::DuplicateName(name.clone()));
            }
        }
        if let Some(mac) = n.mac {
            if nets[..index].iter().any(|o| o.mac == Some(mac)) {
                return Err(GuestNetError::DuplicateMac(mac));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:10ca","name":"net1",
        "ips":["10.0.0.5/24","fd00::5/64"],"gateway":"10.0.0.1",
        "routes":[{"dst":"10.1.0.0/16","via":"10.0.0.1"},{"dst":"fd01::/64"}],"mtu":1500}]"#;

    #[test]
    fn unreachable_next_hops_and_shared_macs_are_refused() {
        // issue 19, attack 8: both passed validation and were half applied.
        let via = r#"[{"pci_id":"8086:10ca","ips":["10.0.0.5/24"],
            "routes":[{"dst":"10.1.0.0/16","via":"192.168.9.1"}]}]"#;
        let e = parse_guest_networks(via).unwrap_err().to_string();
        assert!(e.contains("192.168.9.1") && e.contains("no address"), "{e}");
        let no_ips =
            r#"[{"pci_id":"8086:10ca","routes":[{"dst":"10.1.0.0/16","via":"10.0.0.1"}]}]"#;
        assert!(parse_guest_networks(no_ips).is_err());
        let twice = r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:10ca"},
            {"mac":"02:00:00:00:00:01","pci_id":"8086:10ca"}]"#;
        let e = parse_guest_networks(twice).unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn sample_round_trips() {
        let nets = parse_guest_networks(SAMPLE).unwrap();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].l3.ips[1].to_string(), "fd00::5/64");
        let again = serde_json::to_string(&nets).unwrap();
        assert_eq!(parse_guest_networks(&again).unwrap(), nets);
    }

    #[test]
    fn refuses_hostile() {
        let cases = [
            r#"[{"pci_id":"8086:10ca","bogus":1}]"#,
            r#"[{"pci_id":"8086:10ca","pci_id":"8086:10ca"}]"#,
            r#"[{"pci_id":"8086:10ca","ips":["10.0.0.5/33"]}]"#,
            r#"[{"pci_id":"8086:10ca","ips":["10.0.0.0/24"]}]"#,
            r#"[{"pci_id":"8086:10ca","ips":["10.0.0.255/24"]}]"#,
            r#"[{"pci_id":"8086:10ca","ips":["10.0.0.5/24"],"gateway":"10.9.0.1"}]"#,
            r#"[{"pci_id":"8086:10ca","routes":[{"dst":"10.1.0.0/16","via":"fd00::1"}]}]"#,
            r#"[{"pci_id":"8086:10ca","routes":[{"dst":"10.1.2.3/16"}]}]"#,
            r#"[{"pci_id":"8086:10ca","mtu":40}]"#,
            r#"[{"pci_id":"8086:10ca","ips":["fd00::5/64"],"mtu":1000}]"#,
            r#"[{"pci_id":"8086:10ca","mac":"01:00:5e:00:00:01"}]"#,
            r#"[{"pci_id":"8086:10ca","name":"../etc"}]"#,
            r#"[{"pci_id":"8086:10ca","name":"a"},{"pci_id":"8086:10ca","name":"a"}]"#,
            r#"[{"mac":"02:00:00:00:00:01"}]"#,
            r#"{"pci_id":"8086:10ca"}"#,
        ];
        for c in cases {
            assert!(parse_guest_networks(c).is_err(), "{c}");
        }
        let big = format!("[{}]", " ".repeat(MAX_GUEST_JSON));
        assert!(matches!(
            parse_guest_networks(&big),
            Err(GuestNetError::TooLarge(_))
        ));
    }

    #[test]
    fn cidr_math() {
        let c: IpCidr = "10.0.0.5/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.0.0.0");
        assert!(c.contains("10.0.0.1".parse().unwrap()));
        assert!(!c.contains("10.0.1.1".parse().unwrap()));
        let z: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(z.network().to_string(), "0.0.0.0");
        let v6: IpCidr = "fd00::5/64".parse().unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
        for bad in ["10.0.0.1", "10.0.0.1/", "10.0.0.1/+1", "x/1", "::1/129"] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad}");
        }
    }
}
