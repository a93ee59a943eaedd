//! The Docker driver's protocol, spoken directly to `kata-sriov
//! docker-plugin` on its socket (no dockerd): the calls libnetwork makes,
//! in its order, with a plugin crash (SIGKILL) and restart in the middle;
//! then hostile input: malformed HTTP and JSON, unknown methods, bad ids and
//! options. Each bad request gets a JSON `Err` and the plugin keeps
//! serving. Needs root and `ip` (veth ends stand in for VF netdevs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netdev_support;

use serde_json::{json, Value};

use netdev_support::{send_raw, Plugin, VethHost};

const NID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EID: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn plugin(host: &VethHost) -> Plugin {
    Plugin::start(
        &host.config,
        &host.path().join("plugin.sock"),
        &host.path().join("plugin.log"),
    )
}

fn ok(p: &Plugin, method: &str, body: Value) -> Value {
    let (status, v) = p.call(method, body);
    assert_eq!(status, 200, "{method}: {v}");
    assert!(v.get("Err").is_none(), "{method}: {v}");
    v
}

fn err(p: &Plugin, method: &str, body: Value, needle: &str) -> u16 {
    let (status, v) = p.call(method, body);
    let e = v["Err"]
        .as_str()
        .unwrap_or_else(|| panic!("{method}: no Err in {v}"));
    assert!(e.contains(needle), "{method}: {e:?} lacks {needle:?}");
    status
}

#[test]
fn lifecycle_survives_a_plugin_crash() {
    let host = VethHost::new(
        "kp",
        1,
        "[[pools]]\nname = \"vf\"\npfs = [\"0000:3b:00.0\"]\n",
    );
    let mut p = plugin(&host);
    let vf = host.vf_netdev(0);
    let mac = host.mac(&vf);
    assert_eq!(
        ok(&p, "Plugin.Activate", json!({})),
        json!({ "Implements": ["NetworkDriver"] })
    );
    assert_eq!(
        ok(&p, "NetworkDriver.GetCapabilities", json!({}))["Scope"],
        "local"
    );
    ok(
        &p,
        "NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": NID,
            "Options": { "com.docker.network.generic": { "pool": "nd" }, "com.docker.network.enable_ipv6": false },
            "IPv4Data": [{ "AddressSpace": "LocalDefault", "Pool": "10.81.0.0/24", "Gateway": "10.81.0.1/24" }],
            "IPv6Data": []
        }),
    );
    let ep = ok(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID, "Interface": { "Address": "10.81.0.5/24", "AddressIPv6": "", "MacAddress": "" }, "Options": {} }),
    );
    assert_eq!(ep, json!({ "Interface": { "MacAddress": mac } }));
    assert_eq!(host.leases(), 1);

    // Crash and restart: the network map and the lease are on disk.
    p.kill();
    p.restart();
    let j = ok(
        &p,
        "NetworkDriver.Join",
        json!({ "NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/x", "Options": {} }),
    );
    assert_eq!(
        j,
        json!({ "InterfaceName": { "SrcName": vf, "DstPrefix": "eth" }, "Gateway": "10.81.0.1" })
    );
    let info = ok(
        &p,
        "NetworkDriver.EndpointOperInfo",
        json!({ "NetworkID": NID, "EndpointID": EID }),
    );
    assert_eq!(info["Value"]["pool"], "nd");
    assert_eq!(info["Value"]["netdev"], vf.as_str());
    for m in [
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.Leave",
    ] {
        ok(&p, m, json!({ "NetworkID": NID, "EndpointID": EID }));
    }
    // A second endpoint finds the pool exhausted (one VF).
    let e2 = EID.replace('f', "0");
    err(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NID, "EndpointID": e2, "Interface": {} }),
        "exhausted",
    );
    p.kill();
    p.restart();
    ok(
        &p,
        "NetworkDriver.DeleteEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID }),
    );
    assert_eq!(host.leases(), 0);
    assert!(host.host_has(&vf));
    // Idempotent.
    ok(
        &p,
        "NetworkDriver.DeleteEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID }),
    );
    ok(
        &p,
        "NetworkDriver.DeleteNetwork",
        json!({ "NetworkID": NID }),
    );
    err(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID, "Interface": {} }),
        "not created through this driver",
    );
    // A MAC Docker chose is not answered with another one.
    ok(
        &p,
        "NetworkDriver.CreateNetwork",
        json!({ "NetworkID": NID, "Options": { "com.docker.network.generic": { "pf": format!("{}p", host.tag) } } }),
    );
    let ep = ok(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID, "Interface": { "MacAddress": "02:42:0a:51:00:05" } }),
    );
    assert_eq!(ep, json!({}));
    ok(
        &p,
        "NetworkDriver.DeleteEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID }),
    );
    assert_eq!(host.leases(), 0);
    assert!(p.alive());
}

