//! Link configuration over rtnetlink: list links and addresses; set a
//! link's name, MAC, MTU and up/down state; add IPv4/IPv6 addresses, routes
//! and a default route; move a link into another network namespace (by pid,
//! `IFLA_NET_NS_PID`, or by namespace fd, `IFLA_NET_NS_FD`). Used by the
//! guest helper and by the host's netdev mode.
//!
//! Kernel interfaces: `NETLINK_ROUTE` through [`crate::rtnl::Rtnl`]
//! (`RTM_GETLINK`/`RTM_SETLINK`, `RTM_GETADDR`/`RTM_NEWADDR`,
//! `RTM_GETROUTE`/`RTM_NEWROUTE`, main table only), and `setns(2)` on the
//! calling thread with `/proc/thread-self/ns/net` to open a socket in another
//! namespace ([`IfConf::open_in_netns`]).
//!
//! Everything that adds is idempotent: an address or route that is already
//! there as asked is success (reported as "unchanged"); one that is there
//! differently is an error naming what is there, never silently replaced.

use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::sched::{setns, CloneFlags};

use crate::guestnet::{IpCidr, Route};
use crate::pci::{IfName, MacAddr};
use crate::rtnl::{Rtnl, RtnlError};

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;
/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// A network link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address.
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// `IFF_UP` (administratively up).
    pub up: bool,
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddress {
    pub index: u32,
    pub cidr: IpCidr,
    /// `RT_SCOPE_*`: 0 global, 253 link, 254 host.
    pub scope: u8,
}

impl LinkAddress {
    /// Global scope (not link-local, not host).
    pub fn is_global(&self) -> bool {
        self.scope == 0
    }
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpCidr,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub priority: Option<u32>,
}

impl fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        match self.oif {
            Some(i) => write!(f, " dev index {i}")?,
            None => f.write_str(" (multipath or no device)")?,
        }
        if let Some(p) = self.priority {
            write!(f, " metric {p}")?;
        }
        Ok(())
    }
}

/// Errors of link configuration; each names the link and the setting.
#[derive(Debug, thiserror::Error)]
pub enum IfconfError {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: RtnlError,
    },
    #[error("link index {0}: no such link")]
    NoLink(u32),
    #[error("address {wanted} on link index {index}: the link already has {existing}")]
    AddressConflict {
        index: u32,
        wanted: IpCidr,
        existing: IpCidr,
    },
    #[error("route {wanted}: the main table already has {existing}; not replacing it")]
    RouteConflict { wanted: String, existing: String },
    #[error("route {wanted}: the kernel said it exists, but no such route is listed")]
    RouteVanished { wanted: String },
    #[error("network namespace: {what}: {source}")]
    Netns {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(RtnlError) -> IfconfError {
    let what = what.into();
    move |source| IfconfError::Netlink { what, source }
}

/// Whether an add changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    AlreadyThere,
}

/// Link configuration on one rtnetlink socket (one network namespace: the
/// one the socket was opened in).
#[derive(Debug)]
pub struct IfConf {
    rtnl: Rtnl,
}

impl IfConf {
    /// Uses an open socket.
    pub fn new(rtnl: Rtnl) -> Self {
        IfConf { rtnl }
    }

    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, IfconfError> {
        Rtnl::open()
            .map(IfConf::new)
            .map_err(nl("opening rtnetlink"))
    }

