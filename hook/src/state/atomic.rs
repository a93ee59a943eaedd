//! Writing a file so that readers see the old content or the new, never a
//! part: a temp file beside it (`O_CREAT|O_EXCL|O_NOFOLLOW`, the given
//! mode), written and fsynced, then renamed over the target (or hard-linked
//! to it when the target must not exist yet), then the directory fsynced.
//! Used for leases, `config.json`, DAN files and the Docker driver's map.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of every temp file; `<prefix><pid>.` follows, so a reader can
/// tell whose it is (see [`stale_temp_pid`]).
pub const TEMP_PREFIX: &str = ".tmp.";

/// What to do when the target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Replace it (rename).
    Replace,
    /// Fail with `AlreadyExists` (hard link): the file is created at most once.
    Exclusive,
}

/// The failed step and file.
pub use crate::error::IoError as AtomicError;

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AtomicError + 'a {
    AtomicError::at(op, path)
}

/// Syncs a directory, so a rename or link in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_DIRECTORY)
        .open(dir)
        .and_then(|d| d.sync_all())
}

/// Writes `data` to `path` atomically with file mode `mode`.
pub fn write(path: &Path, data: &[u8], mode: u32, place: Place) -> Result<(), AtomicError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}.{name}.{nanos}",
        std::process::id()
    ));
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(err("creating", &tmp))?;
    // Exactly `mode`, whatever the umask.
    let written = f
        .set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(data))
        .and_then(|()| f.sync_all());
    drop(f);
    let placed = written.map_err(err("writing", &tmp)).and_then(|()| {
        match place {
            Place::Replace => fs::rename(&tmp, path),
            Place::Exclusive => fs::hard_link(&tmp, path),
        }
        .map_err(err("placing", path))
    });
    // After a rename the temp name is gone; after a link or a failure it
    // must go.
    let _ = fs::remove_file(&tmp);
    placed?;
    sync_dir(dir).map_err(err("syncing", dir))
}

/// The pid in a temp file's name, if `name` is one of ours.
pub fn stale_temp_pid(name: &str) -> Option<u32> {
    name.strip_prefix(TEMP_PREFIX)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replace_and_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write(&p, b"one", 0o600, Place::Exclusive).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let e = write(&p, b"two", 0o600, Place::Exclusive).unwrap_err();
        assert!(e.already_exists());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write(&p, b"three", 0o644, Place::Replace).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        // No temp file left either way.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        assert_eq!(stale_temp_pid(".tmp.123.f.json.99"), Some(123));
        assert_eq!(stale_temp_pid("f.json"), None);
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, "keep").unwrap();
        let p = d.path().join("link");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        // Replace swaps the link itself for a file; the target is untouched.
        write(&p, b"new", 0o600, Place::Replace).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }
}
