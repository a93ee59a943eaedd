//! Logging to stderr and, where it can be opened for writing, to the
//! kernel log through `/dev/kmsg` (the Kata agent may drop a hook's stderr;
//! the guest console keeps the kernel log). Never to stdout.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// `/dev/kmsg` refuses records over 1024 bytes; stay well below.
const KMSG_CHUNK: usize = 900;

/// Where messages go.
#[derive(Debug)]
pub struct Log {
    kmsg: Option<File>,
    tag: String,
}

/// Syslog priorities used in `/dev/kmsg` records.
#[derive(Debug, Clone, Copy)]
enum Level {
    Error = 3,
    Info = 6,
}

impl Log {
    /// Logs to stderr, and to `kmsg_path` (normally `/dev/kmsg`) when
    /// given and writable.
    pub fn new(kmsg_path: Option<&str>) -> Log {
        let kmsg = kmsg_path.and_then(|p| {
            File::options()
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(p)
                .ok()
        });
        Log {
            kmsg,
            tag: format!("kata-sriov-guest[{}]", std::process::id()),
        }
    }

    pub fn info(&self, msg: &str) {
        self.write(Level::Info, msg);
    }

    pub fn error(&self, msg: &str) {
        self.write(Level::Error, &format!("error: {msg}"));
    }

    fn write(&self, level: Level, msg: &str) {
        // One line, whatever the message holds.
        let line: String = msg
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = writeln!(std::io::stderr().lock(), "kata-sriov-guest: {line}");
        if let Some(k) = &self.kmsg {
            let mut rest = line.as_str();
            while !rest.is_empty() {
                let mut cut = rest.len().min(KMSG_CHUNK);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                let (part, tail) = rest.split_at(cut);
                let mut w: &File = k;
                // Each write is one record; losing one is no reason to fail.
                let _ = w.write_all(format!("<{}>{}: {part}\n", level as u8, self.tag).as_bytes());
                rest = tail;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_records_to_the_kmsg_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        std::fs::write(&p, "").unwrap();
        let log = Log::new(p.to_str());
        log.info("hello\nworld");
        log.error(&"x".repeat(2000));
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("<6>kata-sriov-guest["), "{}", lines[0]);
        assert!(lines[0].ends_with("]: hello world"), "{}", lines[0]);
        assert_eq!(lines.len(), 4, "2000 bytes in chunks of {KMSG_CHUNK}");
        assert!(lines[1].starts_with("<3>") && lines[1].contains(": error: xxx"));
        assert!(lines.iter().all(|l| l.len() < 1024));
        // Unwritable or no kernel log: stderr only, no failure.
        Log::new(Some("/nonexistent/kmsg")).info("still fine");
        Log::new(None).info("still fine");
    }
}
