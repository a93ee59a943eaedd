//! kata-sriov-guest against the real kernel: each test makes its own
//! network namespaces (`ip netns add`, names unique per test and process),
//! veth links standing in for the VF, runs the binary inside with
//! `ip netns exec` (which remounts sysfs, so `/sys/class/net` is that
//! namespace's) and an empty environment, as Kata runs guest hooks, and
//! checks what the kernel reports with `ip -j`. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kata_sriov_guest::testing::{self, global_addrs};

const BIN: &str = env!("CARGO_BIN_EXE_kata-sriov-guest");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace (deleted on drop) with the helper run inside it.
struct Netns(testing::Netns);

impl std::ops::Deref for Netns {
    type Target = testing::Netns;
    fn deref(&self) -> &testing::Netns {
        &self.0
    }
}

impl Netns {
    fn new(tag: &str) -> Netns {
        Netns(testing::Netns::add(format!(
            "ksg-{tag}-{}",
            std::process::id()
        )))
    }

    /// The helper inside this namespace, empty environment.
    fn helper(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self.spawn_helper(args, stdin.is_some());
        if let Some(s) = stdin {
            let mut w = child.stdin.take().unwrap();
            // The helper stops reading an oversized input: a broken pipe is fine.
            if let Err(e) = w.write_all(s.as_bytes()) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
            }
        }
        child.wait_with_output().unwrap()
    }

    fn spawn_helper(&self, args: &[&str], stdin: bool) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, BIN])
            .args(args)
            .env_clear()
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// What the kernel says about links, addresses and routes, without
    /// counters, lifetimes and DAD state.
    fn snapshot(&self) -> Value {
        let mut links = BTreeMap::new();
        for l in self.ip_json(&["addr", "show"]).as_array().unwrap() {
            let mut addrs: Vec<String> = l["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect();
            addrs.sort();
            links.insert(
                l["ifname"].as_str().unwrap().to_owned(),
                json!({"index": l["ifindex"], "mtu": l["mtu"], "mac": l["address"],
                       "flags": l["flags"], "addrs": addrs}),
            );
        }
        let mut routes = Vec::new();
        for fam in ["-4", "-6"] {
            let out = run(Command::new("ip")
                .args(["-j", fam, "-n", &self.name, "route", "show", "table", "all"]));
            for r in serde_json::from_slice::<Value>(&out.stdout)
                .unwrap()
                .as_array()
                .unwrap()
            {
                routes.push(format!(
                    "{} {} {} {} {}",
                    r["dst"], r["gateway"], r["dev"], r["table"], r["metric"]
                ));
            }
        }
        routes.sort();
        json!({"links": links, "routes": routes})
    }

    fn link(&self, name: &str) -> Value {
        self.ip_json(&["addr", "show", "dev", name])[0].clone()
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// A process sleeping in `ns`: the container's process of a hook state.
struct Sleeper(Child);

impl Sleeper {
    fn new(ns: &Netns) -> Sleeper {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // `ip netns exec` execs sleep in place: wait until it is sleep, in ns.
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let ino = fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            let want = fs::metadata(ns.path())
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            if comm.trim() == "sleep" && ino.is_some() && ino == want {
                break;
            }
            assert!(Instant::now() < deadline, "sleeper did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sleeper(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "helper failed: {}", stderr(o));
    assert!(o.stdout.is_empty(), "stdout must stay empty");
}

/// Exit 1 with exactly one error line, which is returned.
fn assert_refused(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    assert!(o.stdout.is_empty());
    let err = stderr(o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("kata-sriov-guest: error: "))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert_eq!(err.lines().last(), Some(lines[0]), "{err}");
    lines[0].to_owned()
}

fn write_tmp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

const FULL: &str = r#"[{"mac":"02:5a:00:00:00:01","pci_id":"8086:10ca","name":"net1",
  "ips":["10.20.0.5/24","fd20::5/64"],"gateway":"10.20.0.1",
  "routes":[{"dst":"10.21.0.0/16","via":"10.20.0.1"},{"dst":"fd21::/64","via":"fd20::1"},
            {"dst":"10.22.0.0/16"}],"mtu":1400}]"#;

fn routes_of(ns: &Netns, fam: &str, dev: &str) -> Vec<String> {
    let out =
        run(Command::new("ip").args(["-j", fam, "-n", &ns.name, "route", "show", "dev", dev]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}{}",
                r["dst"].as_str().unwrap(),
                r["gateway"]
                    .as_str()
                    .map(|g| format!(" via {g}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn assert_full_config(ns: &Netns) {
    let l = ns.link("net1");
    assert_eq!(l["address"], "02:5a:00:00:00:01");
    assert_eq!(l["mtu"], 1400);
    assert!(l["flags"].as_array().unwrap().contains(&json!("UP")), "{l}");
    let a = global_addrs(&l);
    assert_eq!(a, vec!["10.20.0.5/24", "fd20::5/64"], "{l}");
    let v4 = routes_of(ns, "-4", "net1");
    for want in [
        "default via 10.20.0.1",
        "10.21.0.0/16 via 10.20.0.1",
        "10.22.0.0/16",
        "10.20.0.0/24",
    ] {
        assert!(v4.contains(&want.to_owned()), "{want} not in {v4:?}");
    }
    let v6 = routes_of(ns, "-6", "net1");
    assert!(v6.contains(&"fd21::/64 via fd20::1".to_owned()), "{v6:?}");
    assert!(v6.contains(&"fd20::/64".to_owned()), "{v6:?}");
}

#[test]
fn config_by_mac_then_second_run_changes_nothing() {
    let ns = Netns::new("bymac");
    ns.veth("vf0", "02:5a:00:00:00:01");
    ns.veth("other", "02:5a:00:00:00:99");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tmp(dir.path(), "nets.json", FULL);
    let o = ns.helper(&["--no-kmsg", "--config", cfg.to_str().unwrap()], None);
    assert_ok(&o);
    assert!(stderr(&o).contains("renamed vf0 to net1"), "{}", stderr(&o));
    assert!(!ns.has_link("vf0"));
    assert_full_config(&ns);
    // The other veth is untouched.
    let other = ns.link("other");
    assert!(global_addrs(&other).is_empty());
    assert_eq!(other["mtu"], 1500);

    let before = ns.snapshot();
    let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(FULL));
    assert_ok(&o);
    assert!(
        stderr(&o).contains("already configured; nothing changed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn hook_moves_nic_into_the_container_namespace() {
    let vm = Netns::new("vm");
    let ctr = Netns::new("ctr");
    vm.veth("vf0", "02:5a:00:00:00:01");
    // The container already has an interface of the VF's kernel name.
    ctr.veth("vf0", "02:5a:00:00:00:77");
    let sleeper = Sleeper::new(&ctr);
    let state = json!({"ociVersion":"1.0.2","id":"c1","status":"created","pid":sleeper.pid(),
        "bundle":"/nonexistent","annotations":{"io.kata-sriov.guest-networks":FULL}})
    .to_string();
    let o = vm.helper(&["--no-kmsg", "prestart"], Some(&state));
    assert_ok(&o);
    assert!(
        stderr(&o).contains("moved vf0 into the target namespace as net1"),
        "{}",
        stderr(&o)
    );
    assert!(!vm.has_link("vf0") && !vm.has_link("net1"));
    assert_full_config(&ctr);
    assert!(global_addrs(&ctr.link("vf0")).is_empty());

    let before = (vm.snapshot(), ctr.snapshot());
    let o = vm.helper(&["--no-kmsg", "prestart"], Some(&state));
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing changed"), "{}", stderr(&o));
    assert_eq!((vm.snapshot(), ctr.snapshot()), before);
}

#[test]
fn hook_in_own_namespace_reads_bundle_config() {
    let vm = Netns::new("bundle");
    vm.veth("eth7", "02:5a:00:00:00:01");
    // Kata: the container process shares the VM's namespace; nothing moves.
    let sleeper = Sleeper::new(&vm);
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"ociVersion":"1.0.2","annotations":{"io.kata-sriov.guest-networks":FULL}});
    write_tmp(dir.path(), "config.json", &cfg.to_string());
    let state = json!({"ociVersion":"1.0.2","id":"c2","status":"created","pid":sleeper.pid(),
        "bundle":dir.path()})
    .to_string();
    let o = vm.helper(&["--no-kmsg", "prestart"], Some(&state));
    assert_ok(&o);
    assert!(!stderr(&o).contains("moved"), "{}", stderr(&o));
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
    assert_full_config(&vm);
}

#[test]
fn hook_without_request_does_nothing() {
    let ns = Netns::new("noreq");
    ns.veth("eth7", "02:5a:00:00:00:01");
    let before = ns.snapshot();
    let state = json!({"ociVersion":"1.0.2","id":"pause","status":"created","pid":1,
        "bundle":"/nonexistent","annotations":{"io.kubernetes.cri.container-type":"sandbox"}})
    .to_string();
    let o = ns.helper(&["--no-kmsg", "prestart"], Some(&state));
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn waits_for_a_late_nic() {
    let ns = Netns::new("late");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tmp(dir.path(), "nets.json", FULL);
    let start = Instant::now();
    let child = ns.spawn_helper(
        &[
            "--no-kmsg",
            "--wait",
            "6",
            "--config",
            cfg.to_str().unwrap(),
        ],
        false,
    );
    std::thread::sleep(Duration::from_millis(1200));
    ns.veth("vf0", "02:5a:00:00:00:01");
    let o = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert_ok(&o);
    assert!(
        stderr(&o).contains("waiting up to 6.0 s for entry 0"),
        "{}",
        stderr(&o)
    );
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_full_config(&ns);
}

#[test]
fn no_matching_nic_lists_what_it_saw() {
    let ns = Netns::new("nomatch");
    ns.veth("eth3", "02:5a:00:00:00:33");
    let before = ns.snapshot();
    let start = Instant::now();
    let o = ns.helper(&["--no-kmsg", "--wait", "0.5", "--config", "-"], Some(FULL));
    assert!(start.elapsed() < Duration::from_secs(3));
    let line = assert_refused(&o);
    for want in [
        "entry 0 (mac 02:5a:00:00:00:01, pci 8086:10ca, name net1): no matching NIC after waiting",
        "NICs seen: ",
        "lo (mac 00:00:00:00:00:00, no PCI device)",
        "eth3 (mac 02:5a:00:00:00:33, no PCI device)",
        "eth3p (mac ",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    assert_eq!(ns.snapshot(), before);
}

/// A sysfs tree in which the given links are PCI functions of one
/// vendor:device (veths have no PCI device).
fn fake_sysfs(ns: &Netns, dir: &Path, links: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("sys");
    fs::create_dir_all(root.join("bus/pci/drivers/igbvf")).unwrap();
    for (name, bdf) in links {
        let dev = root.join("devices/pci0000:00").join(bdf);
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vendor"), "0x8086\n").unwrap();
        fs::write(dev.join("device"), "0x10ca\n").unwrap();
        symlink("../../../bus/pci/drivers/igbvf", dev.join("driver")).unwrap();
        let net = root.join("class/net").join(name);
        fs::create_dir_all(&net).unwrap();
        let index = ns.link(name)["ifindex"].to_string();
        fs::write(net.join("ifindex"), format!("{index}\n")).unwrap();
        symlink(
            format!("../../../devices/pci0000:00/{bdf}"),
            net.join("device"),
        )
        .unwrap();
    }
    root
}

#[test]
fn pci_id_fallback_with_one_candidate() {
    let ns = Netns::new("pci1");
    // The VF came up with another MAC than the host set.
    ns.veth("eth1", "7e:00:00:00:00:01");
    ns.veth("eth2", "7e:00:00:00:00:02");
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_sysfs(&ns, dir.path(), &[("eth1", "0000:00:05.0")]);
    let o = ns.helper(
        &[
            "--no-kmsg",
            "--sysfs",
            sys.to_str().unwrap(),
            "--config",
            "-",
        ],
        Some(FULL),
    );
    assert_ok(&o);
    assert!(
        stderr(&o).contains("renamed eth1 to net1, mac 02:5a:00:00:00:01"),
        "{}",
        stderr(&o)
    );
    assert_full_config(&ns);
    assert!(global_addrs(&ns.link("eth2")).is_empty());
}

#[test]
fn two_pci_candidates_are_refused() {
    let ns = Netns::new("pci2");
    ns.veth("eth1", "7e:00:00:00:00:01");
    ns.veth("eth2", "7e:00:00:00:00:02");
    let dir = tempfile::tempdir().unwrap();
    let sys = fake_sysfs(
        &ns,
        dir.path(),
        &[("eth1", "0000:00:05.0"), ("eth2", "0000:00:06.0")],
    );
    let before = ns.snapshot();
    let nets = r#"[{"pci_id":"8086:10ca","name":"net1","ips":["10.20.0.5/24"]}]"#;
    let o = ns.helper(
        &[
            "--no-kmsg",
            "--sysfs",
            sys.to_str().unwrap(),
            "--wait",
            "5",
            "--config",
            "-",
        ],
        Some(nets),
    );
    let line = assert_refused(&o);
    assert!(
        line.contains("2 unconfigured NICs have PCI ID 8086:10ca"),
        "{line}"
    );
    assert!(
        line.contains("eth1 (mac 7e:00:00:00:00:01, pci 0000:00:05.0 [8086:10ca], driver igbvf)"),
        "{line}"
    );
    assert!(
        line.contains("eth2 (mac 7e:00:00:00:00:02, pci 0000:00:06.0 [8086:10ca], driver igbvf)"),
        "{line}"
    );
    assert!(
        !stderr(&o).contains("waiting"),
        "refused at once: {}",
        stderr(&o)
    );
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn name_taken_is_refused_before_any_change() {
    let ns = Netns::new("taken");
    ns.veth("vf0", "02:5a:00:00:00:01");
    ns.veth("net1", "02:5a:00:00:00:02");
    let before = ns.snapshot();
    let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(FULL));
    let line = assert_refused(&o);
    assert!(
        line.contains("name net1 is taken by another NIC: net1 (mac 02:5a:00:00:00:02"),
        "{line}"
    );
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn hostile_input_is_refused_with_nothing_changed() {
    let ns = Netns::new("hostile");
    ns.veth("vf0", "02:5a:00:00:00:01");
    let before = ns.snapshot();
    let good = |s: &str| FULL.replace("\"10.20.0.5/24\"", s);
    let oversized = format!("{}{}", FULL, " ".repeat(70 * 1024));
    let cases: Vec<(String, &str)> = vec![
        (good("\"10.20.0.5/33\""), "prefix too long"),
        (good("\"10.20.0.5\""), "expected ADDRESS/PREFIX"),
        (good("\"10.20.0.300/24\""), "not an IP address"),
        (FULL.replace("02:5a:00:00:00:01", "02:5a:00:00:01"), "MAC address"),
        (FULL.replace("02:5a:00:00:00:01", "ff:ff:ff:ff:ff:ff"), "multicast"),
        (FULL.replace("\"mtu\"", "\"mtu_bytes\""), "unknown field"),
        (FULL.replace("\"net1\"", "\"../../etc\""), "interface name"),
        (oversized, "65536"),
        ("[".to_owned(), "EOF"),
        ("{}".to_owned(), "expected a sequence"),
        ("[{\"pci_id\":\"8086:10ca\",\"routes\":[{\"dst\":\"10.1.0.0/16\",\"via\":\"fd00::1\"}]}]".to_owned(), "same address family"),
    ];
    for (text, why) in &cases {
        // As --config on stdin.
        let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(text));
        let line = assert_refused(&o);
        assert!(line.contains(why), "{why:?} not in {line}");
        // As the annotation of a hook state.
        let state = json!({"ociVersion":"1.0.2","id":"c","status":"created",
            "annotations":{"io.kata-sriov.guest-networks":text}})
        .to_string();
        let o = ns.helper(&["--no-kmsg", "prestart"], Some(&state));
        let line = assert_refused(&o);
        assert!(line.contains("io.kata-sriov.guest-networks"), "{line}");
    }
    // An oversized state, a state that is not JSON.
    let huge = format!("{{\"id\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let line = assert_refused(&ns.helper(&["--no-kmsg"], Some(&huge)));
    assert!(line.contains("more than 1048576 bytes"), "{line}");
    let line = assert_refused(&ns.helper(&["--no-kmsg"], Some("not json")));
    assert!(line.contains("OCI state"), "{line}");
    // Bad base64 on the command line.
    let dir = tempfile::tempdir().unwrap();
    let cl = write_tmp(dir.path(), "cmdline", "quiet kata_sriov.networks=%%%\n");
    let line =
        assert_refused(&ns.helper(&["--no-kmsg", &format!("--cmdline={}", cl.display())], None));
    assert!(line.contains("not base64"), "{line}");
    // Bad options.
    assert_refused(&ns.helper(&["--no-kmsg", "--wait", "-1"], None));
    assert_refused(&ns.helper(&["--no-kmsg", "--frobnicate"], None));
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn kernel_command_line() {
    use base64::Engine;
    let ns = Netns::new("cmdline");
    ns.veth("vf0", "02:5a:00:00:00:01");
    let dir = tempfile::tempdir().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(FULL);
    let cl = write_tmp(
        dir.path(),
        "cmdline",
        &format!("console=ttyS0 kata_sriov.networks={b64} quiet\n"),
    );
    let o = ns.helper(&["--no-kmsg", &format!("--cmdline={}", cl.display())], None);
    assert_ok(&o);
    assert_full_config(&ns);
    // No key: nothing to do.
    let none = write_tmp(dir.path(), "none", "console=ttyS0 quiet\n");
    let o = ns.helper(
        &["--no-kmsg", &format!("--cmdline={}", none.display())],
        None,
    );
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing to do"));
}

#[test]
fn logs_to_kmsg() {
    let ns = Netns::new("kmsg");
    ns.veth("vf0", "02:5a:00:00:00:01");
    let mut child = ns.spawn_helper(&["--config", "-"], true);
    // `ip netns exec` execs the helper in place: this is its pid.
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(FULL.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
    let tag = format!("kata-sriov-guest[{pid}]: entry 0 (mac 02:5a:00:00:00:01");
    let out = run(&mut Command::new("dmesg"));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.lines()
            .any(|l| l.contains(&tag) && l.contains("configured")),
        "no {tag:?} record in the kernel log"
    );
}

#[test]
fn two_vfs_in_one_description() {
    let ns = Netns::new("two");
    ns.veth("eth1", "02:5a:00:00:00:0b");
    ns.veth("eth2", "02:5a:00:00:00:0a");
    let nets = r#"[
      {"mac":"02:5a:00:00:00:0a","pci_id":"8086:10ca","name":"net1","ips":["10.60.0.5/24"],"gateway":"10.60.0.1"},
      {"mac":"02:5a:00:00:00:0b","pci_id":"8086:10ca","name":"net2","ips":["10.61.0.5/24","fd61::5/64"],"mtu":9000}]"#;
    let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(nets));
    assert_ok(&o);
    let n1 = ns.link("net1");
    let n2 = ns.link("net2");
    assert_eq!(n1["address"], "02:5a:00:00:00:0a");
    assert_eq!(n2["address"], "02:5a:00:00:00:0b");
    assert_eq!(global_addrs(&n1), vec!["10.60.0.5/24"]);
    assert_eq!(global_addrs(&n2), vec!["10.61.0.5/24", "fd61::5/64"]);
    assert_eq!(n2["mtu"], 9000);
    assert!(routes_of(&ns, "-4", "net1").contains(&"default via 10.60.0.1".to_owned()));
    let before = ns.snapshot();
    let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(nets));
    assert_ok(&o);
    assert_eq!(
        stderr(&o).matches("nothing changed").count(),
        2,
        "{}",
        stderr(&o)
    );
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn existing_default_route_elsewhere_is_not_replaced() {
    let ns = Netns::new("defrt");
    ns.veth("eth0", "02:5a:00:00:00:10");
    ns.ip(&["addr", "add", "10.88.0.2/16", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["route", "add", "default", "via", "10.88.0.1"]);
    ns.veth("vf0", "02:5a:00:00:00:01");
    let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(FULL));
    let line = assert_refused(&o);
    assert!(
        line.contains("route 0.0.0.0/0 via 10.20.0.1")
            && line.contains("already has 0.0.0.0/0 via 10.88.0.1"),
        "{line}"
    );
    // The VM's own default route is untouched.
    assert_eq!(routes_of(&ns, "-4", "eth0")[0], "default via 10.88.0.1");
}

/// A veth `other` in `ns` with 10.9.0.2/24, up, routing 10.77.0.0/16: the
/// route [`TWO_ENTRIES`]' second entry asks for is then refused by the
/// kernel (EEXIST), which no validation could know.
fn route_elsewhere(ns: &Netns) {
    ns.veth("other", "02:5a:00:00:00:99");
    ns.ip(&["addr", "add", "10.9.0.2/24", "dev", "other"]);
    ns.ip(&["link", "set", "other", "up"]);
    ns.ip(&[
        "route",
        "add",
        "10.77.0.0/16",
        "via",
        "10.9.0.1",
        "dev",
        "other",
    ]);
}

/// Two entries (vf0 -> net1, vf1 -> net2); net2's route is the one
/// [`route_elsewhere`] makes the kernel refuse.
const TWO_ENTRIES: &str = r#"[{"mac":"02:5a:00:00:00:01","pci_id":"8086:10ca","name":"net1",
        "ips":["10.60.0.5/24"],"mtu":1400},
      {"mac":"02:5a:00:00:00:02","pci_id":"8086:10ca","name":"net2",
        "ips":["10.61.0.5/24"],"routes":[{"dst":"10.77.0.0/16","via":"10.61.0.1"}]}]"#;

/// A snapshot's helper side only: a veth's peer (`<name>p`) gets an IPv6
/// link-local address of its own once the NIC was up for a moment.
fn helper_side(mut v: Value) -> Value {
    v["links"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.ends_with('p'));
    v["routes"].as_array_mut().unwrap().retain(|r| {
        !["vf0p", "vf1p", "otherp"]
            .iter()
            .any(|p| r.as_str().unwrap().contains(p))
    });
    v
}

/// Issue 19, attack 8: all or nothing across entries. The second entry's
/// route conflicts with one already in the namespace (nothing validation
/// could know), after the first NIC was renamed, addressed and brought up:
/// the helper exits 1 naming the route, and the namespace is as it was.
#[test]
fn a_late_failure_undoes_every_entry() {
    let ns = Netns::new("undo");
    ns.veth("vf0", "02:5a:00:00:00:01");
    ns.veth("vf1", "02:5a:00:00:00:02");
    route_elsewhere(&ns);
    let before = helper_side(ns.snapshot());
    let o = ns.helper(&["--no-kmsg", "--config", "-"], Some(TWO_ENTRIES));
    let line = assert_refused(&o);
    assert!(line.contains("route 10.77.0.0/16"), "{line}");
    assert_eq!(helper_side(ns.snapshot()), before);
}

/// All or nothing across namespaces (issue 19): when a later entry fails,
/// a NIC already moved into the container's namespace comes back under its
/// own name and as it was, and the container's namespace is as before.
#[test]
fn a_late_failure_moves_a_moved_nic_back() {
    let vm = Netns::new("mvback");
    let ctr = Netns::new("mvbackc");
    vm.veth("vf0", "02:5a:00:00:00:01");
    vm.veth("vf1", "02:5a:00:00:00:02");
    route_elsewhere(&ctr);
    let sleeper = Sleeper::new(&ctr);
    // No link index either: a NIC that went to another namespace and back
    // may come back with a new one (the kernel's, when its old one was
    // taken meanwhile).
    let ours = |v: Value| -> Value {
        let mut v = helper_side(v);
        for l in v["links"].as_object_mut().unwrap().values_mut() {
            l.as_object_mut().unwrap().remove("index");
        }
        v
    };
    let before = (ours(vm.snapshot()), ours(ctr.snapshot()));
    let state = json!({"ociVersion":"1.0.2","id":"c9","status":"created","pid":sleeper.pid(),
        "bundle":"/nonexistent","annotations":{"io.kata-sriov.guest-networks":TWO_ENTRIES}})
    .to_string();
    let o = vm.helper(&["--no-kmsg", "prestart"], Some(&state));
    let line = assert_refused(&o);
    assert!(line.contains("10.77.0.0/16"), "{line}");
    assert!(vm.has_link("vf0") && vm.has_link("vf1"), "{}", stderr(&o));
    assert_eq!(
        (ours(vm.snapshot()), ours(ctr.snapshot())),
        before,
        "{}",
        stderr(&o)
    );
}
