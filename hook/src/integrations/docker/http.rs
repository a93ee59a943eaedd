//! The HTTP side of the Docker driver: a small blocking HTTP/1.1 server: a thread per
//! connection (at most [`MAX_CONNECTIONS`]) reads one request and writes
//! its reply (`Connection: close`); the call runs on that thread (each
//! with its own engine: see [`serve`]), so one slow call holds up no
//! other. POST only, headers at
//! most [`MAX_HEAD`] bytes, bodies at most [`MAX_BODY`] (`Content-Length`
//! or chunked), a deadline for the whole request and a write timeout. Malformed requests get an HTTP
//! 400 with a JSON `{"Err": ...}`; unknown methods a 404 with one (which
//! libnetwork reads as "not implemented" where that is optional); a
//! request that fails gets a 200 with `{"Err": ...}`, as the remote driver
//! protocol asks.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slog::{warn, Logger};

use crate::error::chain;

/// Largest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// Per-connection read/write timeout: the whole request must arrive
/// within it (a deadline, not a timeout per read: a client trickling a
/// header line now and then is cut off all the same).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream read against a deadline: each read waits at most the time left.
struct Deadline<'a> {
    stream: &'a UnixStream,
    end: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let late = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the request did not arrive within {IO_TIMEOUT:?}"),
            )
        };
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        match s.read(buf) {
            // The read timeout is the time left: the deadline passed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(late())
            }
            r => r,
        }
    }
}

/// After an error reply, at most this much of the rest of a malformed
/// request is read (and dropped), waiting at most this long per read and
/// four times as long in all.
const DRAIN_MAX: u64 = 4 * 1024 * 1024;

const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub(super) fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }
    pub fn err(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({ "Err": msg.into() }),
        }
    }
}

/// Connections open at once; more are refused with a 503.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a refused connection's input is read before closing it.
const REJECT_DRAIN: Duration = Duration::from_millis(100);

fn accept_loop(
    listener: &UnixListener,
    handle: &(dyn Fn(&str, &[u8]) -> Reply + Sync),
    logger: &Logger,
) -> io::Result<()> {
    let active = &AtomicUsize::new(0);
    std::thread::scope(|s| loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::ECONNABORTED
                            | libc::EINTR
                            | libc::EMFILE
                            | libc::ENFILE
                            | libc::ENOBUFS
                            | libc::ENOMEM
                    )
                ) =>
            {
                warn!(logger, "accept failed; retrying"; "error" => chain(&e));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let mut w = &stream;
            let _ = write_reply(&mut w, &Reply::err(503, "too many connections; try again"));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Drop what the client sends (briefly: this holds up accepting,
            // under overload only), so that closing does not reset it
            // before it reads the reply.
            if stream.set_read_timeout(Some(REJECT_DRAIN)).is_ok() {
                let mut buf = [0u8; 8192];
                let mut r = &stream;
                let mut total = 0;
                while total < MAX_HEAD + MAX_BODY {
                    match r.read(&mut buf) {
                        Ok(n) if n > 0 => total += n,
                        _ => break,
                    }
                }
            }
            continue;
        }
        let conn_logger = logger.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn_scoped(s, move || {
                if let Err(e) = serve_conn(&stream, handle) {
                    warn!(conn_logger, "connection dropped"; "error" => chain(&e));
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            // The stream went with the closure: the client sees a close.
            active.fetch_sub(1, Ordering::SeqCst);
            warn!(logger, "cannot start a connection thread"; "error" => chain(&e));
        }
    })
}

/// A parsed request: method path (without `/`) and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one request; Err(reply) for a malformed one.
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request, Reply> {
    let mut head = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEAD + 1).saturating_sub(head.len()) as u64;
        let n = r
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| Reply::err(400, format!("reading the request: {ec}", ec = chain(&e))))?;
        if n == 0 {
            return Err(Reply::err(
                400,
                "connection closed before the end of the headers",
            ));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD || !line.ends_with(b"\n") {
            return Err(Reply::err(
                431,
                format!("request headers over {MAX_HEAD} bytes"),
            ));
        }
        let text = String::from_utf8(line)
            .map_err(|_| Reply::err(400, "request headers are not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']).to_owned();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // tolerate empty lines before the request line
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reply::err(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Reply::err(505, "only HTTP/1.x is spoken here"));
    }
    if method != "POST" {
        return Err(Reply::err(405, "only POST is supported"));
    }
    let Some(path) = target.strip_prefix('/') else {
        return Err(Reply::err(400, "request target must start with '/'"));
    };
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for h in &lines[1..] {
        let Some((k, v)) = h.split_once(':') else {
            return Err(Reply::err(400, "malformed header line"));
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| Reply::err(400, "Content-Length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Reply::err(400, "conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            if !v.eq_ignore_ascii_case("chunked") {
                return Err(Reply::err(
                    501,
                    format!("Transfer-Encoding {v:?} is not supported"),
                ));
            }
            chunked = true;
        }
    }
    let body = if chunked {
        if length.is_some() {
            return Err(Reply::err(400, "both Content-Length and chunked encoding"));
        }
        read_chunked(r)?
    } else {
        let n = length.unwrap_or(0);
        if n > MAX_BODY {
            return Err(Reply::err(
                413,
                format!("request body over {MAX_BODY} bytes"),
            ));
        }
        let mut b = vec![0u8; n];
        r.read_exact(&mut b)
            .map_err(|e| Reply::err(400, format!("reading the body: {ec}", ec = chain(&e))))?;
        b
    };
    Ok(Request {
        path: path.to_owned(),
        body,
    })
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        r.by_ref()
            .take(64)
            .read_until(b'\n', &mut line)
            .map_err(|e| Reply::err(400, format!("reading a chunk: {ec}", ec = chain(&e))))?;
        let s = std::str::from_utf8(&line)
            .map_err(|_| Reply::err(400, "malformed chunk size"))?
            .trim();
        let size = s.split(';').next().unwrap_or("");
        let n =
            usize::from_str_radix(size, 16).map_err(|_| Reply::err(400, "malformed chunk size"))?;
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = Vec::new();
                let got = r
                    .by_ref()
                    .take(MAX_HEAD as u64)
                    .read_until(b'\n', &mut t)
                    .map_err(|e| {
                        Reply::err(400, format!("reading trailers: {ec}", ec = chain(&e)))
                    })?;
                if got == 0 || t == b"\r\n" || t == b"\n" {
                    return Ok(body);
                }
            }
        }
        if body.len() + n > MAX_BODY {
            return Err(Reply::err(
                413,
                format!("request body over {MAX_BODY} bytes"),
            ));
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])
            .map_err(|e| Reply::err(400, format!("reading a chunk: {ec}", ec = chain(&e))))?;
        let mut crlf = Vec::new();
        r.by_ref()
            .take(2)
            .read_until(b'\n', &mut crlf)
            .map_err(|e| Reply::err(400, format!("reading a chunk: {ec}", ec = chain(&e))))?;
    }
}

