//! A minimal client for tor's control port (control-spec.txt), synchronous and with deadlines.
//!
//! The harness uses the control port as its window into each tor: bootstrap progress
//! (`GETINFO status/bootstrap-phase`), reloading relays (`SIGNAL RELOAD`), enabling a backend's
//! network only once we listen for its events, onion-service descriptor events (`HS_DESC`) and
//! the client's independent view of what HSDirs hold (`HSFETCH` + `HS_DESC_CONTENT`).
//!
//! Protocol in brief: commands are lines; a reply is one or more lines `CODE-text` (more
//! follows), `CODE+text` (a data block follows, ended by a line holding a single `.`, with a
//! leading `.` doubled on data lines) and a final `CODE text`. Asynchronous events are replies
//! with code 650 that can arrive at any time, also between a command and its reply, so they are
//! queued while a command waits.
//!
//! Every read has a deadline. After a read timed out the connection may be in the middle of a
//! reply, so it refuses further use.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{is_retryable_read, HarnessError};

/// Reply code of asynchronous events.
const EVENT_CODE: u16 = 650;
/// Reply code of success.
const OK_CODE: u16 = 250;
/// A single socket operation never waits longer than this, even before a distant deadline.
const MAX_IO_WAIT: Duration = Duration::from_secs(60);

/// One line of a reply, with the data block that followed it if it was a `CODE+` line.
#[derive(Debug, Clone)]
pub struct ReplyLine {
    pub text: String,
    pub data: Option<String>,
}

/// A complete reply (or event): its status code and lines, without the codes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<ReplyLine>,
}

/// An authenticated control connection.
pub struct ControlConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Events that arrived while a command waited for its reply.
    events: VecDeque<Reply>,
    /// Bytes of a line whose end has not arrived yet (kept across a timed-out read).
    partial: Vec<u8>,
    /// Set after a timeout in the middle of a reply: the stream position is then unknown.
    broken: bool,
}

impl ControlConn {
    /// Connect and authenticate with the cookie file tor wrote (`CookieAuthentication 1`).
    pub fn connect(
        addr: SocketAddr,
        cookie_file: &Path,
        deadline: Instant,
    ) -> Result<ControlConn, HarnessError> {
        let timeout = remaining(deadline)
            .ok_or_else(|| HarnessError::new("deadline passed before connecting"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
            HarnessError::new(format!("cannot connect to control port {addr}: {e}"))
        })?;
        let writer = stream
            .try_clone()
            .map_err(|e| HarnessError::new(format!("cannot clone control socket: {e}")))?;
        let mut conn = ControlConn {
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            partial: Vec::new(),
            broken: false,
        };
        let cookie = std::fs::read(cookie_file).map_err(|e| {
            HarnessError::new(format!(
                "cannot read control cookie {}: {e}",
                cookie_file.display()
            ))
        })?;
        conn.command(&format!("AUTHENTICATE {}", hex(&cookie)), deadline)?;
        Ok(conn)
    }

    /// Send one command and return its reply lines; a non-250 reply is an error.
    pub fn command(
        &mut self,
        command: &str,
        deadline: Instant,
    ) -> Result<Vec<ReplyLine>, HarnessError> {
        self.send(command)?;
        loop {
            let reply = self.read_reply(deadline)?.ok_or_else(|| {
                HarnessError::new(format!(
                    "no reply to control command {:?} in time",
                    verb(command)
                ))
            })?;
            if reply.code == EVENT_CODE {
                self.events.push_back(reply);
                continue;
            }
            if reply.code != OK_CODE {
                let text: Vec<&str> = reply.lines.iter().map(|l| l.text.as_str()).collect();
                return Err(HarnessError::new(format!(
                    "control command {:?} failed: {} {}",
                    verb(command),
                    reply.code,
                    text.join(" / ")
                )));
            }
            return Ok(reply.lines);
        }
    }

    /// The value of one `GETINFO` key.
    pub fn getinfo(&mut self, key: &str, deadline: Instant) -> Result<String, HarnessError> {
        let lines = self.command(&format!("GETINFO {key}"), deadline)?;
        let prefix = format!("{key}=");
        lines
            .into_iter()
            .find_map(|line| match line.data {
                Some(data) if line.text.starts_with(&prefix) => Some(data),
                _ => line.text.strip_prefix(&prefix).map(str::to_owned),
            })
            .ok_or_else(|| HarnessError::new(format!("GETINFO {key}: key missing from the reply")))
    }