#[test]
fn bad_requests_get_a_json_err_and_the_plugin_keeps_serving() {
    let host = VethHost::new(
        "kb",
        1,
        "[[pools]]\nname = \"vf\"\npfs = [\"0000:3b:00.0\"]\n",
    );
    let mut p = plugin(&host);
    let create = |opts: Value| json!({ "NetworkID": NID, "Options": { "com.docker.network.generic": opts } });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "NetworkDriver.CreateNetwork",
            create(json!({})),
            "no pool chosen",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "pool": "nope" })),
            "no pool named \"nope\"",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "pool": "vf" })),
            "mode = \"vfio\"",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "pool": "nd", "pf": "x" })),
            "not both",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "pf": format!("{}p", host.tag), "vlan": "100" })),
            "no netdev pool has PF",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "pf": "eth0", "vlan": "5000" })),
            "0 to 4094",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "bogus": "1" })),
            "unknown option",
        ),
        (
            "NetworkDriver.CreateNetwork",
            create(json!({ "pool": 5 })),
            "not a string",
        ),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": "../../etc" }),
            "NetworkID",
        ),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": 7 }),
            "NetworkID",
        ),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": NID, "IPv4Data": [{ "Gateway": "nope" }], "Options": { "com.docker.network.generic": { "pool": "nd" } } }),
            "not an IP",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            json!({ "NetworkID": NID }),
            "EndpointID",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            json!({ "NetworkID": NID, "EndpointID": EID }),
            "not created through this driver",
        ),
        (
            "NetworkDriver.Join",
            json!({ "NetworkID": NID, "EndpointID": EID }),
            "not created through this driver",
        ),
        ("NetworkDriver.Nope", json!({}), "not implemented"),
        ("Plugin.Activate/../../x", json!({}), "not implemented"),
    ];
    for (m, body, needle) in cases {
        err(&p, m, body, needle);
    }
    assert_eq!(
        err(&p, "NetworkDriver.Unknown", json!({}), "not implemented"),
        404
    );
    ok(
        &p,
        "NetworkDriver.CreateNetwork",
        create(json!({ "pool": "nd" })),
    );
    err(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID, "Interface": { "MacAddress": "ff:ff:ff:ff:ff:ff" } }),
        "MacAddress",
    );
    assert_eq!(host.leases(), 0);

    // Raw garbage on the wire.
    let raws: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\x00\x01\x02\xff\r\n\r\n".to_vec(),
        b"GET /Plugin.Activate HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
        b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"Net".to_vec(),
        b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]".to_vec(),
        b"POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nContent-Length: 4\r\n\r\nnull".to_vec(),
        [b"POST /x HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; 100_000]].concat(),
    ];
    for raw in raws {
        let (status, body) = send_raw(&p.socket, &raw).unwrap();
        assert!(status >= 400, "{status} {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["Err"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    }
    // Clients that connect and say nothing hold up no one; past the
    // connection limit the plugin answers 503 with a JSON Err; once they
    // hang up, it serves again.
    let silent: Vec<_> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&p.socket).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (status, v) = p.call("Plugin.Activate", json!({}));
    assert_eq!(status, 503, "{v}");
    assert!(v["Err"].as_str().unwrap().contains("too many"), "{v}");
    drop(silent);
    let start = std::time::Instant::now();
    loop {
        let (status, _) = p.call("Plugin.Activate", json!({}));
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "still {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Every connection thread gone (the 200 above may have come while a
    // few silent ones were still being closed).
    while conn_threads(&p) > 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let one_silent = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
    let t = std::time::Instant::now();
    ok(&p, "Plugin.Activate", json!({}));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    drop(one_silent);
    assert!(p.alive());
    p.kill();
}

/// Issue 19, attack 6: a client trickling a header line every second is
/// cut off at the request deadline (it used to be held open forever, one
/// read timeout at a time), a second plugin refuses to take over the
/// socket of a live one, and the network map never grows past what the
/// plugin reads back (DeleteNetwork keeps working).
#[test]
fn deadlines_socket_ownership_and_a_bounded_network_map() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let host = VethHost::new(
        "kb",
        1,
        "[[pools]]\nname = \"vf\"\npfs = [\"0000:3b:00.0\"]\n",
    );
    let mut p = plugin(&host);

    // The trickler: one header line a second, never the end of the head.
    let mut s = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
    s.write_all(b"POST /Plugin.Activate HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_secs(1));
        if s.write_all(b"X-Slow: 1\r\n").is_err() {
            cut = true;
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 512];
        let got = s.read(&mut b);
        s.set_nonblocking(false).unwrap();
        if let Ok(n) = got {
            assert!(
                String::from_utf8_lossy(&b[..n]).contains("did not arrive within"),
                "{:?}",
                String::from_utf8_lossy(&b[..n])
            );
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickling client was served for {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    ok(&p, "Plugin.Activate", json!({}));

    // A second instance on the same socket: refused, the first serves on.
    let o = std::process::Command::new(kata_sriov_tests::workspace_bin("kata-sriov"))
        .arg("--config")
        .arg(&host.config)
        .args(["docker-plugin", "--socket"])
        .arg(&p.socket)
        .env_remove("KATA_SRIOV_LOG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("another driver instance is listening"), "{e}");
    ok(&p, "Plugin.Activate", json!({}));
    assert!(p.alive());

    // A network map just under the read cap: a new network is refused
    // (the map could not be read back), deleting one still works.
    let map = host.path().join("state/docker-networks.json");
    let cap = 4 * kata_sriov::integrations::docker::MAX_BODY;
    let mut text = String::from("{\"networks\":{");
    let mut i = 0;
    // Entries of 81 bytes up to the cap: a new one (with its gateway,
    // over 81 bytes) does not fit.
    while text.len() + 81 + 2 <= cap {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("\"{i:064x}\":{{\"pool\":\"nd\"}}"));
        i += 1;
    }
    text.push_str("}}");
    std::fs::write(&map, text).unwrap();
    err(
        &p,
        "NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": NID,
            "Options": { "com.docker.network.generic": { "pool": "nd" } },
            "IPv4Data": [{ "AddressSpace": "LocalDefault", "Pool": "10.81.0.0/24", "Gateway": "10.81.0.1/24" }],
            "IPv6Data": []
        }),
        "over its 4194304-byte limit",
    );
    ok(
        &p,
        "NetworkDriver.DeleteNetwork",
        json!({ "NetworkID": format!("{:064x}", 0) }),
    );
    p.kill();
}

/// The plugin's connection threads (named `conn`).
fn conn_threads(p: &Plugin) -> usize {
    let pid = p.child.as_ref().unwrap().id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "conn")
        })
        .count()
}

