//! Typed values parsed once at the edge: PCI addresses, PCI IDs, MAC
//! addresses, interface names.
//!
//! Every value that ends up in a sysfs path or a netlink message passes
//! through one of these parsers first, so a path-like or malformed string
//! (`../../proc/sysrq-trigger`, a trailing newline, a NUL) never reaches the
//! kernel. Touches no file.

use std::fmt;
use std::str::FromStr;

/// Longest input any parser here looks at; longer strings are refused
/// without being scanned further.
const MAX_INPUT: usize = 64;

/// A value that did not parse, with what it was and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct ParseError {
    pub what: &'static str,
    /// The offending input, cut to a readable length.
    pub value: String,
    pub reason: &'static str,
}

impl ParseError {
    pub fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        let mut v: String = value.chars().take(MAX_INPUT).collect();
        if value.chars().count() > MAX_INPUT {
            v.push('…');
        }
        ParseError {
            what,
            value: v,
            reason,
        }
    }
}

fn hex_field(s: &str, min: usize, max: usize) -> Option<u32> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// A PCI function address as the kernel prints it: `DDDD:BB:dd.f`, with a
/// domain of 4 to 8 hex digits. Displayed in lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device <= 0x1f && function <= 7).then_some(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl FromStr for PciAddress {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("PCI address", s, reason);
        if s.len() > 16 {
            return Err(err("too long for DDDD:BB:dd.f"));
        }
        let (dbd, func) = s
            .rsplit_once('.')
            .ok_or_else(|| err("expected DDDD:BB:dd.f"))?;
        let mut parts = dbd.split(':');
        let (Some(dom), Some(bus), Some(dev), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected DDDD:BB:dd.f"));
        };
        let domain = hex_field(dom, 4, 8).ok_or_else(|| err("domain must be 4 to 8 hex digits"))?;
        let bus = hex_field(bus, 2, 2).ok_or_else(|| err("bus must be 2 hex digits"))?;
        let device = hex_field(dev, 2, 2).ok_or_else(|| err("device must be 2 hex digits"))?;
        if func.len() != 1 {
            return Err(err("function must be one digit 0-7"));
        }
        let function = hex_field(func, 1, 1).ok_or_else(|| err("function must be 0-7"))?;
        PciAddress::new(domain, bus as u8, device as u8, function as u8)
            .ok_or_else(|| err("device must be 00-1f and function 0-7"))
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// A PCI vendor:device pair, as in `8086:10ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciId {
    pub vendor: u16,
    pub device: u16,
}

impl FromStr for PciId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::new("PCI ID", s, "expected vvvv:dddd in hex");
        let (v, d) = s.split_once(':').ok_or_else(err)?;
        let vendor = hex_field(v, 4, 4).ok_or_else(err)?;
        let device = hex_field(d, 4, 4).ok_or_else(err)?;
        Ok(PciId {
            vendor: vendor as u16,
            device: device as u16,
        })
    }
}

impl PciId {
    /// Parses sysfs `vendor`/`device` file contents (`0x8086`).
    pub fn from_sysfs(vendor: &str, device: &str) -> Result<Self, ParseError> {
        let one = |s: &str| {
            let t = s.trim_end_matches('\n');
            t.strip_prefix("0x")
                .and_then(|h| hex_field(h, 4, 4))
                .map(|v| v as u16)
                .ok_or_else(|| ParseError::new("PCI ID", s, "expected 0xhhhh"))
        };
        Ok(PciId {
            vendor: one(vendor)?,
            device: one(device)?,
        })
    }
}