    /// The next asynchronous event, or `None` if none arrived before `deadline`.
    pub fn next_event(&mut self, deadline: Instant) -> Result<Option<Reply>, HarnessError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.read_reply(deadline)? {
                None => return Ok(None),
                Some(reply) if reply.code == EVENT_CODE => return Ok(Some(reply)),
                // A stray non-event reply cannot happen since every command waits for its own;
                // skip it rather than misreading it as an event.
                Some(_) => continue,
            }
        }
    }

    fn send(&mut self, command: &str) -> Result<(), HarnessError> {
        if self.broken {
            return Err(HarnessError::new(
                "control connection unusable after an earlier timeout",
            ));
        }
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .map_err(|e| {
                HarnessError::new(format!(
                    "cannot send control command {:?}: {e}",
                    verb(command)
                ))
            })
    }

    /// Read one whole reply; `None` if the deadline passed before its first line.
    fn read_reply(&mut self, deadline: Instant) -> Result<Option<Reply>, HarnessError> {
        if self.broken {
            return Err(HarnessError::new(
                "control connection unusable after an earlier timeout",
            ));
        }
        let Some(first) = self.read_line(deadline)? else {
            return Ok(None);
        };
        let mut lines = Vec::new();
        let mut line = first;
        loop {
            let (code, separator, text) = split_reply_line(&line)?;
            let data = if separator == '+' {
                Some(self.read_data_block(deadline)?)
            } else {
                None
            };
            lines.push(ReplyLine {
                text: text.to_owned(),
                data,
            });
            if separator == ' ' {
                return Ok(Some(Reply { code, lines }));
            }
            line = self.must_read_line(deadline)?;
        }
    }

    /// Lines up to the terminating ".", dot-unescaped and joined with "\n" (with a final "\n").
    fn read_data_block(&mut self, deadline: Instant) -> Result<String, HarnessError> {
        let mut data = String::new();
        loop {
            let line = self.must_read_line(deadline)?;
            if line == "." {
                return Ok(data);
            }
            data.push_str(line.strip_prefix('.').unwrap_or(&line));
            data.push('\n');
        }
    }

    /// A line in the middle of a reply: a timeout here leaves the stream unusable.
    fn must_read_line(&mut self, deadline: Instant) -> Result<String, HarnessError> {
        match self.read_line(deadline)? {
            Some(line) => Ok(line),
            None => {
                self.broken = true;
                Err(HarnessError::new(
                    "control reply cut short: deadline passed in the middle of it",
                ))
            }
        }
    }

    /// One line without its CRLF; `None` on deadline (the partial line is kept for next time).
    fn read_line(&mut self, deadline: Instant) -> Result<Option<String>, HarnessError> {
        loop {
            let Some(wait) = remaining(deadline) else {
                return Ok(None);
            };
            self.reader
                .get_ref()
                .set_read_timeout(Some(wait.min(MAX_IO_WAIT)))
                .map_err(|e| {
                    HarnessError::new(format!("cannot set control socket timeout: {e}"))
                })?;
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => return Err(HarnessError::new("control connection closed by tor")),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let bytes = std::mem::take(&mut self.partial);
                    let line = String::from_utf8_lossy(&bytes);
                    return Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()));
                }
                // EOF in the middle of a line: the next read reports it.
                Ok(_) => continue,
                Err(e) if is_retryable_read(&e) => continue,
                Err(e) => {
                    return Err(HarnessError::new(format!(
                        "control connection read failed: {e}"
                    )))
                }
            }
        }
    }
}

/// Split `250-text` into (250, '-', "text").
fn split_reply_line(line: &str) -> Result<(u16, char, &str), HarnessError> {
    let malformed = || HarnessError::new(format!("malformed control reply line {line:?}"));
    let code = line
        .get(..3)
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    let separator = line
        .get(3..4)
        .and_then(|s| s.chars().next())
        .ok_or_else(malformed)?;
    if !matches!(separator, ' ' | '-' | '+') {
        return Err(malformed());
    }
    Ok((code, separator, &line[4..]))
}

/// The command's first word, for messages (never the AUTHENTICATE secret).
fn verb(command: &str) -> &str {
    command.split_whitespace().next().unwrap_or("")
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
