//! Just enough HTTP for the tests: a page server per backend and a GET through tor's SOCKS port.
//!
//! Each onion-service backend forwards its virtual port 80 to its own [`HttpServer`], which
//! answers every request with one fixed page, so a test can tell from the body which backend
//! served it. [`get_via_socks`] is the other end: an HTTP/1.0 GET through a SOCKS5 proxy, naming
//! the host by domain name (tor resolves `.onion` itself) and authenticating with a username and
//! password. Tor isolates streams by SOCKS credentials (`IsolateSOCKSAuth`, on by default), so
//! a fresh username gets fresh circuits: that is how a test makes independent attempts.
//!
//! HTTP/1.0 with `Connection: close` keeps both sides trivial: the body is everything after
//! the header, up to EOF. Every socket operation has a deadline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{is_retryable_read, HarnessError};

/// How long the server waits for a request's header.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests and responses larger than this are refused (ours are a few hundred bytes).
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Serves one fixed page on 127.0.0.1 until dropped.
pub struct HttpServer {
    addr: SocketAddr,
    shutting_down: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listen on a fresh port of 127.0.0.1 and answer every request with `body`.
    pub fn start(body: String) -> Result<HttpServer, HarnessError> {
        HttpServer::start_on(0, body)
    }

    /// Listen on `port` of 127.0.0.1 (0: a fresh one) and answer every request with `body`.
    pub fn start_on(port: u16, body: String) -> Result<HttpServer, HarnessError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| HarnessError::new(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| {
            HarnessError::new(format!("cannot read the HTTP server's address: {e}"))
        })?;
        let shutting_down = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutting_down);
        let body: Arc<str> = body.into();
        let accept_thread = thread::Builder::new()
            .name(format!("http-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    // A failed accept (e.g. the peer gave up) concerns that connection only.
                    let Ok(stream) = stream else { continue };
                    let body = Arc::clone(&body);
                    // One thread per connection, so a stalled client cannot hold up the others.
                    let _ = thread::Builder::new().spawn(move || serve(stream, &body));
                }
            })
            .map_err(|e| HarnessError::new(format!("cannot start the HTTP server thread: {e}")))?;
        Ok(HttpServer {
            addr,
            shutting_down,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening: connections to its port are refused from now on.
    pub fn stop(&mut self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // `accept` has no timeout: wake it with a connection of our own so it sees the flag.
        // If that connection fails, the listener is gone already and the thread has ended.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answer one connection: read the request header, send the page, close.
fn serve(mut stream: TcpStream, body: &str) {
    if stream.set_read_timeout(Some(SERVER_READ_TIMEOUT)).is_err() {
        return;
    }
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_MESSAGE_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The client may have gone away; nothing to do about it.
    let _ = stream.write_all(response.as_bytes());
}

/// A parsed `http://host[:port]/path` URL.
struct Url<'a> {
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>, HarnessError> {
    let bad = |why: &str| HarnessError::new(format!("unsupported URL {url:?}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(|_| bad("bad port"))?),
        None => (authority, 80),
    };
    if host.is_empty() || host.len() > 255 {
        return Err(bad("bad host"));
    }
    Ok(Url { host, port, path })
}

/// HTTP GET `url` through the SOCKS5 proxy at `socks`, authenticating as `username`
/// (tor gives each distinct username its own circuits). Returns the body of a 200 response.
pub fn get_via_socks(
    socks: SocketAddr,
    url: &str,
    username: &str,
    timeout: Duration,
) -> Result<String, HarnessError> {
    let deadline = Instant::now() + timeout;
    let target = parse_url(url)?;
    let mut stream = connect(socks, deadline)?;
    socks5_connect(&mut stream, &target, username, deadline)
        .map_err(|e| e.context(format!("GET {url}")))?;
    exchange(&mut stream, &target, deadline).map_err(|e| e.context(format!("GET {url}")))
}

/// HTTP GET `path` straight from `addr` (no proxy). Returns the body of a 200 response.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, HarnessError> {
    let deadline = Instant::now() + timeout;
    let host = addr.ip().to_string();
    let target = Url {
        host: &host,
        port: addr.port(),
        path,
    };
    let mut stream = connect(addr, deadline)?;
    exchange(&mut stream, &target, deadline)
        .map_err(|e| e.context(format!("GET http://{addr}{path}")))
}

fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, HarnessError> {
    TcpStream::connect_timeout(&addr, time_left(deadline)?)
        .map_err(|e| HarnessError::new(format!("cannot connect to {addr}: {e}")))
}

/// RFC 1928 CONNECT by domain name, after RFC 1929 username/password authentication.
fn socks5_connect(
    stream: &mut TcpStream,
    target: &Url<'_>,
    username: &str,
    deadline: Instant,
) -> Result<(), HarnessError> {
    const VERSION: u8 = 5;
    const METHOD_USERPASS: u8 = 2;
    const USERPASS_VERSION: u8 = 1;
    const CMD_CONNECT: u8 = 1;
    const ATYP_IPV4: u8 = 1;
    const ATYP_DOMAIN: u8 = 3;
    const ATYP_IPV6: u8 = 4;

    // RFC 1929 needs 1..=255 bytes; an empty isolation token still gets a fixed, valid name.
    let username = if username.is_empty() {
        "rustbalance"
    } else {
        username
    };
    let user = u8::try_from(username.len())
        .map_err(|_| HarnessError::new("SOCKS username longer than 255 bytes"))?;
    let host_len = u8::try_from(target.host.len())
        .map_err(|_| HarnessError::new("host name longer than 255 bytes"))?;

    send(stream, &[VERSION, 1, METHOD_USERPASS], deadline)?;
    let choice = receive::<2>(stream, deadline)?;
    if choice != [VERSION, METHOD_USERPASS] {
        return Err(HarnessError::new(format!(
            "SOCKS proxy refused username/password auth (reply {choice:?})"
        )));
    }

    // Tor accepts any credentials; the password is fixed, the username carries the isolation.
    let password = b"x";
    let mut auth = vec![USERPASS_VERSION, user];
    auth.extend_from_slice(username.as_bytes());
    auth.push(1);
    auth.extend_from_slice(password);
    send(stream, &auth, deadline)?;
    let status = receive::<2>(stream, deadline)?;
    if status[1] != 0 {
        return Err(HarnessError::new(format!(
            "SOCKS authentication failed (status {})",
            status[1]
        )));
    }

    let mut request = vec![VERSION, CMD_CONNECT, 0, ATYP_DOMAIN, host_len];
    request.extend_from_slice(target.host.as_bytes());
    request.extend_from_slice(&target.port.to_be_bytes());
    send(stream, &request, deadline)?;
    let [_, reply, _, atyp] = receive::<4>(stream, deadline)?;
    if reply != 0 {
        return Err(HarnessError::new(format!(
            "SOCKS CONNECT to {}:{} failed: {}",
            target.host,
            target.port,
            socks_reply_meaning(reply)
        )));
    }
    // Skip the bound address and port that follow a successful reply.
    let address_len = match atyp {
        ATYP_IPV4 => 4,
        ATYP_IPV6 => 16,
        ATYP_DOMAIN => usize::from(receive::<1>(stream, deadline)?[0]),
        other => {
            return Err(HarnessError::new(format!(
                "SOCKS reply with unknown address type {other}"
            )))
        }
    };
    let mut rest = vec![0u8; address_len + 2];
    read_exact(stream, &mut rest, deadline)
}

/// RFC 1928 reply codes, plus tor's onion-service codes (`ExtendedErrors`, tor's socks-extensions).
fn socks_reply_meaning(code: u8) -> String {
    let meaning = match code {
        0x01 => "general failure",
        0x02 => "not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired (timeout)",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        0xF0 => "onion service descriptor not found",
        0xF1 => "onion service descriptor invalid",
        0xF2 => "onion service introduction failed",
        0xF3 => "onion service rendezvous failed",
        0xF4 => "onion service client authorization missing",
        0xF5 => "onion service client authorization wrong",
        0xF6 => "invalid onion address",
        0xF7 => "onion service introduction timed out",
        _ => "unknown error",
    };
    format!("{meaning} (SOCKS reply {code:#04x})")
}

/// Send a GET and return the body of a 200 response.
fn exchange(
    stream: &mut TcpStream,
    target: &Url<'_>,
    deadline: Instant,
) -> Result<String, HarnessError> {
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    send(stream, request.as_bytes(), deadline)?;
    let response = read_to_end(stream, deadline)?;
    let header_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            HarnessError::new(format!(
                "HTTP response without a complete header ({} bytes)",
                response.len()
            ))
        })?;
    let header = String::from_utf8_lossy(&response[..header_end]);
    let status_line = header.lines().next().unwrap_or("");
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(HarnessError::new(format!("HTTP status {status_line:?}")));
    }
    Ok(String::from_utf8_lossy(&response[header_end + 4..]).into_owned())
}