    /// Opens a socket in the network namespace `ns` (an open
    /// `/proc/<pid>/ns/net` or bind-mounted namespace file): enters it on
    /// this thread, opens the socket, and returns to the thread's own
    /// namespace. Needs `CAP_SYS_ADMIN`.
    pub fn open_in_netns(ns: BorrowedFd<'_>) -> Result<Self, IfconfError> {
        let own = File::open("/proc/thread-self/ns/net").map_err(|source| IfconfError::Netns {
            what: "opening /proc/thread-self/ns/net",
            source,
        })?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| IfconfError::Netns {
            what: "entering the target namespace (setns)",
            source: e.into(),
        })?;
        let opened = Rtnl::open();
        setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| IfconfError::Netns {
            what: "returning to the thread's own namespace (setns)",
            source: e.into(),
        })?;
        opened
            .map(IfConf::new)
            .map_err(nl("opening rtnetlink in the target namespace"))
    }

    /// The underlying socket.
    pub fn rtnl(&self) -> &Rtnl {
        &self.rtnl
    }

    /// All links of the namespace.
    pub fn links(&self) -> Result<Vec<Link>, IfconfError> {
        let replies = self
            .rtnl
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(nl("listing links"))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// The link with this index, `None` when there is none.
    pub fn link(&self, index: u32) -> Result<Option<Link>, IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, format!("reading link index {index}"))
    }

    /// The link with this name, `None` when there is none.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>, IfconfError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(msg, format!("reading link {name:?}"))
    }

    fn get_link(&self, msg: LinkMessage, what: String) -> Result<Option<Link>, IfconfError> {
        match self.rtnl.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl(what)(e)),
        }
    }

    fn set_link(&self, msg: LinkMessage, what: String) -> Result<(), IfconfError> {
        self.rtnl
            .request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(|_| ())
            .map_err(nl(what))
    }

    /// Renames the link (the kernel refuses while it is up: `EBUSY`).
    pub fn set_name(&self, index: u32, name: &IfName) -> Result<(), IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfName(name.as_str().to_owned()));
        self.set_link(msg, format!("renaming link index {index} to {name}"))
    }

    /// Sets the link's hardware address.
    pub fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.set_link(msg, format!("setting MAC {mac} on link index {index}"))
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, format!("setting MTU {mtu} on link index {index}"))
    }

    /// Sets or clears `IFF_UP`.
    pub fn set_up(&self, index: u32, up: bool) -> Result<(), IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        let what = format!(
            "bringing link index {index} {}",
            if up { "up" } else { "down" }
        );
        self.set_link(msg, what)
    }

    /// Moves the link into the network namespace of process `pid`
    /// (`IFLA_NET_NS_PID`), renaming it on the way when `name` is given
    /// (the kernel refuses a name taken there: `EEXIST`). The link goes
    /// down and loses its addresses and routes; its index may change.
    pub fn move_to_pid(
        &self,
        index: u32,
        pid: u32,
        name: Option<&IfName>,
    ) -> Result<(), IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::NetNsPid(pid));
        if let Some(n) = name {
            msg.attributes
                .push(LinkAttribute::IfName(n.as_str().to_owned()));
        }
        self.set_link(
            msg,
            format!("moving link index {index} into the network namespace of pid {pid}"),
        )
    }

    /// As [`IfConf::move_to_pid`], for the namespace open as `ns`
    /// (`IFLA_NET_NS_FD`).
    pub fn move_to_netns(
        &self,
        index: u32,
        ns: BorrowedFd<'_>,
        name: Option<&IfName>,
    ) -> Result<(), IfconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        if let Some(n) = name {
            msg.attributes
                .push(LinkAttribute::IfName(n.as_str().to_owned()));
        }
        self.set_link(
            msg,
            format!("moving link index {index} into another network namespace"),
        )
    }

    /// The addresses of one link (`Some(index)`) or of all links.
    pub fn addresses(&self, index: Option<u32>) -> Result<Vec<LinkAddress>, IfconfError> {
        let replies = self
            .rtnl
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(nl("listing addresses"))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => address_of(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Adds `cidr` to the link (IPv4 with its broadcast address, like
    /// `ip addr add ... brd +`). Already there with the same prefix: no
    /// change. There with another prefix: [`IfconfError::AddressConflict`].
    pub fn add_address(&self, index: u32, cidr: IpCidr) -> Result<Added, IfconfError> {
        if let Some(e) = self
            .addresses(Some(index))?
            .into_iter()
            .find(|a| a.cidr.addr == cidr.addr)
        {
            return if e.cidr.prefix == cidr.prefix {
                Ok(Added::AlreadyThere)
            } else {
                Err(IfconfError::AddressConflict {
                    index,
                    wanted: cidr,
                    existing: e.cidr,
                })
            };
        }
        let mut msg = AddressMessage::default();
        msg.header.family = family(cidr.addr);
        msg.header.prefix_len = cidr.prefix;
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        msg.attributes.push(AddressAttribute::Local(cidr.addr));
        msg.attributes.push(AddressAttribute::Address(cidr.addr));
        if let IpAddr::V4(a) = cidr.addr {
            if cidr.prefix < 31 {
                let host = u32::MAX.checked_shr(u32::from(cidr.prefix)).unwrap_or(0);
                msg.attributes
                    .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                        u32::from(a) | host,
                    )));
            }
        }
        match self.rtnl.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(Added::Added),
            // Added concurrently by someone else: check it is the same.
            Err(e) if e.errno() == Some(EEXIST) => {
                match self
                    .addresses(Some(index))?
                    .into_iter()
                    .find(|a| a.cidr.addr == cidr.addr)
                {
                    Some(a) if a.cidr.prefix == cidr.prefix => Ok(Added::AlreadyThere),
                    Some(a) => Err(IfconfError::AddressConflict {
                        index,
                        wanted: cidr,
                        existing: a.cidr,
                    }),
                    None => Err(nl(format!("adding {cidr} to link index {index}"))(e)),
                }
            }
            Err(e) => Err(nl(format!("adding {cidr} to link index {index}"))(e)),
        }
    }

    /// The main table's routes of one address family (`v6`).
    pub fn routes(&self, v6: bool) -> Result<Vec<RouteEntry>, IfconfError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self
            .rtnl
            .request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)
            .map_err(nl("listing routes"))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => route_of(m),
                _ => None,
            })
            .collect())
    }

    /// Adds a route through link `index` to `route.dst`, via its gateway if
    /// any (scope link without one). A route to the same destination with
    /// the same gateway through this link: no change. Any other route to
    /// that destination with the same metric: [`IfconfError::RouteConflict`].
    pub fn add_route(&self, index: u32, route: &Route) -> Result<Added, IfconfError> {
        let wanted = RouteEntry {
            dst: route.dst,
            gateway: route.via,
            oif: Some(index),
            priority: None,
        };
        let v6 = route.dst.addr.is_ipv6();
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(route.dst.addr);
        msg.header.destination_prefix_length = route.dst.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = if route.via.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if route.dst.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    route.dst.network(),
                )));
        }
        if let Some(via) = route.via {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(via)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        let shown = wanted.to_string();
        match self.rtnl.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(Added::Added),
            Err(e) if e.errno() == Some(EEXIST) => {
                let same_dst: Vec<RouteEntry> = self
                    .routes(v6)?
                    .into_iter()
                    .filter(|r| r.dst == route.dst)
                    .collect();
                if same_dst
                    .iter()
                    .any(|r| r.oif == Some(index) && r.gateway == route.via)
                {
                    return Ok(Added::AlreadyThere);
                }
                match same_dst.first() {
                    Some(other) => Err(IfconfError::RouteConflict {
                        wanted: shown,
                        existing: other.to_string(),
                    }),
                    None => Err(IfconfError::RouteVanished { wanted: shown }),
                }
            }
            Err(e) => Err(nl(format!("adding route {shown}"))(e)),
        }
    }

    /// Adds the default route (`0.0.0.0/0` or `::/0`) via `gateway`
    /// through link `index`; idempotent as [`IfConf::add_route`].
    pub fn add_default_route(&self, index: u32, gateway: IpAddr) -> Result<Added, IfconfError> {
        let dst = IpCidr {
            addr: if gateway.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            },
            prefix: 0,
        };
        self.add_route(
            index,
            &Route {
                dst,
                via: Some(gateway),
            },
        )
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) => {
                link.mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::Mtu(m) => link.mtu = *m,
            _ => {}
        }
    }
    link
}

fn address_of(a: &AddressMessage) -> Option<LinkAddress> {
    // IPv4: IFA_LOCAL is the address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 sends IFA_ADDRESS only.
    let mut local = None;
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(LinkAddress {
        index: a.header.index,
        cidr: IpCidr {
            addr,
            prefix: a.header.prefix_len,
        },
        scope: u8::from(a.header.scope),
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage) -> Option<RouteEntry> {
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut priority = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => priority = Some(*p),
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN || m.header.kind != RouteType::Unicast {
        return None;
    }
    let addr = dst.unwrap_or(match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    Some(RouteEntry {
        dst: IpCidr {
            addr,
            prefix: m.header.destination_prefix_length,
        },
        gateway,
        oif,
        priority,
    })
}
