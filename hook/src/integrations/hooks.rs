//! The poststop hook kata-sriov injects into a spec, and the hook entries
//! of `configs/hooks.d` (podman, CRI-O): this binary, a fixed `PATH` as its
//! whole environment, a timeout.

use std::path::Path;

use crate::oci::spec::HookEntry;

/// The only environment of the injected hook: nothing is inherited from
/// the runtime or the container (CVE-2025-23266 came from an inherited
/// `LD_PRELOAD`).
pub const HOOK_ENV_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Timeout of the injected poststop hook, in seconds.
pub const POSTSTOP_TIMEOUT_SECS: u32 = 60;

/// `argv[0]` of the hooks.
pub const BINARY_NAME: &str = "kata-sriov";

/// Where the packaged binary is installed (`configs/hooks.d` points here).
pub const INSTALLED_BINARY: &str = "/usr/local/bin/kata-sriov";

/// The `kata-sriov hook <mode>` modes.
pub const HOOK_MODES: [&str; 3] = ["precreate", "create-runtime", "poststop"];

/// The poststop hook that releases a container's VFs: this binary, with a
/// fixed `PATH` as its whole environment and a timeout.
pub fn default_poststop(binary: &Path, config: Option<&Path>) -> HookEntry {
    injected(binary, config, "poststop")
}

/// The injected `kata-sriov hook <mode>` (a member of [`HOOK_MODES`]).
pub fn injected(binary: &Path, config: Option<&Path>, mode: &str) -> HookEntry {
    let mut args = vec![BINARY_NAME.to_owned()];
    if let Some(c) = config {
        args.push("--config".to_owned());
        args.push(c.to_string_lossy().into_owned());
    }
    args.push("hook".to_owned());
    args.push(mode.to_owned());
    HookEntry {
        path: binary.to_string_lossy().into_owned(),
        args,
        env: vec![HOOK_ENV_PATH.to_owned()],
        timeout: Some(POSTSTOP_TIMEOUT_SECS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn text(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn poststop_hook_entry() {
        let h = default_poststop(
            Path::new("/opt/bin/kata-sriov"),
            Some(Path::new("/etc/k/c.toml")),
        );
        assert_eq!(h.path, "/opt/bin/kata-sriov");
        assert_eq!(
            h.args,
            [
                "kata-sriov",
                "--config",
                "/etc/k/c.toml",
                "hook",
                "poststop"
            ]
        );
        assert_eq!(h.env, [HOOK_ENV_PATH]);
        assert_eq!(h.timeout, Some(60));
        let bare = HookEntry {
            path: "/bin/x".into(),
            args: vec![],
            env: vec![],
            timeout: None,
        };
        assert_eq!(text(&bare.to_value()), r#"{"path":"/bin/x"}"#);
    }

    /// `configs/hooks.d/*.json` (oci-hooks(5)) run this binary in real modes.
    #[test]
    fn oci_hooks_configs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/hooks.d");
        for (file, stage) in [
            ("kata-sriov-precreate.json", "precreate"),
            ("kata-sriov-poststop.json", "poststop"),
        ] {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(keys(&v), ["version", "hook", "when", "stages"], "{file}");
            assert_eq!(v["version"], "1.0.0");
            assert_eq!(v["stages"], serde_json::json!([stage]));
            let hook = &v["hook"];
            assert_eq!(hook["path"], INSTALLED_BINARY);
            assert!(hook["path"].as_str().unwrap().ends_with("/kata-sriov"));
            let args = crate::testing::json_strs(&hook["args"]);
            assert_eq!(args[0], BINARY_NAME);
            assert_eq!(args[1..].len(), 2, "{args:?}");
            assert_eq!(args[1], "hook");
            assert!(
                HOOK_MODES.contains(&args[2]) && args[2] == stage,
                "{args:?}"
            );
            // Nothing inherited: the whole environment is a fixed PATH.
            assert_eq!(hook["env"], serde_json::json!([HOOK_ENV_PATH]));
            assert!(hook["timeout"].as_u64().unwrap() >= 1);
            if stage == "poststop" {
                // Same hook as the one injected into specs.
                assert_eq!(
                    *hook,
                    default_poststop(Path::new(INSTALLED_BINARY), None).to_value()
                );
            }
            // when.annotations: one anchored pattern on the key that matches
            // exactly the request annotation, any value.
            let when = v["when"].as_object().unwrap();
            assert_eq!(when.keys().collect::<Vec<_>>(), ["annotations"]);
            let ann = when["annotations"].as_object().unwrap();
            assert_eq!(ann.len(), 1);
            let (key_re, value_re) = ann.iter().next().unwrap();
            assert_eq!(
                literal_of_anchored_regex(key_re).as_deref(),
                Some(crate::policy::request::REQUEST_ANNOTATION),
                "{key_re}"
            );
            assert_eq!(value_re, ".*");
        }
    }

    /// The string an anchored regex `^...$` matches when its body is a
    /// literal with `\`-escaped metacharacters; `None` for anything else.
    fn literal_of_anchored_regex(re: &str) -> Option<String> {
        let body = re.strip_prefix('^')?.strip_suffix('$')?;
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let e = chars.next()?;
                    if e.is_ascii_alphanumeric() {
                        return None; // \d, \w, ...: a class, not a literal
                    }
                    out.push(e);
                }
                '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                    return None
                }
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn regex_literal_helper() {
        assert_eq!(
            literal_of_anchored_regex(r"^io\.kata-sriov\.networks$").as_deref(),
            Some("io.kata-sriov.networks")
        );
        assert_eq!(literal_of_anchored_regex(r"^io.kata-sriov.networks$"), None);
        assert_eq!(literal_of_anchored_regex(r"io\.kata-sriov\.networks"), None);
        assert_eq!(literal_of_anchored_regex(r"^io\.kata\d$"), None);
    }
}
