//! Random bytes from the kernel (`getrandom(2)`), for owner tokens and
//! generated MACs.

use std::io;

/// Fills `buf` from `getrandom(2)`. Retries an interrupted call; any other
/// error (no entropy source, a seccomp filter) is returned, never spun on.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    let mut interrupted = 0u32;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most rest.len() bytes into the valid,
        // exclusively borrowed buffer `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let e = if n == 0 {
            io::Error::new(io::ErrorKind::UnexpectedEof, "getrandom returned no bytes")
        } else {
            io::Error::last_os_error()
        };
        if e.kind() == io::ErrorKind::Interrupted && interrupted < 100 {
            interrupted += 1;
            continue;
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_differs() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        fill(&mut []).unwrap();
    }
}
