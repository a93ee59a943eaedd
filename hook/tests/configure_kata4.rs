//! `kata-sriov configure containerd` and `kata-sriov check` on Kata 4
//! nodes (issue 14): containerd configs shaped like kata-deploy 4.x's
//! (`tools/packaging/kata-deploy/binary/src/runtime/containerd.rs`: handler
//! `kata-<shim>`, `runtime_type = "io.containerd.kata-<shim>.v2"`,
//! `runtime_path` `/opt/kata/bin/containerd-shim-kata-v2` for the Go
//! runtime or `/opt/kata/runtime-rs/bin/containerd-shim-kata-v2` for
//! runtime-rs, a per-handler `ConfigPath`), in config versions 2 and 3, and a
//! hand-written one; the version-2 result loaded by this machine's
//! containerd 1.6 (`containerd config dump`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kata_sriov::admin::check::{self, Status};
use kata_sriov::admin::configure::{self, ContainerdSetup, KataFlavor};
use kata_sriov::policy::config::Config;

const GO_SHIM: &str = "/opt/kata/bin/containerd-shim-kata-v2";
const RS_SHIM: &str = "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2";
const GO_CONF: &str =
    "/opt/kata/share/defaults/kata-containers/runtimes/qemu/configuration-qemu.toml";
const RS_CONF: &str = "/opt/kata/share/defaults/kata-containers/runtime-rs/runtimes/qemu-runtime-rs/configuration-qemu-runtime-rs.toml";

