//! A small blocking `NETLINK_ROUTE` (rtnetlink) client shared by the
//! project: link, address, route and VF configuration are all built on
//! [`Rtnl::request`].
//!
//! Kernel interface: one `AF_NETLINK`/`NETLINK_ROUTE` socket per [`Rtnl`],
//! opened in the network namespace of the calling thread at [`Rtnl::open`]
//! time (it stays bound to that namespace afterwards, whatever the thread
//! does later). Requests and replies use the `netlink-packet-route` message
//! types. Every request carries a fresh sequence number and replies with
//! another number (left over from an earlier request that timed out) are
//! skipped. Non-dump requests always ask for an ACK (`NLM_F_ACK`) and are
//! answered when the kernel's `NLMSG_ERROR` arrives (code 0 = success);
//! dump requests (`NLM_F_DUMP`) collect the multipart answer until
//! `NLMSG_DONE`. The socket has a receive timeout (`SO_RCVTIMEO`,
//! [`Rtnl::DEFAULT_TIMEOUT`] unless told otherwise), so no request waits forever.
//! Extended ACKs (`NETLINK_EXT_ACK`) are turned on: the kernel's own error
//! text, when it gives one, is part of the error.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlaBuffer, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

/// `NLM_F_CAPPED` / `NLM_F_ACK_TLVS` on an `NLMSG_ERROR` (not exported by
/// netlink-packet-core under these names on every version).
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ACK's human readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// Errors of the rtnetlink client. Each says which request failed; the
/// message includes the underlying cause (no separate `source()` chain, so
/// nothing is printed twice).
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("opening a NETLINK_ROUTE socket: {0}")]
    Open(io::Error),
    #[error("{request}: sending to the kernel: {cause}")]
    Send { request: String, cause: io::Error },
    #[error("{request}: receiving the kernel's answer: {cause}")]
    Recv { request: String, cause: io::Error },
    #[error("{request}: no answer from the kernel within {timeout:?}")]
    Timeout { request: String, timeout: Duration },
    #[error("{request}: the kernel answered {}{}", errno_text(*errno), ext_text(message))]
    Kernel {
        request: String,
        /// Positive errno value (`EOPNOTSUPP`, `ENODEV`, ...).
        errno: i32,
        /// The extended ACK message, when the kernel sent one.
        message: Option<String>,
    },
    #[error("{request}: cannot decode the kernel's answer: {cause}")]
    Decode { request: String, cause: DecodeError },
    #[error("{request}: the kernel's answer is malformed: {reason}")]
    Malformed { request: String, reason: String },
    #[error("{request}: the kernel's receive buffer overran (answer lost)")]
    Overrun { request: String },
}

fn errno_text(errno: i32) -> String {
    format!(
        "{} ({})",
        io::Error::from_raw_os_error(errno),
        errno_name(errno)
    )
}

fn ext_text(message: &Option<String>) -> String {
    match message {
        Some(m) => format!(": {m}"),
        None => String::new(),
    }
}

/// The symbolic name of the errno values netlink users meet most.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ERANGE => "ERANGE",
        libc::ENOSPC => "ENOSPC",
        libc::ENOBUFS => "ENOBUFS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETDOWN => "ENETDOWN",
        libc::ESRCH => "ESRCH",
        libc::E2BIG => "E2BIG",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

impl RtnlError {
    /// The errno behind the failure: the kernel's answer, or the socket
    /// call's error. `None` for timeouts and decoding errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { errno, .. } => Some(*errno),
            RtnlError::Open(e)
            | RtnlError::Send { cause: e, .. }
            | RtnlError::Recv { cause: e, .. } => e.raw_os_error(),
            RtnlError::Timeout { .. }
            | RtnlError::Decode { .. }
            | RtnlError::Malformed { .. }
            | RtnlError::Overrun { .. } => None,
        }
    }

    /// Whether the kernel did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RtnlError::Timeout { .. })
    }

    /// The kernel's extended ACK text, if any.
    pub fn kernel_message(&self) -> Option<&str> {
        match self {
            RtnlError::Kernel { message, .. } => message.as_deref(),
            _ => None,
        }
    }
}

/// One message of the kernel's answer, undecoded: for callers that need the
/// raw attribute bytes (the crate's decoding loses some information, e.g.
/// "not reported" VF fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// `nlmsg_type`, e.g. `RTM_NEWLINK`.
    pub message_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// The bytes after the `nlmsghdr` (e.g. `ifinfomsg` + attributes).
    pub payload: Vec<u8>,
}