/// Whether the plugin process holds `path` open.
fn holds_open(p: &Plugin, path: &std::path::Path) -> bool {
    let pid = p.child.as_ref().unwrap().id();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
}

fn vf_of(p: &Plugin, nid: &str, eid: &str) -> String {
    let info = ok(
        p,
        "NetworkDriver.EndpointOperInfo",
        json!({ "NetworkID": nid, "EndpointID": eid }),
    );
    info["Value"]["vf"].as_str().unwrap().to_owned()
}

/// Issue 19, attack 6: a DeleteEndpoint whose release waits on its VF (the
/// test holds the VF's lock, as a claim or release in another process
/// would) holds up no other call: capabilities, a new network, an endpoint
/// on the other VF and its delete all answer while it still waits; then it
/// finishes.
#[test]
fn a_waiting_release_holds_up_no_other_call() {
    use std::time::{Duration, Instant};

    let host = VethHost::new("kw", 2, "");
    let mut p = plugin(&host);
    let n2 = NID.replace('0', "1");
    let e2 = EID.replace('f', "1");
    let net = |id: &str| json!({ "NetworkID": id, "Options": { "com.docker.network.generic": { "pool": "nd" } } });
    ok(&p, "NetworkDriver.CreateNetwork", net(NID));
    ok(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID, "Interface": {} }),
    );
    let vf = vf_of(&p, NID, EID);
    let ledger = kata_sriov::state::ledger::Ledger::open(&host.path().join("state")).unwrap();
    let held = ledger
        .lock_vf(vf.parse().unwrap(), Duration::ZERO)
        .unwrap()
        .unwrap();
    let lock = host.path().join("state/locks").join(&vf);

    let socket = p.socket.clone();
    let slow = std::thread::spawn(move || {
        let body = serde_json::to_vec(&json!({ "NetworkID": NID, "EndpointID": EID })).unwrap();
        netdev_support::call_raw(&socket, "NetworkDriver.DeleteEndpoint", &body).unwrap()
    });
    // The delete is in the plugin, waiting for the VF's lock.
    let t = Instant::now();
    while !holds_open(&p, &lock) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the delete never reached the VF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ok(&p, "NetworkDriver.GetCapabilities", json!({}))["Scope"],
        "local"
    );
    ok(&p, "NetworkDriver.CreateNetwork", net(&n2));
    ok(
        &p,
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": n2, "EndpointID": e2, "Interface": {} }),
    );
    assert_ne!(vf_of(&p, &n2, &e2), vf);
    ok(
        &p,
        "NetworkDriver.DeleteEndpoint",
        json!({ "NetworkID": n2, "EndpointID": e2 }),
    );
    // All of that while the first delete still waits.
    assert!(!slow.is_finished());
    assert!(holds_open(&p, &lock));
    assert_eq!(host.leases(), 1);
    drop(held);
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("Err"), "{body}");
    assert_eq!(host.leases(), 0);
    assert!(host.host_has(&host.vf_netdev(0)) && host.host_has(&host.vf_netdev(1)));
    assert!(p.alive());
}

