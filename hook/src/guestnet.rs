//! The guest-side network description (`io.kata-sriov.guest-networks`):
//! owned by the guest library, re-exported here.

pub use kata_sriov_guest::{
    parse_guest_networks, validate_guest_networks, GuestNetError, GuestNetwork, IpCidr, L3Config,
    L3Error, Route, CMDLINE_KEY, GUEST_ANNOTATION, MAX_GUEST_JSON, MAX_LIST,
};
