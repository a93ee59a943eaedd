//! kata-sriov-guest: configures passed-through SR-IOV VFs inside a VM.
//!
//! ```text
//! kata-sriov-guest [OPTIONS] [STAGE...]    Kata guest OCI hook: OCI state on stdin
//! kata-sriov-guest --config FILE|- [OPTIONS]
//! kata-sriov-guest --cmdline[=FILE] [OPTIONS]   kata_sriov.networks=<base64> (/proc/cmdline)
//! ```
//!
//! Needs no environment (Kata runs guest hooks without PATH); logs to
//! stderr and `/dev/kmsg`, never to stdout; exits 1 with one line on error.

mod configure;
mod input;
mod log;
mod nics;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use kata_sriov_guest::GuestNetwork;

use crate::configure::Options;
use crate::log::Log;

/// Default wait for NICs: under Kata's 10 s guest hook timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(8);
/// Longest wait accepted.
const MAX_WAIT_SECS: f64 = 600.0;

const USAGE: &str = "usage: kata-sriov-guest [--config FILE|- | --cmdline[=FILE]] [--wait SECONDS] [--sysfs DIR] [--no-kmsg] [STAGE...]
  no --config/--cmdline: Kata guest OCI hook, OCI state on stdin
  --config FILE|-   the guest networks JSON from FILE or stdin, applied here
  --cmdline[=FILE]  kata_sriov.networks=<base64> from /proc/cmdline (or FILE)
  --wait SECONDS    how long to wait for NICs to appear (default 8)
  --sysfs DIR       sysfs root (default /sys)
  --no-kmsg         do not log to /dev/kmsg";

#[derive(Debug)]
enum Mode {
    Hook,
    Config(PathBuf),
    Cmdline(PathBuf),
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    wait: Duration,
    sysfs: PathBuf,
    kmsg: bool,
    help: bool,
}

fn parse_wait(v: &str) -> anyhow::Result<Duration> {
    let secs: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && (0.0..=MAX_WAIT_SECS).contains(s))
        .with_context(|| format!("--wait {v:?}: expected 0 to {MAX_WAIT_SECS} seconds"))?;
    Ok(Duration::from_secs_f64(secs))
}

fn parse_args(argv: Vec<String>) -> anyhow::Result<Args> {
    let mut args = Args {
        mode: Mode::Hook,
        wait: DEFAULT_WAIT,
        sysfs: PathBuf::from("/sys"),
        kmsg: true,
        help: false,
    };
    let mut mode_set = false;
    let mut set_mode = |m: Mode, args: &mut Args| -> anyhow::Result<()> {
        if std::mem::replace(&mut mode_set, true) {
            bail!("--config and --cmdline: give one of them, once");
        }
        args.mode = m;
        Ok(())
    };
    let mut it = argv.into_iter();
    let mut stages = Vec::new();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value"),
            }
        };
        match key.as_str() {
            "--config" | "-c" => {
                let v = value("--config")?;
                set_mode(Mode::Config(PathBuf::from(v)), &mut args)?;
            }
            "--cmdline" => {
                let file = inline.clone().unwrap_or_else(|| "/proc/cmdline".to_owned());
                set_mode(Mode::Cmdline(PathBuf::from(file)), &mut args)?;
            }
            "--wait" => args.wait = parse_wait(&value("--wait")?)?,
            "--sysfs" => args.sysfs = PathBuf::from(value("--sysfs")?),
            "--no-kmsg" => args.kmsg = false,
            "--help" | "-h" => args.help = true,
            s if s.starts_with('-') && s != "-" => bail!("unknown option {s:?}; {USAGE}"),
            _ => stages.push(a),
        }
    }
    if !stages.is_empty() && !matches!(args.mode, Mode::Hook) {
        bail!("unexpected arguments {stages:?}");
    }
    Ok(args)
}

fn networks(args: &Args, log: &Log) -> anyhow::Result<(Option<Vec<GuestNetwork>>, Option<i32>)> {
    Ok(match &args.mode {
        Mode::Hook => {
            let text = input::read_bounded(
                std::io::stdin().lock(),
                input::MAX_STATE,
                "OCI state on stdin",
            )?;
            let h = input::hook_input(&text)?;
            let who = h.id.as_deref().unwrap_or("(no id)");
            match &h.networks {
                Some(n) => log.info(&format!(
                    "container {who}: {} network(s) from {}",
                    n.len(),
                    h.origin
                )),
                None => log.info(&format!(
                    "container {who}: no {} annotation; nothing to do",
                    kata_sriov_guest::GUEST_ANNOTATION
                )),
            }
            (h.networks, h.pid)
        }
        Mode::Config(p) => (Some(input::config_input(p)?), None),
        Mode::Cmdline(p) => {
            let n = input::cmdline_file_input(p)?;
            if n.is_none() {
                log.info(&format!(
                    "{}: no {}=; nothing to do",
                    p.display(),
                    kata_sriov_guest::CMDLINE_KEY
                ));
            }
            (n, None)
        }
    })
}

fn run(args: &Args, log: &Log) -> anyhow::Result<()> {
    let (nets, pid) = networks(args, log)?;
    let Some(nets) = nets.filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let opts = Options {
        sysfs: args.sysfs.clone(),
        wait: args.wait,
        poll: Duration::from_millis(100),
    };
    configure::configure(&nets, pid, &opts, log)?;
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let parsed = parse_args(argv);
    let kmsg = parsed.as_ref().map_or(true, |a| a.kmsg);
    let log = Log::new(kmsg.then_some("/dev/kmsg"));
    let result = parsed.and_then(|args| {
        if args.help {
            eprintln!("{USAGE}");
            return Ok(());
        }
        run(&args, &log)
    });
    if let Err(e) = result {
        log.error(&one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each cause once (many errors
/// already show their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> anyhow::Result<Args> {
        parse_args(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn error_line_shows_each_cause_once() {
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(inner).context("reading x");
        assert_eq!(one_line(&e), "reading x: disk on fire");
        let parsed = kata_sriov_guest::parse_guest_networks("{").unwrap_err();
        let shown = parsed.to_string();
        let e = anyhow::Error::new(parsed).context("stdin");
        assert_eq!(one_line(&e), format!("stdin: {shown}"));
    }

    #[test]
    fn args() {
        let a = p(&["prestart"]).unwrap();
        assert!(matches!(a.mode, Mode::Hook));
        assert_eq!(a.wait, DEFAULT_WAIT);
        let a = p(&["--config", "-", "--wait=2.5", "--no-kmsg"]).unwrap();
        assert!(matches!(a.mode, Mode::Config(ref f) if f == &PathBuf::from("-")));
        assert_eq!(a.wait, Duration::from_millis(2500));
        assert!(!a.kmsg);
        let a = p(&["--cmdline"]).unwrap();
        assert!(matches!(a.mode, Mode::Cmdline(ref f) if f == &PathBuf::from("/proc/cmdline")));
        let a = p(&["--cmdline=/tmp/x", "--sysfs", "/tmp/s"]).unwrap();
        assert!(matches!(a.mode, Mode::Cmdline(ref f) if f == &PathBuf::from("/tmp/x")));
        assert_eq!(a.sysfs, PathBuf::from("/tmp/s"));
        for bad in [
            &["--config"][..],
            &["--config", "a", "--cmdline"],
            &["--wait", "-1"],
            &["--wait", "nan"],
            &["--wait", "1e9"],
            &["--bogus"],
            &["--config", "a", "extra"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
