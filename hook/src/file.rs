//! Opening a file another party may have planted: never through a symlink,
//! never blocking (a FIFO opens at once with `O_NONBLOCK`, and is then
//! refused), and only a regular file is returned.

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

fn describe(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device node"
    } else {
        "not a regular file"
    }
}

/// Opens `path` with `opts` plus `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`, and
/// checks (on the open file) that it is a regular file. A symlink fails
/// with `ELOOP`, anything else but a regular file with `InvalidData`
/// saying what it is.
pub fn open_regular(opts: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let f = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is {}, not a regular file", describe(t)),
        ));
    }
    Ok(f)
}

/// [`open_regular`] for reading.
pub fn read_regular(path: &Path) -> io::Result<File> {
    open_regular(OpenOptions::new().read(true), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_symlinks_and_directories_are_refused_at_once() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_regular(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO, not a regular file");
        // Writing would block without O_NONBLOCK (no reader): ENXIO instead.
        assert!(open_regular(OpenOptions::new().append(true), &fifo).is_err());
        let e = read_regular(t.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let file = t.path().join("f");
        std::fs::write(&file, "x").unwrap();
        std::os::unix::fs::symlink(&file, t.path().join("l")).unwrap();
        let e = read_regular(&t.path().join("l")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(read_regular(&file).is_ok());
    }
}
