//! kata-sriov-guest: the guest side of kata-sriov, as a library.
//!
//! Everything the helper binary running inside the VM needs, and nothing
//! host-only (no configuration files, pools, ledger or CLI):
//!
//! - the typed values parsed once at the edge: [`PciAddress`], [`PciId`],
//!   [`MacAddr`], [`IfName`] and their [`ParseError`];
//! - the guest contract: the `io.kata-sriov.guest-networks` JSON
//!   ([`GUEST_ANNOTATION`], on a kernel command line [`CMDLINE_KEY`]), one
//!   [`GuestNetwork`] per VF with its [`L3Config`], parsed and validated by
//!   [`parse_guest_networks`]. The host engine writes it with the same types;
//! - a small blocking rtnetlink client, [`Rtnl`];
//! - link configuration on it, [`IfConf`], with the one L3 apply sequence
//!   ([`IfConf::apply_l3`]) used by the guest helper and by the host's
//!   netdev mode.
//!
//! The host engine (`kata-sriov`) depends on this crate for all of these.

mod contract;
mod error;
mod ifconf;
mod rtnl;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod types;

pub use contract::{
    parse_guest_networks, validate_guest_networks, GuestNetError, GuestNetwork, IpCidr, L3Config,
    L3Error, Route, CMDLINE_KEY, GUEST_ANNOTATION, MAX_GUEST_JSON, MAX_LIST,
};
pub use error::{chain, IoError};
pub use ifconf::{Added, Change, IfConf, IfconfError, Link, LinkAddress, RouteEntry};
pub use rtnl::{errno_name, RawReply, Rtnl, RtnlError};
pub use types::{IfName, MacAddr, ParseError, PciAddress, PciId};

/// serde, for [`serde_via_str!`] expanded in other crates.
#[doc(hidden)]
pub use serde as __serde;
