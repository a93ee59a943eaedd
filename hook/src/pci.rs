//! Typed values parsed once at the edge. PCI addresses, PCI IDs, MAC
//! addresses and interface names live in the guest library
//! (`kata-sriov-guest`, shared with the helper in the VM) and are
//! re-exported here; VLAN ids, QoS, VLAN protocols and VF link states are
//! host-only.
//!
//! Every value that ends up in a sysfs path or a netlink message passes
//! through one of these parsers first, so a path-like or malformed string
//! never reaches the kernel. Touches no file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use kata_sriov_guest::{IfName, MacAddr, ParseError, PciAddress, PciId};

/// An 802.1Q VLAN id, 0 (no VLAN) to 4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanId(u16);

impl VlanId {
    pub const NONE: VlanId = VlanId(0);
    pub fn new(v: u32) -> Option<Self> {
        (v <= 4094).then_some(VlanId(v as u16))
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

/// An 802.1p priority, 0 to 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Qos(u8);

impl Qos {
    pub fn new(v: u32) -> Option<Self> {
        (v <= 7).then_some(Qos(v as u8))
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

/// The VLAN tag protocol of a VF's VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VlanProto {
    #[default]
    Dot1Q,
    Dot1Ad,
}

impl VlanProto {
    pub fn ethertype(self) -> u16 {
        match self {
            VlanProto::Dot1Q => 0x8100,
            VlanProto::Dot1Ad => 0x88a8,
        }
    }
    pub fn from_ethertype(t: u16) -> Option<Self> {
        match t {
            0x8100 => Some(VlanProto::Dot1Q),
            0x88a8 => Some(VlanProto::Dot1Ad),
            _ => None,
        }
    }
}

impl FromStr for VlanProto {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s.to_ascii_lowercase().as_str() {
            "802.1q" => Ok(VlanProto::Dot1Q),
            "802.1ad" => Ok(VlanProto::Dot1Ad),
            _ => Err(ParseError::new(
                "VLAN protocol",
                s,
                "expected \"802.1Q\" or \"802.1ad\"",
            )),
        }
    }
}

impl fmt::Display for VlanProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VlanProto::Dot1Q => "802.1Q",
            VlanProto::Dot1Ad => "802.1ad",
        })
    }
}

/// A VF's administrative link state (`IFLA_VF_LINK_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LinkState {
    #[default]
    Auto,
    Enable,
    Disable,
}

impl LinkState {
    pub fn to_kernel(self) -> u32 {
        match self {
            LinkState::Auto => 0,
            LinkState::Enable => 1,
            LinkState::Disable => 2,
        }
    }
    pub fn from_kernel(v: u32) -> Option<Self> {
        match v {
            0 => Some(LinkState::Auto),
            1 => Some(LinkState::Enable),
            2 => Some(LinkState::Disable),
            _ => None,
        }
    }
}

impl FromStr for LinkState {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "auto" => Ok(LinkState::Auto),
            "enable" => Ok(LinkState::Enable),
            "disable" => Ok(LinkState::Disable),
            _ => Err(ParseError::new(
                "link state",
                s,
                "expected \"auto\", \"enable\" or \"disable\"",
            )),
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Auto => "auto",
            LinkState::Enable => "enable",
            LinkState::Disable => "disable",
        })
    }
}

kata_sriov_guest::serde_via_str!(VlanProto, LinkState);

macro_rules! serde_via_int {
    ($($t:ident: $what:literal),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u32(u32::from(self.0))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = u32::deserialize(d)?;
                $t::new(v).ok_or_else(|| serde::de::Error::custom(format!(
                    concat!("invalid ", $what, " {}"), v)))
            }
        }
    )*};
}
serde_via_int!(VlanId: "VLAN id (0-4094)", Qos: "QoS (0-7)");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ints_bounds() {
        assert!(VlanId::new(4094).is_some());
        assert!(VlanId::new(4095).is_none());
        assert!(Qos::new(7).is_some());
        assert!(Qos::new(8).is_none());
        let v: Result<VlanId, _> = serde_json::from_str("4095");
        assert!(v.is_err());
        let v: VlanId = serde_json::from_str("100").unwrap();
        assert_eq!(v.get(), 100);
    }

    #[test]
    fn vlan_proto_and_link_state() {
        assert_eq!("802.1Q".parse::<VlanProto>().unwrap(), VlanProto::Dot1Q);
        assert_eq!("802.1AD".parse::<VlanProto>().unwrap(), VlanProto::Dot1Ad);
        assert!("8021q".parse::<VlanProto>().is_err());
        assert_eq!(VlanProto::from_ethertype(0x88a8), Some(VlanProto::Dot1Ad));
        for s in ["auto", "enable", "disable"] {
            let l: LinkState = s.parse().unwrap();
            assert_eq!(LinkState::from_kernel(l.to_kernel()), Some(l));
            assert_eq!(l.to_string(), s);
        }
    }
}
