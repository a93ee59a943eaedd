//! The one I/O error type ([`IoError`]: operation, path, and the OS error
//! as its source) and [`chain`], shared with the guest library.

pub use kata_sriov_guest::{chain, IoError};
