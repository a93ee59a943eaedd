//! The blocking rtnetlink client ([`Rtnl`]): owned by the guest library,
//! re-exported here.

pub use kata_sriov_guest::{errno_name, RawReply, Rtnl, RtnlError};