impl RawReply {
    /// Decodes this reply as a route netlink message.
    pub fn decode(&self) -> Result<RouteNetlinkMessage, DecodeError> {
        let mut header = NetlinkHeader::default();
        header.message_type = self.message_type;
        header.flags = self.flags;
        header.length = (NLMSG_HDRLEN + self.payload.len()) as u32;
        RouteNetlinkMessage::deserialize(&header, &self.payload)
    }
}

/// A blocking rtnetlink socket. `Send + Sync`: concurrent requests from
/// several threads are serialized on the socket.
pub struct Rtnl {
    socket: Mutex<Socket>,
    seq: AtomicU32,
    timeout: Duration,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Rtnl {
    /// How long one receive may wait for the kernel before the request
    /// fails, unless told otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Opens a socket in the calling thread's network namespace, with
    /// [`Rtnl::DEFAULT_TIMEOUT`].
    pub fn open() -> Result<Rtnl, RtnlError> {
        Rtnl::open_with_timeout(Rtnl::DEFAULT_TIMEOUT)
    }

    /// Opens a socket whose every receive waits at most `timeout`.
    pub fn open_with_timeout(timeout: Duration) -> Result<Rtnl, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Open)?;
        socket.bind_auto().map_err(RtnlError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Open)?;
        // Failing to turn on extended ACKs only costs the kernel's error
        // text (old kernels); ignore it.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let tv = TimeVal::new(
            timeout.as_secs() as _,
            timeout
                .subsec_micros()
                .max(if timeout.is_zero() { 1 } else { 0 }) as _,
        );
        setsockopt(&socket, ReceiveTimeout, &tv).map_err(|e| RtnlError::Open(e.into()))?;
        // Start from a value that differs between sockets, to make stale
        // replies on reused ports even less likely to match.
        let start = std::process::id().wrapping_mul(0x9e37_79b9) | 1;
        Ok(Rtnl {
            socket: Mutex::new(socket),
            seq: AtomicU32::new(start),
            timeout,
        })
    }

    /// The receive timeout of this socket.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `msg` with `flags` (`NLM_F_REQUEST` is always added; non-dump
    /// requests always get `NLM_F_ACK`) and returns the decoded data
    /// messages of the answer: all parts of a dump, or what a get returns,
    /// or nothing for a successful set/new/del.
    pub fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        let what = describe(&msg);
        let raw = self.request_raw(msg, flags)?;
        raw.iter()
            .map(|r| {
                r.decode().map_err(|cause| RtnlError::Decode {
                    request: what.clone(),
                    cause,
                })
            })
            .collect()
    }

    /// As [`Rtnl::request`], but returns the answer's data messages undecoded.
    pub fn request_raw(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RawReply>, RtnlError> {
        let what = describe(&msg);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut flags = flags | NLM_F_REQUEST;
        if !dump {
            flags |= NLM_F_ACK;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);

        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        socket.send(&buf, 0).map_err(|cause| RtnlError::Send {
            request: what.clone(),
            cause,
        })?;

        let mut out = Vec::new();
        loop {
            let datagram = self.recv_datagram(&socket, &what)?;
            if let Some(done) = parse_datagram(&datagram, seq, &what, &mut out)? {
                return done.map(|()| out);
            }
        }
    }

    /// Receives one whole datagram, however large.
    fn recv_datagram(&self, socket: &Socket, what: &str) -> Result<Vec<u8>, RtnlError> {
        let map = |cause: io::Error| {
            if matches!(
                cause.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                RtnlError::Timeout {
                    request: what.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                RtnlError::Recv {
                    request: what.to_owned(),
                    cause,
                }
            }
        };
        loop {
            let mut probe: Vec<u8> = Vec::with_capacity(64);
            let len = match socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(map(e)),
            };
            let mut buf: Vec<u8> = Vec::with_capacity(len.max(64));
            match socket.recv(&mut buf, 0) {
                Ok(_) => return Ok(buf),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(map(e)),
            }
        }
    }

    /// The index of the link called `name`, via `RTM_GETLINK` by name.
    /// A missing link gives the kernel's `ENODEV`.
    pub fn link_index(&self, name: &str) -> Result<u32, RtnlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let what = format!("RTM_GETLINK for link {name:?}");
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), 0)?;
        replies
            .iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or(RtnlError::Malformed {
                request: what,
                reason: "no RTM_NEWLINK in the answer".to_owned(),
            })
    }

    /// Sets `IFF_UP` on the link with this index (`ip link set up`).
    pub fn set_link_up(&self, index: u32) -> Result<(), RtnlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(|_| ())
    }
}

