//! Just enough HTTP/1.1 framing for the load generator and the stand-in agent: read one
//! message (request or response) whose body is framed by `content-length`, and say what its
//! start line and `connection` header were. Anything else (chunked bodies, a head over
//! 64 KiB) is an error, so a surprise fails the run instead of skewing it.

use std::io;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The largest message head read.
const MAX_HEAD: usize = 64 * 1024;

/// One whole message at the start of a connection's buffer.
#[derive(Debug)]
pub struct Message {
    /// Bytes of the message (head and body) at the start of the buffer.
    pub len: usize,
    /// Bytes of the start line (without its CRLF).
    pub start_line: usize,
    /// Whether the sender closes the connection after this message.
    pub close: bool,
}

impl Message {
    /// The status code, when `buf` starts with a response.
    pub fn status(&self, buf: &[u8]) -> Option<u16> {
        let line = buf.get(..self.start_line)?;
        let code = line.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
        std::str::from_utf8(code).ok()?.parse().ok()
    }
}

/// Reads until `buf` holds one whole message; `None` when the peer closed the connection
/// before sending any byte of one.
pub async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Message>> {
    let mut scanned = 0;
    let head = loop {
        if let Some(end) = find_head_end(buf, scanned) {
            break end;
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() > MAX_HEAD {
            return Err(invalid("a message head over 64 KiB"));
        }
        if !fill(stream, buf).await? {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    };
    let (start_line, content_length, close) = parse_head(&buf[..head])?;
    let len = head + content_length;
    while buf.len() < len {
        if !fill(stream, buf).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(Message {
        len,
        start_line,
        close,
    }))
}

/// Reads more bytes into `buf`; `false` at the end of the stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.reserve(8 * 1024);
    Ok(stream.read_buf(buf).await? > 0)
}

/// The length of the head (through its blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// (start line length, body length, connection: close) of a head.
fn parse_head(head: &[u8]) -> io::Result<(usize, usize, bool)> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("a head that is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().len();
    let mut content_length = 0;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| invalid("a content-length that is not a number"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid(
                "a chunked body (only content-length bodies are read)",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok((start_line, content_length, close))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the peer sent {what}"))
}
