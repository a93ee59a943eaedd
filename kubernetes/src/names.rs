//! How kata-sriov objects are named in Kubernetes, and back: DRA pool
//! names (`<node>/<pool>`), device names (`vf-0000-3b-10-0` for VF
//! `0000:3b:10.0`), ResourceSlice names, CDI names and spec files. What
//! comes back from the API server (a claim's allocation) is parsed here and
//! refused with an error naming it when it is not one of ours.

use kata_sriov::pci::PciAddress;

/// Kind of the CDI devices the DRA driver writes (the one kind of a
/// claimed VF, `kata_sriov::oci::cdi::VF_KIND`).
pub use kata_sriov::oci::cdi::VF_KIND as CDI_KIND;
/// Prefix of the CDI spec files the DRA driver writes (`<prefix><uid>.json`).
pub const CDI_FILE_PREFIX: &str = "kata-sriov-dra-";
/// Most devices in one ResourceSlice (the API's limit).
pub const MAX_DEVICES_PER_SLICE: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("device name {0:?} is not one of ours (expected vf-DDDD-BB-DD-F, a VF's PCI address)")]
    Device(String),
    #[error("claim UID {0:?} is not a UID (expected 8-4-4-4-12 hex digits)")]
    Uid(String),
    #[error("kata-sriov pools {a:?} and {b:?} both become DRA pool {dra:?}; rename one")]
    PoolClash { a: String, b: String, dra: String },
    #[error("node name {0:?} is not a DNS subdomain")]
    Node(String),
    #[error(
        "claim {namespace:?}/{name:?}: not a valid namespace (DNS label) and name (DNS subdomain)"
    )]
    Claim { namespace: String, name: String },
}

fn dns_label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn dns_subdomain_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label_ok)
}

/// Checks the namespace and name the kubelet sends before they go into an
/// API path.
pub fn check_claim_ref(namespace: &str, name: &str) -> Result<(), NameError> {
    if dns_label_ok(namespace) && dns_subdomain_ok(name) {
        Ok(())
    } else {
        Err(NameError::Claim {
            namespace: namespace.chars().take(80).collect(),
            name: name.chars().take(260).collect(),
        })
    }
}

/// A DNS label form of `s`: lowercase, `[a-z0-9-]`, other bytes become `-`.
pub fn dns_label(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.trim_matches('-').to_owned()
}

/// Checks a node name (a DNS subdomain: what the API server allows).
pub fn check_node(node: &str) -> Result<(), NameError> {
    if dns_subdomain_ok(node) {
        Ok(())
    } else {
        Err(NameError::Node(node.to_owned()))
    }
}

/// The DRA pool of kata-sriov pool `pool` on `node`.
pub fn dra_pool(node: &str, pool: &str) -> String {
    format!("{node}/{}", dns_label(pool))
}

/// The kata-sriov pool (among `pools`) that DRA pool `dra` on `node` is;
/// None when it is another node's or no pool of ours.
pub fn kata_pool<'a>(node: &str, dra: &str, pools: &'a [String]) -> Option<&'a str> {
    pools
        .iter()
        .find(|p| dra_pool(node, p) == dra)
        .map(String::as_str)
}

/// Refuses two kata-sriov pools that would publish as one DRA pool.
pub fn check_pools(node: &str, pools: &[String]) -> Result<(), NameError> {
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[..i] {
            let dra = dra_pool(node, a);
            if dra == dra_pool(node, b) {
                return Err(NameError::PoolClash {
                    a: b.clone(),
                    b: a.clone(),
                    dra,
                });
            }
        }
    }
    Ok(())
}

/// The device name of a VF.
pub fn device_name(vf: PciAddress) -> String {
    format!(
        "vf-{:04x}-{:02x}-{:02x}-{:x}",
        vf.domain, vf.bus, vf.device, vf.function
    )
}

