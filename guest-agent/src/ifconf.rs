//! Link configuration over rtnetlink: list links and addresses; set a
//! link's name, MAC, MTU and up/down state; add IPv4/IPv6 addresses, routes
//! and a default route; move a link into another network namespace (by pid,
//! `IFLA_NET_NS_PID`, or by namespace fd, `IFLA_NET_NS_FD`); and the one
//! sequence that brings a link to an [`L3Config`] ([`IfConf::apply_l3`]).
//! Used by the guest helper and by the host's netdev mode.
//!
//! Kernel interfaces: `NETLINK_ROUTE` through [`Rtnl`]
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

use crate::contract::{IpCidr, L3Config, Route};
use crate::rtnl::{Rtnl, RtnlError};
use crate::types::{IfName, MacAddr};

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
    #[error("{what}: {cause}")]
    Netlink { what: String, cause: RtnlError },
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
    #[error("network namespace: {what}: {cause}")]
    Netns {
        what: &'static str,
        cause: std::io::Error,
    },
    #[error("{first}; undoing the changes made before it failed too: {undo}")]
    UndoFailed {
        first: Box<IfconfError>,
        undo: Box<IfconfError>,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(RtnlError) -> IfconfError {
    let what = what.into();
    move |cause| IfconfError::Netlink { what, cause }
}

/// Whether an add changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    AlreadyThere,
}