/// Writes a reply with `Connection: close`.
pub fn write_reply<W: Write>(w: &mut W, reply: &Reply) -> io::Result<()> {
    let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Serves one connection: one request, one reply.
pub fn serve_conn(stream: &UnixStream, handler: &dyn Fn(&str, &[u8]) -> Reply) -> io::Result<()> {
    let mut reader = BufReader::new(Deadline {
        stream,
        end: Instant::now() + IO_TIMEOUT,
    });
    let (reply, malformed) = match read_request(&mut reader) {
        Ok(req) => (handler(&req.path, &req.body), false),
        Err(reply) => (reply, true),
    };
    let mut w = stream;
    write_reply(&mut w, &reply)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if malformed {
        // Closing a unix socket with unread input resets the peer before
        // it reads the reply: read (and drop) what it still sends, bounded.
        reader.get_mut().end = Instant::now() + DRAIN_TIMEOUT * 4;
        let start = Instant::now();
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        while total < DRAIN_MAX && start.elapsed() < DRAIN_TIMEOUT * 4 {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    }
    Ok(())
}

/// Serves connections until accepting fails for good. Each connection is
/// read and answered on its own thread (at most [`MAX_CONNECTIONS`] at
/// once; more get a 503), and `handle` runs there too, concurrently: a
/// slow or silent client, or a call waiting on one VF (a release waiting
/// for a hypervisor to close it), holds up no other call. Transient accept
/// errors (an aborted connection, a signal, a full fd table) are logged
/// and retried.
pub fn serve(
    listener: &UnixListener,
    handle: &(dyn Fn(&str, &[u8]) -> Reply + Sync),
    logger: &Logger,
) -> io::Result<()> {
    accept_loop(listener, handle, logger)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, Reply> {
        read_request(&mut BufReader::new(raw))
    }

    #[test]
    fn requests_parse_with_length_and_chunks() {
        let r =
            parse(b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(r.path, "Plugin.Activate");
        assert_eq!(r.body, b"{}");
        let r = parse(b"POST /NetworkDriver.Join HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        let r = parse(b"POST /X HTTP/1.0\n\n").unwrap();
        assert_eq!(r.body, b"");
    }

    #[test]
    fn malformed_requests_get_an_error_reply() {
        let cases: Vec<(&[u8], u16)> = vec![
            (b"", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 405),
            (b"POST x HTTP/1.1\r\n\r\n", 400),
            (b"POST / HTTP/2\r\n\r\n", 505),
            (b"POST / HTTP/1.1 extra\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n",
                413,
            ),
            (b"POST / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\n\xff\xfe: x\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let e = parse(raw).unwrap_err();
            assert_eq!(e.status, status, "{:?}", String::from_utf8_lossy(raw));
            assert!(e.body["Err"].as_str().is_some_and(|s| !s.is_empty()));
        }
        let mut big = b"POST / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(parse(&big).unwrap_err().status, 431);
    }

    #[test]
    fn a_connection_gets_one_reply_and_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_conn(&b, &|m, body| {
                Reply::ok(json!({ "method": m, "len": body.len() }))
            })
            .unwrap();
        });
        let mut w = &a;
        w.write_all(b"POST /NetworkDriver.Leave HTTP/1.1\r\nContent-Length: 3\r\n\r\n{ }")
            .unwrap();
        let mut out = String::new();
        (&a).read_to_string(&mut out).unwrap();
        t.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        assert!(
            out.ends_with("{\"method\":\"NetworkDriver.Leave\",\"len\":3}"),
            "{out}"
        );
    }
}