/// kata-deploy's tables for the handlers kata-qemu and kata-qemu-runtime-rs
/// under `plugin`, with `/opt/kata` replaced by `base`.
fn kata_deploy(version: u32, base: &str) -> String {
    let plugin = match version {
        2 => "\"io.containerd.grpc.v1.cri\"",
        _ => "'io.containerd.cri.v1.runtime'",
    };
    let mut s = format!(
        r#"version = {version}
# kept: the admin's own settings
[plugins.{plugin}.containerd]
  default_runtime_name = "runc"
  [plugins.{plugin}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#
    );
    for (shim, path, conf) in [
        ("qemu", GO_SHIM, GO_CONF),
        ("qemu-runtime-rs", RS_SHIM, RS_CONF),
    ] {
        s.push_str(&format!(
            r#"
[plugins.{plugin}.containerd.runtimes.kata-{shim}]
runtime_type = "io.containerd.kata-{shim}.v2"
runtime_path = "{path}"
privileged_without_host_devices = true
pod_annotations = ["io.katacontainers.*"]
container_annotations = ["io.kubernetes.container.terminationMessage*"]
snapshotter = "nydus"

[plugins.{plugin}.containerd.runtimes.kata-{shim}.options]
ConfigPath = "{conf}"
"#
        ));
    }
    s.replace("/opt/kata", base)
}

fn setup(dir: &Path) -> ContainerdSetup {
    ContainerdSetup {
        shim: dir.join("bin/containerd-shim-kata-sriov-v2"),
        kata_sriov_config: dir.join("etc/kata-sriov/config.toml"),
        path: None,
        containerd: None,
    }
}

fn runtimes(v: &toml::Value, version: u32) -> &toml::Value {
    let plugin = if version == 2 {
        "io.containerd.grpc.v1.cri"
    } else {
        "io.containerd.cri.v1.runtime"
    };
    &v["plugins"][plugin]["containerd"]["runtimes"]
}

fn strings(v: &toml::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn kata_deploy_handlers_get_twins_with_their_own_delegate_and_config_path() {
    for version in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        let f = dir.path().join("config.toml");
        let old = kata_deploy(version, "/opt/kata");
        fs::write(&f, &old).unwrap();
        let s = setup(dir.path());
        let plan = configure::plan_containerd(&f, &s).unwrap();
        // --dry-run shows all of it and writes nothing.
        let diff = plan.diff();
        assert!(
            diff.contains("+++ ") && diff.contains("kata-sriov-qemu-runtime-rs"),
            "{diff}"
        );
        assert!(
            diff.contains(&format!(
                "symlink {} -> containerd-shim-kata-sriov-v2",
                dir.path()
                    .join("bin/containerd-shim-kata-sriov-qemu-runtime-rs-v2")
                    .display()
            )),
            "{diff}"
        );
        assert!(
            diff.contains("kata-sriov-qemu = \"/opt/kata/bin/containerd-shim-kata-v2\""),
            "{diff}"
        );
        assert_eq!(fs::read_to_string(&f).unwrap(), old);
        assert!(!s.kata_sriov_config.exists());
        for twin in ["kata-sriov-qemu", "kata-sriov-qemu-runtime-rs"] {
            assert!(
                plan.notes
                    .iter()
                    .any(|n| n.starts_with(&format!("runtime handler {twin} "))),
                "{:?}",
                plan.notes
            );
        }
        plan.apply().unwrap();

        let new = fs::read_to_string(&f).unwrap();
        for l in old.lines() {
            assert!(new.contains(l), "{l:?} lost:\n{new}");
        }
        let v: toml::Value = toml::from_str(&new).unwrap();
        let rts = runtimes(&v, version);
        for (handler, twin, shim, conf) in [
            ("kata-qemu", "kata-sriov-qemu", GO_SHIM, GO_CONF),
            (
                "kata-qemu-runtime-rs",
                "kata-sriov-qemu-runtime-rs",
                RS_SHIM,
                RS_CONF,
            ),
        ] {
            let t = &rts[twin];
            assert_eq!(
                t["runtime_type"].as_str(),
                Some(format!("io.containerd.{twin}.v2").as_str())
            );
            let bin = s.shim.with_file_name(format!("containerd-shim-{twin}-v2"));
            assert_eq!(t["runtime_path"].as_str(), bin.to_str());
            assert_eq!(t["options"]["ConfigPath"].as_str(), Some(conf), "{twin}");
            assert_eq!(t["snapshotter"].as_str(), Some("nydus"));
            assert_eq!(t["privileged_without_host_devices"].as_bool(), Some(true));
            assert_eq!(
                strings(&t["pod_annotations"]),
                ["io.katacontainers.*", "io.kata-sriov.*"]
            );
            assert_eq!(
                strings(&t["container_annotations"]),
                [
                    "io.kubernetes.container.terminationMessage*",
                    "io.kata-sriov.*"
                ]
            );
            // The Kata handler itself is untouched.
            assert_eq!(rts[handler]["runtime_path"].as_str(), Some(shim));
            assert_eq!(
                strings(&rts[handler]["pod_annotations"]),
                ["io.katacontainers.*"]
            );
            // The symlink is our shim under the twin's binary name.
            assert_eq!(
                fs::read_link(&bin).unwrap(),
                Path::new("containerd-shim-kata-sriov-v2")
            );
        }
        assert_eq!(
            rts["kata-sriov"]["runtime_type"].as_str(),
            Some(configure::RUNTIME_TYPE)
        );
        // The delegates, by absolute path, in a kata-sriov config that loads.
        let c = Config::load(Some(&s.kata_sriov_config)).unwrap();
        assert_eq!(c.shim.delegates["kata-sriov-qemu"], Path::new(GO_SHIM));
        assert_eq!(
            c.shim.delegates["kata-sriov-qemu-runtime-rs"],
            Path::new(RS_SHIM)
        );
        assert_eq!(c.shim.delegates.len(), 2);

        // Second run: nothing changes.
        let again = configure::plan_containerd(&f, &s).unwrap();
        assert!(!again.changed(), "{}", again.diff());
        assert_eq!(again.diff(), "");
    }
}

#[test]
fn the_version_2_result_loads_in_containerd_16() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("bin")).unwrap();
    let f = dir.path().join("config.toml");
    fs::write(&f, kata_deploy(2, "/opt/kata")).unwrap();
    configure::plan_containerd(&f, &setup(dir.path()))
        .unwrap()
        .apply()
        .unwrap();
    let out = Command::new("containerd")
        .arg("--config")
        .arg(&f)
        .args(["config", "dump"])
        .output()
        .expect("containerd (Debian's package) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    // Only keys containerd understood survive the dump.
    let t = &runtimes(&v, 2)["kata-sriov-qemu-runtime-rs"];
    assert_eq!(
        t["runtime_type"].as_str(),
        Some("io.containerd.kata-sriov-qemu-runtime-rs.v2")
    );
    let bin = dir
        .path()
        .join("bin/containerd-shim-kata-sriov-qemu-runtime-rs-v2");
    assert_eq!(t["runtime_path"].as_str(), bin.to_str());
    assert_eq!(t["options"]["ConfigPath"].as_str(), Some(RS_CONF));
    assert!(strings(&t["pod_annotations"]).contains(&"io.kata-sriov.*"));
}

