//! Test support for this crate's tests and the integration tests: a network
//! namespace made with `ip` and deleted on drop, and what `ip -j` reports.
//! Needs root; production code never uses it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// A network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Adds namespace `name`, first deleting one of that name left by a
    /// killed earlier run (names carry the test's pid).
    pub fn add(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// `ip -n <ns> args...`, which must succeed: its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -j -n <ns> args...`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        let out = ip(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {all:?}: {e}: {out}"))
    }

    /// A veth `name` with `mac`, its peer `<name>p` up (so the link has a carrier).
    pub fn veth(&self, name: &str, mac: &str) {
        let peer = format!("{name}p");
        self.ip(&[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer,
        ]);
        self.ip(&["link", "set", &peer, "up"]);
    }

    /// `/run/netns/<ns>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `ip args...`, which must succeed: its stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The global addresses (`local/prefixlen`) of one link of `ip -j addr show`.
pub fn global_addrs(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .unwrap_or_else(|| panic!("no addr_info in {link}"))
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| {
            let local = a["local"]
                .as_str()
                .unwrap_or_else(|| panic!("no local in {a}"));
            format!("{local}/{}", a["prefixlen"])
        })
        .collect()
}