/// Handles one received datagram: appends the data messages of request
/// `seq` to `out`; returns `Some(Ok(()))` when the answer is complete
/// (the ACK of a non-dump request, `NLMSG_DONE` of a dump).
fn parse_datagram(
    datagram: &[u8],
    seq: u32,
    what: &str,
    out: &mut Vec<RawReply>,
) -> Result<Option<Result<(), RtnlError>>, RtnlError> {
    let malformed = |reason: String| RtnlError::Malformed {
        request: what.to_owned(),
        reason,
    };
    let mut offset = 0usize;
    while offset + NLMSG_HDRLEN <= datagram.len() {
        let rest = datagram.get(offset..).unwrap_or_default();
        let nl = NetlinkBuffer::new_checked(rest)
            .map_err(|e| malformed(format!("bad netlink header at offset {offset}: {e}")))?;
        let len = nl.length() as usize;
        let msg_type = nl.message_type();
        let msg_flags = nl.flags();
        let msg_seq = nl.sequence_number();
        let payload = nl.payload();
        offset += (len + 3) & !3;
        if msg_seq != seq {
            // A late answer to an earlier request that timed out.
            continue;
        }
        match msg_type {
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => {
                return Err(RtnlError::Overrun {
                    request: what.to_owned(),
                })
            }
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or_else(|| malformed("NLMSG_ERROR shorter than 4 bytes".to_owned()))?;
                if code == 0 {
                    return Ok(Some(Ok(())));
                }
                return Err(RtnlError::Kernel {
                    request: what.to_owned(),
                    errno: code.saturating_neg(),
                    message: extack_message(payload, msg_flags),
                });
            }
            NLMSG_DONE => {
                let code = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .unwrap_or(0);
                if code < 0 {
                    return Err(RtnlError::Kernel {
                        request: what.to_owned(),
                        errno: code.saturating_neg(),
                        message: None,
                    });
                }
                return Ok(Some(Ok(())));
            }
            _ => {
                out.push(RawReply {
                    message_type: msg_type,
                    flags: msg_flags,
                    payload: payload.to_vec(),
                });
            }
        }
    }
    Ok(None)
}

/// The `NLMSGERR_ATTR_MSG` text of an `NLMSG_ERROR` payload, if any.
fn extack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // payload: i32 error, the original nlmsghdr (and, unless capped, the
    // original payload), then the TLVs.
    let orig_len = payload
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)? as usize;
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        (orig_len + 3) & !3
    };
    let tlvs = payload.get(4 + skip..)?;
    NlasIterator::new(tlvs)
        .filter_map(Result::ok)
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let v = nla.value();
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(v.get(..end).unwrap_or_default()).into_owned()
        })
}

/// A short description of a request for error messages, e.g.
/// `RTM_SETLINK on link index 3`.
pub fn describe(msg: &RouteNetlinkMessage) -> String {
    use RouteNetlinkMessage as M;
    let link = |name: &str, l: &LinkMessage| {
        let ifname = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        match (l.header.index, ifname) {
            (0, Some(n)) => format!("{name} for link {n:?}"),
            (0, None) => name.to_owned(),
            (i, _) => format!("{name} on link index {i}"),
        }
    };
    match msg {
        M::NewLink(l) => link("RTM_NEWLINK", l),
        M::DelLink(l) => link("RTM_DELLINK", l),
        M::GetLink(l) => link("RTM_GETLINK", l),
        M::SetLink(l) => link("RTM_SETLINK", l),
        M::NewAddress(a) => format!("RTM_NEWADDR on link index {}", a.header.index),
        M::DelAddress(a) => format!("RTM_DELADDR on link index {}", a.header.index),
        M::GetAddress(_) => "RTM_GETADDR".to_owned(),
        M::NewRoute(_) => "RTM_NEWROUTE".to_owned(),
        M::DelRoute(_) => "RTM_DELROUTE".to_owned(),
        M::GetRoute(_) => "RTM_GETROUTE".to_owned(),
        M::NewNeighbour(_) => "RTM_NEWNEIGH".to_owned(),
        M::DelNeighbour(_) => "RTM_DELNEIGH".to_owned(),
        M::GetNeighbour(_) => "RTM_GETNEIGH".to_owned(),
        M::NewRule(_) => "RTM_NEWRULE".to_owned(),
        M::DelRule(_) => "RTM_DELRULE".to_owned(),
        M::GetRule(_) => "RTM_GETRULE".to_owned(),
        other => format!("rtnetlink request type {}", other_type(other)),
    }
}