#[test]
fn a_hand_written_handler_by_runtime_type_gets_its_shim_from_path() {
    let dir = tempfile::tempdir().unwrap();
    let kbin = dir.path().join("usr/local/bin");
    fs::create_dir_all(&kbin).unwrap();
    let kshim = kbin.join("containerd-shim-kata-v2");
    fs::write(&kshim, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&kshim, fs::Permissions::from_mode(0o755)).unwrap();
    let f = dir.path().join("config.toml");
    let text = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata.options]
    ConfigPath = "/etc/kata-containers/configuration.toml"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-fc]
  runtime_type = "io.containerd.kata-fc.v2"
"#;
    fs::write(&f, text).unwrap();
    let mut s = setup(dir.path());
    s.path = Some(kbin.clone().into_os_string());
    let plan = configure::plan_containerd(&f, &s).unwrap();
    // kata-fc's shim containerd-shim-kata-fc-v2 is nowhere: said, no twin.
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("kata-fc") && n.contains("no kata-sriov twin")),
        "{:?}",
        plan.notes
    );
    plan.apply().unwrap();
    let v: toml::Value = toml::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
    let rts = runtimes(&v, 2);
    assert!(rts.get("kata-sriov-fc").is_none());
    let t = &rts["kata-sriov-kata"];
    assert_eq!(
        t["runtime_type"].as_str(),
        Some("io.containerd.kata-sriov-kata.v2")
    );
    assert_eq!(
        t["options"]["ConfigPath"].as_str(),
        Some("/etc/kata-containers/configuration.toml")
    );
    let c = Config::load(Some(&s.kata_sriov_config)).unwrap();
    assert_eq!(c.shim.delegates["kata-sriov-kata"], kshim);
    assert_eq!(
        configure::handler_flavor(&kshim, None),
        KataFlavor::Go,
        "no runtime-rs in its path, no configuration to say otherwise"
    );
}

#[test]
fn something_else_at_a_twin_binary_path_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("bin")).unwrap();
    let squat = dir.path().join("bin/containerd-shim-kata-sriov-qemu-v2");
    fs::write(&squat, "someone else's").unwrap();
    let f = dir.path().join("config.toml");
    let old = kata_deploy(3, "/opt/kata");
    fs::write(&f, &old).unwrap();
    let e = configure::plan_containerd(&f, &setup(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&squat.display().to_string()) && e.contains("not a symlink"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&f).unwrap(), old);
    assert_eq!(fs::read_to_string(&squat).unwrap(), "someone else's");
}

const KATA_RS: &str = r#"[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
machine_type = "q35"
guest_hook_path = "/usr/share/oci/hooks"

[runtime]
name = "virt_container"
hypervisor_name = "qemu"
agent_name = "kata"
"#;

const KATA_GO: &str = r#"[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
machine_type = "q35"
cold_plug_vfio = "root-port"
hot_plug_vfio = "no-port"
guest_hook_path = "/usr/share/oci/hooks"
"#;