fn gc(host: &VethHost) -> String {
    let o = std::process::Command::new(kata_sriov_tests::workspace_bin("kata-sriov"))
        .arg("--config")
        .arg(&host.config)
        .arg("gc")
        .env_remove("KATA_SRIOV_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Issue 19, attack 6: a DeleteEndpoint refused with a 503 (over the
/// connection limit) leaves its lease, kept by gc while the network lives
/// (Docker may still have the endpoint); once Docker deletes the network,
/// gc releases it, and keeps a live endpoint of another network.
#[test]
fn a_refused_delete_leaves_no_lease_once_its_network_is_gone() {
    use std::time::{Duration, Instant};

    let host = VethHost::new("kr", 2, "");
    let mut p = plugin(&host);
    let n2 = NID.replace('0', "1");
    let e2 = EID.replace('f', "1");
    for (n, e) in [(NID, EID), (n2.as_str(), e2.as_str())] {
        ok(
            &p,
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": n, "Options": { "com.docker.network.generic": { "pool": "nd" } } }),
        );
        ok(
            &p,
            "NetworkDriver.CreateEndpoint",
            json!({ "NetworkID": n, "EndpointID": e, "Interface": {} }),
        );
    }
    let live_vf = vf_of(&p, &n2, &e2);
    let silent: Vec<_> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&p.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, v) = p.call(
        "NetworkDriver.DeleteEndpoint",
        json!({ "NetworkID": NID, "EndpointID": EID }),
    );
    assert_eq!(status, 503, "{v}");
    drop(silent);
    let t = Instant::now();
    while p.call("Plugin.Activate", json!({})).0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(host.leases(), 2);
    // The network lives: Docker may still have the endpoint.
    gc(&host);
    assert_eq!(host.leases(), 2);
    // A plugin restart changes nothing.
    p.restart();
    gc(&host);
    assert_eq!(host.leases(), 2);
    ok(
        &p,
        "NetworkDriver.DeleteNetwork",
        json!({ "NetworkID": NID }),
    );
    let out = gc(&host);
    assert_eq!(host.leases(), 1, "{out}");
    assert!(host.host_has(&host.vf_netdev(0)) && host.host_has(&host.vf_netdev(1)));
    assert_eq!(vf_of(&p, &n2, &e2), live_vf);
    ok(
        &p,
        "NetworkDriver.DeleteEndpoint",
        json!({ "NetworkID": n2, "EndpointID": e2 }),
    );
    assert_eq!(host.leases(), 0);
    assert!(p.alive());
}