fn other_type(msg: &RouteNetlinkMessage) -> u16 {
    msg.message_type()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;

    fn nlmsg(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&msg_type.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() & 3 != 0 {
            v.push(0);
        }
        v
    }

    fn error_payload(code: i32, ext: Option<&str>) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        // the capped original header
        p.extend_from_slice(&nlmsg(19, 5, 7, &[]));
        if let Some(m) = ext {
            let mut value = m.as_bytes().to_vec();
            value.push(0);
            let nla_len = 4 + value.len();
            p.extend_from_slice(&(nla_len as u16).to_ne_bytes());
            p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            p.extend_from_slice(&value);
            while p.len() & 3 != 0 {
                p.push(0);
            }
        }
        p
    }

    #[test]
    fn ack_ends_a_request_and_data_before_it_is_kept() {
        let mut d = nlmsg(16, 0, 7, &[0u8; 16]);
        d.extend(nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 7, &error_payload(0, None)));
        let mut out = Vec::new();
        let r = parse_datagram(&d, 7, "req", &mut out).unwrap();
        assert!(matches!(r, Some(Ok(()))));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message_type, 16);
        assert_eq!(out[0].payload, vec![0u8; 16]);
    }

    #[test]
    fn kernel_error_carries_errno_and_extack_text() {
        let d = nlmsg(
            NLMSG_ERROR,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            9,
            &error_payload(-libc::EOPNOTSUPP, Some("VF link state not supported")),
        );
        let mut out = Vec::new();
        let err = parse_datagram(&d, 9, "RTM_SETLINK on link index 3", &mut out).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
        assert_eq!(err.kernel_message(), Some("VF link state not supported"));
        let text = err.to_string();
        assert!(text.starts_with("RTM_SETLINK on link index 3: "), "{text}");
        assert!(text.contains("EOPNOTSUPP"), "{text}");
        assert!(text.contains("VF link state not supported"), "{text}");
    }

    #[test]
    fn stale_sequence_numbers_are_skipped() {
        let mut d = nlmsg(NLMSG_ERROR, 0, 6, &error_payload(-libc::EBUSY, None));
        d.extend(nlmsg(16, 0, 6, &[1u8; 16]));
        let mut out = Vec::new();
        let r = parse_datagram(&d, 7, "req", &mut out).unwrap();
        assert!(r.is_none());
        assert!(out.is_empty());
    }

    #[test]
    fn dump_collects_parts_until_done() {
        let mut d = nlmsg(16, NLM_F_MULTIPART, 3, &[0u8; 16]);
        d.extend(nlmsg(16, NLM_F_MULTIPART, 3, &[0u8; 16]));
        let mut out = Vec::new();
        assert!(parse_datagram(&d, 3, "dump", &mut out).unwrap().is_none());
        let done = nlmsg(NLMSG_DONE, NLM_F_MULTIPART, 3, &0i32.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&done, 3, "dump", &mut out).unwrap(),
            Some(Ok(()))
        ));
        assert_eq!(out.len(), 2);
        let bad_done = nlmsg(
            NLMSG_DONE,
            NLM_F_MULTIPART,
            3,
            &(-libc::EINTR).to_ne_bytes(),
        );
        let err = parse_datagram(&bad_done, 3, "dump", &mut out).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINTR));
    }

    #[test]
    fn receive_times_out_instead_of_hanging() {
        // A real socket with nothing to read.
        let r = Rtnl::open_with_timeout(Duration::from_millis(200)).unwrap();
        let socket = r.socket.lock().unwrap();
        let start = std::time::Instant::now();
        let err = r.recv_datagram(&socket, "test request").unwrap_err();
        let took = start.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(err.errno(), None);
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(
            err.to_string(),
            "test request: no answer from the kernel within 200ms"
        );
    }

    #[test]
    fn truncated_header_is_malformed_not_a_panic() {
        let mut d = nlmsg(16, 0, 3, &[0u8; 16]);
        // claims 200 bytes
        d[0..4].copy_from_slice(&200u32.to_ne_bytes());
        let mut out = Vec::new();
        let err = parse_datagram(&d, 3, "req", &mut out).unwrap_err();
        assert!(matches!(err, RtnlError::Malformed { .. }), "{err}");
    }
}