fn exe(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, "#!/bin/sh\n").unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A kata-deploy node under `dir`: both shims, both configurations, the
/// containerd config with our twins, and the kata-sriov config `pools`.
fn node(dir: &Path, pools: &str) -> (Config, check::CheckEnv, PathBuf, PathBuf) {
    let base = dir.join("opt/kata");
    let b = base.display().to_string();
    exe(Path::new(&GO_SHIM.replace("/opt/kata", &b)));
    exe(Path::new(&RS_SHIM.replace("/opt/kata", &b)));
    let go_conf = PathBuf::from(GO_CONF.replace("/opt/kata", &b));
    let rs_conf = PathBuf::from(RS_CONF.replace("/opt/kata", &b));
    for (p, t) in [(&go_conf, KATA_GO), (&rs_conf, KATA_RS)] {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, t).unwrap();
    }
    fs::create_dir_all(dir.join("bin")).unwrap();
    let f = dir.join("containerd.toml");
    fs::write(&f, kata_deploy(2, &b)).unwrap();
    let s = setup(dir);
    fs::create_dir_all(s.kata_sriov_config.parent().unwrap()).unwrap();
    fs::write(&s.kata_sriov_config, pools).unwrap();
    configure::plan_containerd(&f, &s).unwrap().apply().unwrap();
    let cfg = Config::load(Some(&s.kata_sriov_config)).unwrap();
    let env = check::CheckEnv {
        cmdline: dir.join("cmdline"),
        modules_dir: dir.join("modules"),
        path: None,
        kata_configs: vec![dir.join("none.toml")],
        containerd_config: f,
    };
    (cfg, env, go_conf, rs_conf)
}

fn get<'a>(r: &'a check::Report, id: &str) -> &'a check::CheckResult {
    r.get(id)
        .unwrap_or_else(|| panic!("no {id} in {}", r.render()))
}

#[test]
fn check_tells_each_handlers_runtime_and_flags_what_runtime_rs_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let pools = "[[pools]]\nname = \"d\"\npfs = [\"ens1f0\"]\nguest = \"dan\"\n[[pools]]\nname = \"h\"\npfs = [\"ens1f1\"]\n";
    let (cfg, env, go_conf, rs_conf) = node(dir.path(), pools);
    let r = check::run(&cfg, &env);
    let rs = get(&r, "handler.kata-sriov-qemu-runtime-rs");
    assert_eq!(rs.status, Status::Ok, "{}", r.render());
    assert!(
        rs.message.contains("runtime-rs") && rs.message.contains(&rs_conf.display().to_string()),
        "{}",
        rs.message
    );
    let go = get(&r, "handler.kata-sriov-qemu");
    assert!(go.message.contains("Go runtime"), "{}", go.message);
    // The default delegate is not on PATH here, but the handlers have theirs.
    assert_eq!(get(&r, "shim.delegate").status, Status::Warn);
    // runtime-rs: a DAN pool, named with the file and the key.
    let plug = get(&r, "handler.kata-sriov-qemu-runtime-rs.plug");
    assert_eq!(plug.status, Status::Fail);
    let ks = cfg.source.as_ref().unwrap().display().to_string();
    assert!(
        plug.message.contains(&ks)
            && plug.message.contains("guest = \"dan\"")
            && plug.message.contains("\"d\""),
        "{}",
        plug.message
    );
    // Without the DAN pool: the missing cold_plug_vfio, file and key.
    fs::write(
        cfg.source.as_ref().unwrap(),
        fs::read_to_string(cfg.source.as_ref().unwrap())
            .unwrap()
            .replace("guest = \"dan\"\n", ""),
    )
    .unwrap();
    let cfg = Config::load(cfg.source.as_deref()).unwrap();
    let r = check::run(&cfg, &env);
    let plug = get(&r, "handler.kata-sriov-qemu-runtime-rs.plug");
    assert_eq!(plug.status, Status::Fail, "{}", r.render());
    assert!(
        plug.message.contains(&rs_conf.display().to_string())
            && plug.message.contains("hypervisor.qemu.cold_plug_vfio"),
        "{}",
        plug.message
    );
    // No host hook by default: no host_hooks failure; the Go handler is fine.
    assert!(r
        .get("handler.kata-sriov-qemu-runtime-rs.host_hooks")
        .is_none());
    assert_eq!(
        get(&r, "handler.kata-sriov-qemu.plug").status,
        Status::Ok,
        "{}",
        r.render()
    );
    let _ = go_conf;

    // `configure kata --file` on the runtime-rs configuration fixes it.
    let plan = configure::plan(configure::Target::Kata, Some(&rs_conf), &cfg).unwrap();
    plan.apply().unwrap();
    let r = check::run(&cfg, &env);
    assert_ne!(
        get(&r, "handler.kata-sriov-qemu-runtime-rs.plug").status,
        Status::Fail,
        "{}",
        r.render()
    );

    // With the hook opted in, runtime-rs' handler fails on it.
    fs::write(
        cfg.source.as_ref().unwrap(),
        format!(
            "[hook]\npoststop = true\n{}",
            fs::read_to_string(cfg.source.as_ref().unwrap()).unwrap()
        ),
    )
    .unwrap();
    let cfg = Config::load(cfg.source.as_deref()).unwrap();
    let r = check::run(&cfg, &env);
    assert_eq!(
        get(&r, "handler.kata-sriov-qemu-runtime-rs.host_hooks").status,
        Status::Fail
    );
    assert!(r.get("handler.kata-sriov-qemu.host_hooks").is_none());
}