/// One change made by [`IfConf::apply_l3`]. Displayed as the guest helper
/// logs it: `down`, `renamed eth1 to net1`, `mac 02:..`, `mtu 1500`,
/// `address 10.0.0.5/24`, `up`, `route 10.1.0.0/16 via 10.0.0.1`,
/// `default via 10.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Taken down to be renamed or re-MACed.
    Down,
    Renamed {
        from: String,
        to: IfName,
    },
    Mac(MacAddr),
    Mtu(u32),
    Address(IpCidr),
    Up,
    Route(Route),
    DefaultRoute(IpAddr),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Down => f.write_str("down"),
            Change::Renamed { from, to } => write!(f, "renamed {from} to {to}"),
            Change::Mac(m) => write!(f, "mac {m}"),
            Change::Mtu(m) => write!(f, "mtu {m}"),
            Change::Address(ip) => write!(f, "address {ip}"),
            Change::Up => f.write_str("up"),
            Change::Route(r) => {
                write!(f, "route {}", r.dst)?;
                match r.via {
                    Some(v) => write!(f, " via {v}"),
                    None => Ok(()),
                }
            }
            Change::DefaultRoute(gw) => write!(f, "default via {gw}"),
        }
    }
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
        let own = File::open("/proc/thread-self/ns/net").map_err(|cause| IfconfError::Netns {
            what: "opening /proc/thread-self/ns/net",
            cause,
        })?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| IfconfError::Netns {
            what: "entering the target namespace (setns)",
            cause: e.into(),
        })?;
        let opened = Rtnl::open();
        setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| IfconfError::Netns {
            what: "returning to the thread's own namespace (setns)",
            cause: e.into(),
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
        let msg = address_msg(index, cidr);
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
        let msg = route_msg(index, route);
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
        self.add_route(index, &default_route(gateway))
    }

    /// Brings `link` to the L3 settings `l3` and the MAC `mac`, in this
    /// order: down (only when the link is up and must be renamed or
    /// re-MACed), name (`l3.name`), MAC, MTU, addresses (IPv4 with their
    /// broadcast address), up, routes, default route (`l3.gateway`). The link
    /// is read again first and every step is skipped when already as asked,
    /// so a second call changes nothing and returns no changes. An address or
    /// route that is there differently is an error
    /// ([`IfConf::add_address`], [`IfConf::add_route`]); nothing is replaced.
    /// Returns what it changed, in order. All or nothing: when a step fails
    /// (a route the kernel refuses, say), the changes made before it are
    /// undone ([`IfConf::undo`]) and the step's error returned. The one
    /// apply sequence of the guest helper and of the host's netdev mode.
    pub fn apply_l3(
        &self,
        link: &Link,
        l3: &L3Config,
        mac: Option<MacAddr>,
    ) -> Result<Vec<Change>, IfconfError> {
        let index = link.index;
        let now = self.link(index)?.unwrap_or_else(|| link.clone());
        let mut changes = Vec::new();
        match self.apply_steps(index, &now, l3, mac, &mut changes) {
            Ok(()) => Ok(changes),
            // All or nothing: what was changed before the failure is undone.
            Err(first) => match self.undo(index, &now, &changes) {
                Ok(()) => Err(first),
                Err(undo) => Err(IfconfError::UndoFailed {
                    first: Box::new(first),
                    undo: Box::new(undo),
                }),
            },
        }
    }

    fn apply_steps(
        &self,
        index: u32,
        now: &Link,
        l3: &L3Config,
        mac: Option<MacAddr>,
        changes: &mut Vec<Change>,
    ) -> Result<(), IfconfError> {
        let rename = l3.name.as_ref().filter(|want| want.as_str() != now.name);
        let remac = mac.filter(|m| now.mac != Some(*m));
        let mut up = now.up;
        if up && (rename.is_some() || remac.is_some()) {
            self.set_up(index, false)?;
            up = false;
            changes.push(Change::Down);
        }
        if let Some(want) = rename {
            self.set_name(index, want)?;
            changes.push(Change::Renamed {
                from: now.name.clone(),
                to: want.clone(),
            });
        }
        if let Some(m) = remac {
            self.set_mac(index, m)?;
            changes.push(Change::Mac(m));
        }
        if let Some(mtu) = l3.mtu.filter(|m| *m != now.mtu) {
            self.set_mtu(index, mtu)?;
            changes.push(Change::Mtu(mtu));
        }
        for ip in &l3.ips {
            if self.add_address(index, *ip)? == Added::Added {
                changes.push(Change::Address(*ip));
            }
        }
        if !up {
            self.set_up(index, true)?;
            changes.push(Change::Up);
        }
        for r in &l3.routes {
            if self.add_route(index, r)? == Added::Added {
                changes.push(Change::Route(r.clone()));
            }
        }
        if let Some(gw) = l3.gateway {
            if self.add_default_route(index, gw)? == Added::Added {
                changes.push(Change::DefaultRoute(gw));
            }
        }
        Ok(())
    }

    /// Undoes `changes` (made by [`IfConf::apply_l3`] on a link that was
    /// `before`), last first: routes and addresses removed, MTU, MAC, name
    /// and link state restored. Every step is tried; the first error is
    /// returned.
    pub fn undo(&self, index: u32, before: &Link, changes: &[Change]) -> Result<(), IfconfError> {
        let mut first = None;
        for c in changes.iter().rev() {
            let r = match c {
                Change::DefaultRoute(gw) => self.del_route(index, &default_route(*gw)),
                Change::Route(r) => self.del_route(index, r),
                Change::Up => self.set_up(index, false),
                Change::Address(ip) => self.del_address(index, *ip),
                Change::Mtu(_) => self.set_mtu(index, before.mtu),
                Change::Mac(_) => match before.mac {
                    Some(m) => self.set_mac(index, m),
                    None => Ok(()),
                },
                Change::Renamed { from, .. } => match from.parse() {
                    Ok(name) => self.set_name(index, &name),
                    Err(_) => Ok(()),
                },
                Change::Down => self.set_up(index, true),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes address `cidr` from link `index`.
    pub fn del_address(&self, index: u32, cidr: IpCidr) -> Result<(), IfconfError> {
        self.rtnl
            .request(RouteNetlinkMessage::DelAddress(address_msg(index, cidr)), 0)
            .map(drop)
            .map_err(nl(format!("removing {cidr} from link index {index}")))
    }

    /// Removes the route `route` through link `index`.
    pub fn del_route(&self, index: u32, route: &Route) -> Result<(), IfconfError> {
        self.rtnl
            .request(RouteNetlinkMessage::DelRoute(route_msg(index, route)), 0)
            .map(drop)
            .map_err(nl(format!("removing route to {}", route.dst)))
    }
}

/// The default route via `gateway`.
fn default_route(gateway: IpAddr) -> Route {
    let dst = IpCidr {
        addr: if gateway.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        },
        prefix: 0,
    };
    Route {
        dst,
        via: Some(gateway),
    }
}

fn address_msg(index: u32, cidr: IpCidr) -> AddressMessage {
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
    msg
}

fn route_msg(index: u32, route: &Route) -> RouteMessage {
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
    msg
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

/// Against the real kernel: each test makes its own network namespaces
/// (`ip netns add`, unique names) and opens its socket there with
/// [`IfConf::open_in_netns`], so the test process stays where it is.
/// Needs root.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{global_addrs, ip, Netns};
    use serde_json::Value;
    use std::process::{Child, Command, Stdio};

    struct Ns(Netns);

    impl Ns {
        fn new(tag: &str) -> Ns {
            Ns(Netns::add(format!("ksr-ifc-{tag}-{}", std::process::id())))
        }
        fn ip(&self, args: &[&str]) -> String {
            self.0.ip(args)
        }
        fn json(&self, args: &[&str]) -> Value {
            self.0.ip_json(args)
        }
        fn conf(&self) -> IfConf {
            let f = File::open(self.0.path()).unwrap();
            IfConf::open_in_netns(f.as_fd()).unwrap()
        }
        fn file(&self) -> File {
            File::open(self.0.path()).unwrap()
        }
        fn veth(&self, name: &str, mac: &str) -> u32 {
            self.0.veth(name, mac);
            self.json(&["link", "show", "dev", name])[0]["ifindex"]
                .as_u64()
                .unwrap() as u32
        }
        fn addrs(&self, dev: &str) -> Vec<String> {
            global_addrs(&self.json(&["addr", "show", "dev", dev])[0])
        }
        fn routes(&self, fam: &str) -> Vec<String> {
            let mut all = vec!["-j", fam, "-n", &self.0.name, "route", "show"];
            all.push("proto");
            all.push("static");
            let v: Value = serde_json::from_str(&ip(&all)).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {}",
                        r["dst"].as_str().unwrap(),
                        r["gateway"].as_str().unwrap_or("-"),
                        r["dev"].as_str().unwrap()
                    )
                })
                .collect()
        }
    }

    fn err_errno(e: &IfconfError) -> Option<i32> {
        match e {
            IfconfError::Netlink { cause, .. } => cause.errno(),
            _ => None,
        }
    }

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_and_sets_link_attributes() {
        let ns = Ns::new("link");
        let idx = ns.veth("v1", "02:11:00:00:00:01");
        let c = ns.conf();
        let links = c.links().unwrap();
        let v1 = links.iter().find(|l| l.name == "v1").unwrap();
        assert_eq!(v1.index, idx);
        assert_eq!(v1.mac, Some("02:11:00:00:00:01".parse().unwrap()));
        assert_eq!(v1.mtu, 1500);
        assert!(!v1.up);
        assert!(links.iter().any(|l| l.name == "lo" && l.index == 1));
        // The test process itself is in another namespace: no v1 there.
        assert!(IfConf::open()
            .unwrap()
            .link_by_name("v1")
            .unwrap()
            .is_none_or(|l| l.index != idx || l.mac != v1.mac));

        c.set_name(idx, &"net7".parse().unwrap()).unwrap();
        c.set_mac(idx, "02:11:00:00:00:02".parse().unwrap())
            .unwrap();
        c.set_mtu(idx, 1280).unwrap();
        c.set_up(idx, true).unwrap();
        let j = &ns.json(&["link", "show", "dev", "net7"])[0];
        assert_eq!(j["address"], "02:11:00:00:00:02");
        assert_eq!(j["mtu"], 1280);
        assert!(j["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let l = c.link(idx).unwrap().unwrap();
        assert_eq!((l.name.as_str(), l.up, l.mtu), ("net7", true, 1280));
        assert_eq!(c.link_by_name("net7").unwrap().unwrap().index, idx);
        assert_eq!(c.link_by_name("v1").unwrap(), None);
        assert_eq!(c.link(999_999).unwrap(), None);
        // Errors name the link and the setting.
        let err = c.set_mtu(idx, 10).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("setting MTU 10 on link index {idx}: ")),
            "{err}"
        );
        assert_eq!(err_errno(&err), Some(libc::EINVAL));
        c.set_up(idx, false).unwrap();
        assert!(!c.link(idx).unwrap().unwrap().up);
    }

    #[test]
    fn addresses_are_idempotent() {
        let ns = Ns::new("addr");
        let idx = ns.veth("v1", "02:11:00:00:00:01");
        let c = ns.conf();
        assert_eq!(
            c.add_address(idx, cidr("10.30.0.5/24")).unwrap(),
            Added::Added
        );
        assert_eq!(
            c.add_address(idx, cidr("fd30::5/64")).unwrap(),
            Added::Added
        );
        assert_eq!(
            c.add_address(idx, cidr("10.30.0.5/24")).unwrap(),
            Added::AlreadyThere
        );
        assert_eq!(
            c.add_address(idx, cidr("fd30::5/64")).unwrap(),
            Added::AlreadyThere
        );
        assert_eq!(ns.addrs("v1"), vec!["10.30.0.5/24", "fd30::5/64"]);
        let j = &ns.json(&["addr", "show", "dev", "v1"])[0]["addr_info"][0];
        assert_eq!(j["broadcast"], "10.30.0.255");
        // The same address with another prefix is not silently added.
        let err = c.add_address(idx, cidr("10.30.0.5/16")).unwrap_err();
        assert!(
            matches!(err, IfconfError::AddressConflict { existing, .. } if existing == cidr("10.30.0.5/24")),
            "{err}"
        );
        let found: Vec<IpCidr> = c
            .addresses(Some(idx))
            .unwrap()
            .iter()
            .filter(|a| a.is_global())
            .map(|a| a.cidr)
            .collect();
        assert_eq!(found, vec![cidr("10.30.0.5/24"), cidr("fd30::5/64")]);
        assert!(c
            .addresses(None)
            .unwrap()
            .iter()
            .any(|a| a.index == 1 || a.index == idx));
        let err = c.add_address(999_999, cidr("10.31.0.5/24")).unwrap_err();
        assert!(err.to_string().contains("link index 999999"), "{err}");
    }

    #[test]
    fn routes_are_idempotent_and_never_replaced() {
        let ns = Ns::new("route");
        let idx = ns.veth("v1", "02:11:00:00:00:01");
        let idx2 = ns.veth("v2", "02:11:00:00:00:02");
        let c = ns.conf();
        for (i, a, b) in [
            (idx, "10.40.0.5/24", "fd40::5/64"),
            (idx2, "10.41.0.5/24", "fd41::5/64"),
        ] {
            c.add_address(i, cidr(a)).unwrap();
            c.add_address(i, cidr(b)).unwrap();
            c.set_up(i, true).unwrap();
        }
        let r = Route {
            dst: cidr("10.50.0.0/16"),
            via: Some("10.40.0.1".parse().unwrap()),
        };
        let r6 = Route {
            dst: cidr("fd50::/64"),
            via: Some("fd40::1".parse().unwrap()),
        };
        let direct = Route {
            dst: cidr("10.51.0.0/16"),
            via: None,
        };
        for _ in 0..2 {
            c.add_route(idx, &r).unwrap();
            c.add_route(idx, &r6).unwrap();
            c.add_route(idx, &direct).unwrap();
            c.add_default_route(idx, "10.40.0.1".parse().unwrap())
                .unwrap();
            c.add_default_route(idx, "fd40::1".parse().unwrap())
                .unwrap();
        }
        assert_eq!(c.add_route(idx, &r).unwrap(), Added::AlreadyThere);
        let mut v4 = ns.routes("-4");
        v4.sort();
        assert_eq!(
            v4,
            vec![
                "10.50.0.0/16 10.40.0.1 v1",
                "10.51.0.0/16 - v1",
                "default 10.40.0.1 v1"
            ]
        );
        let mut v6 = ns.routes("-6");
        v6.sort();
        assert_eq!(v6, vec!["default fd40::1 v1", "fd50::/64 fd40::1 v1"]);
        // Another default route is there: refused, the old one stays.
        let err = c
            .add_default_route(idx2, "10.41.0.1".parse().unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already has 0.0.0.0/0 via 10.40.0.1"),
            "{err}"
        );
        let err = c
            .add_default_route(idx2, "fd41::1".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, IfconfError::RouteConflict { .. }), "{err}");
        assert!(ns.routes("-4").contains(&"default 10.40.0.1 v1".to_owned()));
        let listed = c.routes(false).unwrap();
        assert!(listed.iter().any(|e| e.dst == cidr("0.0.0.0/0")
            && e.gateway == Some("10.40.0.1".parse().unwrap())
            && e.oif == Some(idx)));
    }

    /// Issue 19, attack 8: a route the kernel refuses (its gateway is on no
    /// connected network) after the rename, MAC, MTU and address were set:
    /// everything is undone, the link is as it was, and the error names the
    /// route.
    #[test]
    fn apply_l3_is_all_or_nothing() {
        let ns = Ns::new("undo");
        let idx = ns.veth("v1", "02:12:00:00:00:01");
        ns.ip(&["link", "set", "v1", "up"]);
        let c = ns.conf();
        let before = c.link(idx).unwrap().unwrap();
        let l3: L3Config = serde_json::from_str(
            r#"{"name":"net1","ips":["10.70.0.5/24","fd70::5/64"],"mtu":1400,
                "routes":[{"dst":"10.71.0.0/16","via":"10.99.0.1"}]}"#,
        )
        .unwrap();
        let mac: MacAddr = "02:12:00:00:00:02".parse().unwrap();
        let err = c.apply_l3(&before, &l3, Some(mac)).unwrap_err();
        assert!(
            err.to_string()
                .contains("adding route 10.71.0.0/16 via 10.99.0.1"),
            "{err}"
        );
        let j = &ns.json(&["link", "show", "dev", "v1"])[0];
        assert_eq!(j["ifindex"], idx);
        assert_eq!(j["address"], "02:12:00:00:00:01");
        assert_eq!(j["mtu"], before.mtu);
        assert!(j["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        assert!(ns.addrs("v1").is_empty(), "{:?}", ns.addrs("v1"));
        assert!(ns.routes("-4").is_empty(), "{:?}", ns.routes("-4"));
        assert_eq!(c.link(idx).unwrap().unwrap(), before);
    }

    #[test]
    fn apply_l3_goes_in_order_and_only_once() {
        let ns = Ns::new("apply");
        let idx = ns.veth("v1", "02:11:00:00:00:01");
        ns.ip(&["link", "set", "v1", "up"]);
        let c = ns.conf();
        let l3: L3Config = serde_json::from_str(
            r#"{"name":"net1","ips":["10.60.0.5/24","fd60::5/64"],"gateway":"10.60.0.1",
                "routes":[{"dst":"10.61.0.0/16","via":"10.60.0.1"},{"dst":"10.62.0.0/16"}],
                "mtu":1400}"#,
        )
        .unwrap();
        let mac: MacAddr = "02:11:00:00:00:02".parse().unwrap();
        let before = c.link(idx).unwrap().unwrap();
        assert!(before.up);
        let shown = |v: Vec<Change>| -> Vec<String> { v.iter().map(|c| c.to_string()).collect() };
        assert_eq!(
            shown(c.apply_l3(&before, &l3, Some(mac)).unwrap()),
            [
                "down",
                "renamed v1 to net1",
                "mac 02:11:00:00:00:02",
                "mtu 1400",
                "address 10.60.0.5/24",
                "address fd60::5/64",
                "up",
                "route 10.61.0.0/16 via 10.60.0.1",
                "route 10.62.0.0/16",
                "default via 10.60.0.1",
            ]
        );
        let j = &ns.json(&["link", "show", "dev", "net1"])[0];
        assert_eq!(j["ifindex"], idx);
        assert_eq!(j["address"], "02:11:00:00:00:02");
        assert_eq!(j["mtu"], 1400);
        assert!(j["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        assert_eq!(ns.addrs("net1"), vec!["10.60.0.5/24", "fd60::5/64"]);
        let mut v4 = ns.routes("-4");
        v4.sort();
        assert_eq!(
            v4,
            vec![
                "10.61.0.0/16 10.60.0.1 net1",
                "10.62.0.0/16 - net1",
                "default 10.60.0.1 net1"
            ]
        );
        // Again, even from the stale link read before: nothing to do.
        assert_eq!(c.apply_l3(&before, &l3, Some(mac)).unwrap(), vec![]);
        assert_eq!(ns.json(&["link", "show", "dev", "net1"])[0]["mtu"], 1400);

        // A link that is down is not taken down first; nothing asked, nothing
        // but up is done.
        let idx2 = ns.veth("v2", "02:11:00:00:00:03");
        let v2 = c.link(idx2).unwrap().unwrap();
        assert!(!v2.up);
        let none = L3Config::default();
        assert_eq!(shown(c.apply_l3(&v2, &none, None).unwrap()), ["up"]);
        assert_eq!(c.apply_l3(&v2, &none, None).unwrap(), vec![]);
        let after = c.link(idx2).unwrap().unwrap();
        assert_eq!(
            (after.name.as_str(), after.mac, after.mtu),
            ("v2", v2.mac, 1500)
        );
    }

    struct Sleeper(Child);
    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn moves_links_between_namespaces() {
        let a = Ns::new("mva");
        let b = Ns::new("mvb");
        let idx = a.veth("v1", "02:11:00:00:00:01");
        a.ip(&["link", "set", "v1", "up"]);
        // `ip netns exec` execs sleep in place: its pid is in namespace b.
        let sleeper = Sleeper(
            Command::new("ip")
                .args(["netns", "exec", &b.0.name, "sleep", "60"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let want = std::fs::metadata(format!("/run/netns/{}", b.0.name)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::metadata(format!("/proc/{}/ns/net", sleeper.0.id()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
            != Some(std::os::unix::fs::MetadataExt::ino(&want))
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ca = a.conf();
        let cb = b.conf();
        ca.move_to_pid(idx, sleeper.0.id(), Some(&"net1".parse().unwrap()))
            .unwrap();
        assert_eq!(ca.link_by_name("v1").unwrap(), None);
        let moved = cb.link_by_name("net1").unwrap().unwrap();
        assert_eq!(moved.mac, Some("02:11:00:00:00:01".parse().unwrap()));
        assert!(!moved.up, "a moved link is down");
        // And back by namespace fd, with its old name.
        cb.move_to_netns(moved.index, a.file().as_fd(), Some(&"v1".parse().unwrap()))
            .unwrap();
        assert_eq!(cb.link_by_name("net1").unwrap(), None);
        let back = ca.link_by_name("v1").unwrap().unwrap();
        assert_eq!(back.mac, moved.mac);
        // A name taken in the target namespace is refused, nothing moves.
        let other = b.veth("v1", "02:11:00:00:00:09");
        let err = ca
            .move_to_netns(back.index, b.file().as_fd(), None)
            .unwrap_err();
        assert!(err.to_string().contains("moving link index"), "{err}");
        assert!(ca.link(back.index).unwrap().is_some());
        assert_eq!(
            cb.link(other).unwrap().unwrap().mac,
            Some("02:11:00:00:00:09".parse().unwrap())
        );
    }
}
