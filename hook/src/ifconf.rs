//! Link configuration over rtnetlink ([`IfConf`]): owned by the guest
//! library, re-exported here.

pub use kata_sriov_guest::{Added, Change, IfConf, IfconfError, Link, LinkAddress, RouteEntry};