/// The VF a device name stands for.
pub fn parse_device_name(name: &str) -> Result<PciAddress, NameError> {
    let bad = || NameError::Device(name.chars().take(80).collect());
    let rest = name.strip_prefix("vf-").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let [d, b, s, f] = parts.as_slice() else {
        return Err(bad());
    };
    let hex = |p: &str, len: usize| -> Result<u32, NameError> {
        if p.len() != len
            || !p
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(bad());
        }
        u32::from_str_radix(p, 16).map_err(|_| bad())
    };
    let addr = PciAddress::new(
        hex(d, 4)?,
        u8::try_from(hex(b, 2)?).map_err(|_| bad())?,
        u8::try_from(hex(s, 2)?).map_err(|_| bad())?,
        u8::try_from(hex(f, 1)?).map_err(|_| bad())?,
    )
    .ok_or_else(bad)?;
    if device_name(addr) != name {
        return Err(bad());
    }
    Ok(addr)
}

/// Checks a claim UID (it names files and leases).
pub fn check_uid(uid: &str) -> Result<(), NameError> {
    let groups: Vec<&str> = uid.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(NameError::Uid(uid.chars().take(80).collect()))
    }
}

/// Whether a lease owner is a Kubernetes claim (the DRA driver records
/// leases under the claim's bare UID; every other kata-sriov owner token
/// has a `/`).
pub fn is_claim_owner(owner: &str) -> bool {
    check_uid(owner).is_ok()
}

/// The CDI spec file stem of a claim.
pub fn cdi_stem(uid: &str) -> String {
    format!("{CDI_FILE_PREFIX}{uid}")
}

/// The CDI device name of a VF in a claim (unique on the node).
pub fn cdi_device(uid: &str, vf: PciAddress) -> String {
    format!("{uid}-{}", device_name(vf))
}

/// The name of slice `index` of a DRA pool of this node.
pub fn slice_name(node: &str, pool: &str, index: usize) -> String {
    let base = format!("{node}-kata-sriov-{}", dns_label(pool));
    // Names are DNS subdomains of at most 253 bytes.
    let suffix = format!("-{index}");
    let keep = 253 - suffix.len();
    let base: String = base.chars().take(keep).collect();
    format!("{base}{suffix}")
}

/// Default prefix of the device plugin's extended resources
/// (`<prefix>/<pool>`).
pub const DEFAULT_RESOURCE_PREFIX: &str = "kata-sriov.io";
/// Prefix of the CDI spec files the device plugin writes.
pub const DP_CDI_FILE_PREFIX: &str = "kata-sriov-dp-";
/// Prefix of the lease owners of the device plugin.
pub const DP_OWNER_PREFIX: &str = kata_sriov::policy::owner::DEVICE_PLUGIN_PREFIX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceNameError {
    #[error(
        "resource prefix {0:?} is not a DNS subdomain of lowercase letters, digits, '-' and '.'"
    )]
    Prefix(String),
    #[error("pool {pool:?} cannot name an extended resource: the part after '/' must be 1 to 63 of [A-Za-z0-9_.-], starting and ending alphanumeric; rename the pool")]
    Pool { pool: String },
}

/// The extended resource of `pool`: `<prefix>/<pool>` (also the CDI kind
/// of its devices, so that Kata's `<resourceName>=<deviceID>` resolves).
pub fn resource_name(prefix: &str, pool: &str) -> Result<String, ResourceNameError> {
    if !dns_subdomain_ok(prefix) {
        return Err(ResourceNameError::Prefix(
            prefix.chars().take(260).collect(),
        ));
    }
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = pool.len() <= 63
        && ends(pool.chars().next())
        && ends(pool.chars().last())
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(ResourceNameError::Pool {
            pool: pool.to_owned(),
        });
    }
    Ok(format!("{prefix}/{pool}"))
}

/// The device plugin's socket for `pool`, a file name in the kubelet's
/// device-plugins directory.
pub fn dp_socket(pool: &str) -> String {
    format!("kata-sriov-{pool}.sock")
}

/// The lease owner of a VF the device plugin allocated from `pool`.
pub fn dp_owner(pool: &str, vf: PciAddress) -> String {
    format!("{DP_OWNER_PREFIX}{pool}/{vf}")
}

/// The pool and VF of a device plugin lease owner; None for other owners.
pub fn parse_dp_owner(owner: &str) -> Option<(&str, PciAddress)> {
    let rest = owner.strip_prefix(DP_OWNER_PREFIX)?;
    let (pool, vf) = rest.split_once('/')?;
    let addr: PciAddress = vf.parse().ok()?;
    (addr.to_string() == vf && !pool.is_empty()).then_some((pool, addr))
}