#[test]
fn check_fails_a_twin_without_its_delegate() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, env, _, _) = node(dir.path(), "");
    let text = fs::read_to_string(cfg.source.as_ref().unwrap()).unwrap();
    let cut: String = text
        .lines()
        .filter(|l| !l.starts_with("kata-sriov-qemu ="))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(cfg.source.as_ref().unwrap(), cut).unwrap();
    let cfg = Config::load(cfg.source.as_deref()).unwrap();
    let r = check::run(&cfg, &env);
    let h = get(&r, "handler.kata-sriov-qemu");
    assert_eq!(h.status, Status::Fail);
    assert!(h.message.contains("[shim.delegates]"), "{}", h.message);
}

/// kata-deploy on containerd 2.x: the handlers are in a drop-in the main
/// config imports; the twins go into the main config (containerd 2.x merges
/// imported plugin tables), the drop-in stays kata-deploy's.
#[test]
fn handlers_in_an_imported_drop_in_get_twins_in_the_main_config() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("bin")).unwrap();
    let confd = dir.path().join("conf.d");
    fs::create_dir(&confd).unwrap();
    let drop_in = confd.join("kata-deploy.toml");
    let dtext = kata_deploy(3, "/opt/kata");
    fs::write(&drop_in, &dtext).unwrap();
    fs::write(confd.join("other.conf"), "not toml [").unwrap();
    let f = dir.path().join("config.toml");
    let main = "version = 3\nimports = [\"conf.d/*.toml\"]\n";
    fs::write(&f, main).unwrap();
    let s = setup(dir.path());
    let plan = configure::plan_containerd(&f, &s).unwrap();
    plan.apply().unwrap();
    assert_eq!(fs::read_to_string(&drop_in).unwrap(), dtext);
    let v: toml::Value = toml::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
    let rts = runtimes(&v, 3);
    assert_eq!(
        rts["kata-sriov-qemu-runtime-rs"]["options"]["ConfigPath"].as_str(),
        Some(RS_CONF)
    );
    assert_eq!(
        rts["kata-sriov-qemu"]["options"]["ConfigPath"].as_str(),
        Some(GO_CONF)
    );
    assert!(
        rts.get("kata-qemu").is_none(),
        "the Kata handlers stay in the drop-in"
    );
    assert!(!configure::plan_containerd(&f, &s).unwrap().changed());

    // Version 2 (containerd 1.x): named, not twinned here.
    let f2 = dir.path().join("config2.toml");
    fs::write(
        &f2,
        "version = 2\nimports = [\"conf.d/kata-deploy.toml\"]\n",
    )
    .unwrap();
    let plan = configure::plan_containerd(&f2, &s).unwrap();
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("kata-qemu-runtime-rs") && n.contains("containerd 1.x")),
        "{:?}",
        plan.notes
    );
    assert!(!plan.files[0].new.contains("kata-sriov-qemu"));
}