impl fmt::Display for PciId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 2 == 2
    }
    /// A unicast, non-zero address: the only kind a VF may be given.
    pub fn is_assignable(&self) -> bool {
        !self.is_zero() && !self.is_multicast()
    }
    /// Parses an assignable MAC, refusing zero and multicast addresses.
    pub fn parse_assignable(s: &str) -> Result<Self, ParseError> {
        let m: MacAddr = s.parse()?;
        if m.is_zero() {
            return Err(ParseError::new("MAC address", s, "the zero address"));
        }
        if m.is_multicast() {
            return Err(ParseError::new(
                "MAC address",
                s,
                "a multicast address (low bit of the first byte set)",
            ));
        }
        Ok(m)
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::new("MAC address", s, "expected xx:xx:xx:xx:xx:xx");
        if s.len() != 17 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, part) in s.split(':').enumerate() {
            let slot = out.get_mut(i).ok_or_else(err)?;
            *slot = hex_field(part, 2, 2).ok_or_else(err)? as u8;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A Linux network interface name: 1 to 15 bytes, no `/`, no white space,
/// no `:`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("interface name", s, reason);
        if s.is_empty() || s.len() > 15 {
            return Err(err("must be 1 to 15 bytes"));
        }
        if s == "." || s == ".." {
            return Err(err("\".\" and \"..\" are not names"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
        {
            return Err(err("only printable ASCII without '/', ':' or spaces"));
        }
        Ok(IfName(s.to_owned()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Implements `Serialize` and `Deserialize` (a JSON string) through
/// `Display` and `FromStr` for each type named: `serde_via_str!(A, B);`.
/// Used for this crate's values and for the host engine's own.
#[macro_export]
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl $crate::__serde::Serialize for $t {
            fn serialize<S: $crate::__serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> $crate::__serde::Deserialize<'de> for $t {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as $crate::__serde::Deserialize>::deserialize(d)?;
                s.parse()
                    .map_err(<D::Error as $crate::__serde::de::Error>::custom)
            }
        }
    )*};
}
crate::serde_via_str!(PciAddress, PciId, MacAddr, IfName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_round_trip() {
        for s in ["0000:3b:02.1", "10000:00:01.0", "ffffffff:ff:1f.7"] {
            let a: PciAddress = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let a: PciAddress = "0000:3B:02.1".parse().unwrap();
        assert_eq!(a.to_string(), "0000:3b:02.1");
    }

    #[test]
    fn pci_address_hostile() {
        let long = "a".repeat(4096);
        for s in [
            "../../proc/sysrq-trigger",
            "0000:3b:02.1/../..",
            "0000:3b:02.1\n",
            "0000:3b:02.1\0",
            "0000:3b:20.1",
            "0000:3b:02.8",
            "000:3b:02.1",
            "000000000:3b:02.1",
            "0000:3b:2.1",
            "0000:3b:02.10",
            "0000:3b:02",
            "0000:00:3b:02.1",
            "+000:3b:02.1",
            "",
            long.as_str(),
        ] {
            let e = s.parse::<PciAddress>().unwrap_err();
            assert!(e.value.len() <= MAX_INPUT + 3, "{e}");
        }
    }

    #[test]
    fn mac_parse_and_classes() {
        let m: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        assert_eq!(m.to_string(), "02:11:22:33:44:55");
        assert!(m.is_locally_administered() && m.is_assignable());
        assert_eq!(
            "02:AA:bb:cc:dd:ee".parse::<MacAddr>().unwrap().to_string(),
            "02:aa:bb:cc:dd:ee"
        );
        assert!(MacAddr::parse_assignable("00:00:00:00:00:00").is_err());
        assert!(MacAddr::parse_assignable("01:00:5e:00:00:01").is_err());
        for bad in [
            "02:11:22:33:44",
            "02:11:22:33:44:55:66",
            "02-11-22-33-44-55",
            "02:11:22:33:44:5g",
            "02:11:22:33:44:55\n",
            "+2:11:22:33:44:55",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pci_id() {
        let id: PciId = "8086:10CA".parse().unwrap();
        assert_eq!(id.to_string(), "8086:10ca");
        assert_eq!(PciId::from_sysfs("0x8086\n", "0x10ca\n").unwrap(), id);
        assert!("8086:10c".parse::<PciId>().is_err());
        assert!(PciId::from_sysfs("8086", "0x10ca").is_err());
    }

    #[test]
    fn ifname() {
        assert!("net1".parse::<IfName>().is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "eth0:1",
            "0123456789abcdef",
            "é",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad}");
        }
    }
}