/// The CDI spec file stem of a VF the device plugin allocated.
pub fn dp_cdi_stem(pool: &str, vf: PciAddress) -> String {
    let addr: String = vf
        .to_string()
        .chars()
        .map(|c| if c == ':' { '_' } else { c })
        .collect();
    format!("{DP_CDI_FILE_PREFIX}{pool}-{addr}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn device_names_round_trip_and_refuse_others() {
        let vf: PciAddress = "0000:3b:10.7".parse().unwrap();
        assert_eq!(device_name(vf), "vf-0000-3b-10-7");
        assert_eq!(parse_device_name("vf-0000-3b-10-7").unwrap(), vf);
        for bad in [
            "",
            "vf-",
            "gpu-0000-3b-10-7",
            "vf-0000-3b-10",
            "vf-0000-3b-10-8",
            "vf-0000-3B-10-7",
            "vf-0000-3b-10-7-1",
            "vf-00000-3b-10-7",
            "vf-0000-3b-20-7",
        ] {
            assert!(parse_device_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_plugin_names() {
        let vf: PciAddress = "0000:3b:10.7".parse().unwrap();
        assert_eq!(
            resource_name("kata-sriov.io", "fast").unwrap(),
            "kata-sriov.io/fast"
        );
        assert_eq!(resource_name("x.io", "Slow_1.a").unwrap(), "x.io/Slow_1.a");
        for bad in ["Kata.io", "", "a/b", "-a"] {
            assert!(resource_name(bad, "fast").is_err(), "{bad:?}");
        }
        for bad in ["fast_", "_x", &"p".repeat(64)] {
            let e = resource_name("kata-sriov.io", bad).unwrap_err();
            assert!(e.to_string().contains("rename the pool"), "{e}");
        }
        let o = dp_owner("fast", vf);
        assert_eq!(o, "k8s-dp/fast/0000:3b:10.7");
        assert_eq!(parse_dp_owner(&o), Some(("fast", vf)));
        for other in [
            "default/c1",
            "k8s-dp/fast",
            "k8s-dp//0000:3b:10.7",
            "k8s-dp/f/3b:10.7",
        ] {
            assert_eq!(parse_dp_owner(other), None, "{other}");
        }
        assert!(!is_claim_owner(&o));
        assert_eq!(dp_cdi_stem("fast", vf), "kata-sriov-dp-fast-0000_3b_10.7");
    }

    #[test]
    fn pools_and_uids() {
        let pools = vec!["fast".to_owned(), "Slow_1".to_owned()];
        assert_eq!(dra_pool("n1", "Slow_1"), "n1/slow-1");
        assert_eq!(kata_pool("n1", "n1/slow-1", &pools), Some("Slow_1"));
        assert_eq!(kata_pool("n1", "n2/fast", &pools), None);
        assert_eq!(kata_pool("n1", "n1/other", &pools), None);
        check_pools("n1", &pools).unwrap();
        let clash = vec!["a_b".to_owned(), "a-b".to_owned()];
        assert!(check_pools("n1", &clash)
            .unwrap_err()
            .to_string()
            .contains("rename one"));
        check_uid("0c4a5f8e-1d2b-4c3a-9f00-123456789abc").unwrap();
        for bad in [
            "",
            "x",
            "../../etc",
            "ns/name",
            "0c4a5f8e-1d2b-4c3a-9f00-123456789abz",
        ] {
            assert!(check_uid(bad).is_err(), "{bad:?}");
        }
        assert!(!is_claim_owner("default/c1"));
        assert!(!is_claim_owner("precreate/0011"));
        check_node("worker-1.example").unwrap();
        assert!(check_node("Worker").is_err());
        assert!(slice_name(&"n".repeat(250), "p", 3).len() <= 253);
        check_claim_ref("default", "c1.x").unwrap();
        for (ns, name) in [
            ("../x", "c"),
            ("default", "a/b"),
            ("", "c"),
            ("d", ""),
            ("D", "c"),
        ] {
            assert!(check_claim_ref(ns, name).is_err(), "{ns:?}/{name:?}");
        }
    }
}