fn time_left(deadline: Instant) -> Result<Duration, HarnessError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| HarnessError::new("timed out"))
}

fn send(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> Result<(), HarnessError> {
    stream
        .set_write_timeout(Some(time_left(deadline)?))
        .and_then(|()| stream.write_all(bytes))
        .map_err(|e| HarnessError::new(format!("write failed: {e}")))
}

fn receive<const N: usize>(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<[u8; N], HarnessError> {
    let mut buf = [0u8; N];
    read_exact(stream, &mut buf, deadline)?;
    Ok(buf)
}

fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), HarnessError> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(stream, &mut buf[filled..], deadline)? {
            0 => return Err(HarnessError::new("connection closed early")),
            n => filled += n,
        }
    }
    Ok(())
}

fn read_to_end(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, HarnessError> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match read_some(stream, &mut chunk, deadline)? {
            0 => return Ok(data),
            n if data.len() + n > MAX_MESSAGE_BYTES => {
                return Err(HarnessError::new("HTTP response larger than 1 MiB"))
            }
            n => data.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One read that gives up at `deadline`.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, HarnessError> {
    loop {
        stream
            .set_read_timeout(Some(time_left(deadline)?))
            .map_err(|e| HarnessError::new(format!("cannot set socket timeout: {e}")))?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if is_retryable_read(&e) => continue,
            Err(e) => return Err(HarnessError::new(format!("read failed: {e}"))),
        }
    }
}
