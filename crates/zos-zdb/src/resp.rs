//! RESP codec: an incremental, allocation-bounded request parser and a reply encoder.
//!
//! The parser is pure: it looks at the bytes received so far and either returns one complete
//! request (as ranges into the buffer, no copy), asks for more bytes, or rejects the input.
//! Limits are checked on every header *before* waiting for the bytes it announces, so a
//! client claiming a 4 GiB bulk is refused at once and nothing is ever allocated from a
//! claimed length.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Most arguments (command name included) in one request; `*1025` is refused.
pub const MAX_ARGS: usize = 1024;
/// Most bytes in one bulk string (a value): 8 MiB, as upstream.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// Most bytes of all bulk strings of one request: one full value plus room for the command,
/// key and other small arguments.
pub const MAX_REQUEST_PAYLOAD: usize = MAX_PAYLOAD + 64 * 1024;
/// Longest header line (`*1024` / `$8388608`), generous; a longer one is an error.
const MAX_HEADER_LINE: usize = 24;
/// Upper bound of one request's encoded size: the read buffer never needs more.
pub const MAX_FRAME: usize =
    MAX_REQUEST_PAYLOAD + MAX_ARGS * (MAX_HEADER_LINE + 4) + MAX_HEADER_LINE + 2;

/// Why a request was refused. The connection is closed after replying with it, since the
/// stream position can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The request is not a RESP array (inline commands and other types are refused).
    #[error("Protocol error: expected array, got byte 0x{0:02x}")]
    NotArray(u8),
    /// An array element is not a bulk string.
    #[error("Protocol error: expected bulk string, got byte 0x{0:02x}")]
    NotBulk(u8),
    /// A length is not a decimal number, is negative, or its line is too long.
    #[error("Protocol error: invalid length")]
    BadLength,
    /// An empty array (`*0`) carries no command.
    #[error("Protocol error: empty request")]
    Empty,
    /// More than [`MAX_ARGS`] arguments.
    #[error("Too many arguments ({0}, at most 1024)")]
    TooManyArgs(u64),
    /// A bulk string is over [`MAX_PAYLOAD`] or all of them over [`MAX_REQUEST_PAYLOAD`].
    #[error("Payload too large ({0} bytes, at most 8 MiB)")]
    PayloadTooLarge(u64),
    /// A bulk string is not followed by CRLF.
    #[error("Protocol error: missing CRLF after bulk string")]
    MissingCrlf,
}

/// One complete request: argument ranges into the parsed buffer, and how many bytes it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Byte ranges of each argument inside the buffer given to [`parse_request`].
    pub args: Vec<Range<usize>>,
    /// Bytes consumed by this request.
    pub len: usize,
}

/// Reads a decimal header line starting at `pos` (after its type byte).
/// `Ok(None)`: the line is not complete yet.
fn read_len(buf: &[u8], pos: usize) -> Result<Option<(u64, usize)>, RespError> {
    let rest = &buf[pos.min(buf.len())..];
    let window = &rest[..rest.len().min(MAX_HEADER_LINE)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if rest.len() >= MAX_HEADER_LINE {
            Err(RespError::BadLength)
        } else {
            Ok(None)
        };
    };
    if cr + 1 >= rest.len() {
        return Ok(None);
    }
    if rest[cr + 1] != b'\n' || cr == 0 {
        return Err(RespError::BadLength);
    }
    let mut n: u64 = 0;
    for &b in &rest[..cr] {
        if !b.is_ascii_digit() {
            return Err(RespError::BadLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(RespError::BadLength)?;
    }
    Ok(Some((n, pos + cr + 2)))
}

/// Length of the empty lines (CR/LF bytes) at the start of `buf`. Redis ignores empty
/// inline lines and `redis-cli --pipe` sends one before its closing `ECHO`; the caller
/// discards them so that they can never accumulate.
pub fn blank_prefix(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Parses one request at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(frame))` for a complete request
/// and `Err` for input that can never become valid.
pub fn parse_request(buf: &[u8]) -> Result<Option<Frame>, RespError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return Err(RespError::NotArray(first));
    }
    let Some((count, mut pos)) = read_len(buf, 1)? else {
        return Ok(None);
    };
    if count == 0 {
        return Err(RespError::Empty);
    }
    if count > MAX_ARGS as u64 {
        return Err(RespError::TooManyArgs(count));
    }
    // `count` is bounded above, so this allocation is bounded (at most 24 KiB).
    let mut args = Vec::with_capacity(count as usize);
    let mut total: u64 = 0;
    for _ in 0..count {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(RespError::NotBulk(kind));
        }
        let Some((len, start)) = read_len(buf, pos + 1)? else {
            return Ok(None);
        };
        total += len;
        if len > MAX_PAYLOAD as u64 {
            return Err(RespError::PayloadTooLarge(len));
        }
        if total > MAX_REQUEST_PAYLOAD as u64 {
            return Err(RespError::PayloadTooLarge(total));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        args.push(start..end);
        pos = end + 2;
    }
    Ok(Some(Frame { args, len: pos }))
}

/// A lower bound of the encoded size of the incomplete request at the start of `buf`, from
/// the headers received so far (used to size the read buffer of a large request without
/// doubling past it). Call only when [`parse_request`] returned `Ok(None)`; never more
/// than [`MAX_FRAME`].
pub fn needed_len(buf: &[u8]) -> usize {
    let floor = buf.len() + 1;
    let Ok(Some((count, mut pos))) = read_len(buf, 1) else {
        return floor.min(MAX_FRAME);
    };
    for _ in 0..count.min(MAX_ARGS as u64) {
        if buf.get(pos) != Some(&b'$') {
            break;
        }
        let Ok(Some((len, start))) = read_len(buf, pos + 1) else {
            break;
        };
        // Lengths were checked against the limits by parse_request; clamp anyway.
        pos = start.saturating_add(len.min(MAX_PAYLOAD as u64) as usize + 2);
        if pos > buf.len() {
            break;
        }
    }
    pos.max(floor).min(MAX_FRAME)
}

/// A reply, encoded by [`Reply::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Simple(Cow<'static, str>),
    /// `-text` (CR and LF are replaced so that the stream stays framed).
    Error(Cow<'static, str>),
    /// `:n`
    Int(i64),
    /// `$len` + bytes
    Bulk(Bytes),
    /// `$-1`
    Nil,
    /// `*n` + elements
    Array(Vec<Reply>),
}

impl Reply {
    /// `+OK`
    pub const fn ok() -> Reply {
        Reply::Simple(Cow::Borrowed("OK"))
    }

    /// An error reply from any message.
    pub fn err(msg: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(msg.into())
    }

    /// A bulk reply copied from a byte slice.
    pub fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(b))
    }

    /// Appends the wire encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean);
            }
            Reply::Int(n) => {
                let mut buf = [0u8; 21];
                let digits = decimal(n.unsigned_abs(), &mut buf);
                if *n < 0 {
                    out.put_slice(b":-");
                    out.put_slice(digits);
                    out.put_slice(b"\r\n");
                } else {
                    line(out, b':', digits);
                }
            }
            Reply::Bulk(b) => {
                out.reserve(b.len() + 16);
                let mut buf = [0u8; 21];
                line(out, b'$', decimal(b.len() as u64, &mut buf));
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                let mut buf = [0u8; 21];
                line(out, b'*', decimal(items.len() as u64, &mut buf));
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// Encoded size, used to bound replies before building them.
    pub fn encoded_len(&self) -> usize {
        match self {
            Reply::Simple(s) | Reply::Error(s) => s.len() + 3,
            Reply::Int(_) => 24,
            Reply::Bulk(b) => b.len() + 16,
            Reply::Nil => 5,
            Reply::Array(items) => 16 + items.iter().map(Reply::encoded_len).sum::<usize>(),
        }
    }
}

/// Formats `n` in decimal into the end of `buf` without allocating (replies are hot).
fn decimal(mut n: u64, buf: &mut [u8; 21]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(kind);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_req(args: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    #[test]
    fn parses_complete_and_partial() {
        let req = encode_req(&[b"SET", b"k", b"v\r\nx"]);
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]), Ok(None), "cut at {cut}");
        }
        let f = parse_request(&req).unwrap().unwrap();
        assert_eq!(f.len, req.len());
        let args: Vec<&[u8]> = f.args.iter().map(|r| &req[r.clone()]).collect();
        assert_eq!(args, vec![&b"SET"[..], b"k", b"v\r\nx"]);
    }

    #[test]
    fn rejects_hostile_headers_before_data() {
        assert_eq!(
            parse_request(b"*1025\r\n"),
            Err(RespError::TooManyArgs(1025))
        );
        assert_eq!(
            parse_request(b"*1\r\n$4294967296\r\n"),
            Err(RespError::PayloadTooLarge(4294967296))
        );
        assert_eq!(
            parse_request(b"*1\r\n$99999999999999999999999\r\n"),
            Err(RespError::BadLength)
        );
        assert_eq!(parse_request(b"*-1\r\n"), Err(RespError::BadLength));
        assert_eq!(parse_request(b"PING\r\n"), Err(RespError::NotArray(b'P')));
        assert_eq!(
            parse_request(b"*1\r\n:1\r\n"),
            Err(RespError::NotBulk(b':'))
        );
        assert_eq!(parse_request(b"*0\r\n"), Err(RespError::Empty));
        assert_eq!(
            parse_request(b"*1\r\n$1\r\nab\r\n"),
            Err(RespError::MissingCrlf)
        );
        assert_eq!(parse_request(&[b'*'; 40]), Err(RespError::BadLength));
        assert_eq!(
            parse_request(b"*2\r\n$3\r\nSET\r\n$8388609\r\n"),
            Err(RespError::PayloadTooLarge(8388609))
        );
        // Two 5 MiB args: each fits but the sum does not.
        let hdr = b"*3\r\n$3\r\nSET\r\n$5242880\r\n";
        let mut big = hdr.to_vec();
        big.extend(std::iter::repeat_n(b'a', 5 << 20));
        big.extend_from_slice(b"\r\n$5242880\r\n");
        assert!(matches!(
            parse_request(&big),
            Err(RespError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn needed_len_sees_the_announced_value() {
        let mut req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n".to_vec();
        let full = req.len() + 1000 + 2;
        assert_eq!(needed_len(&req), full);
        req.extend_from_slice(&[b'x'; 10]);
        assert_eq!(needed_len(&req), full);
        assert_eq!(needed_len(b"*3\r\n$3"), 7);
        assert_eq!(needed_len(b"junk"), 5);
    }

    #[test]
    fn max_args_accepted() {
        let args: Vec<&[u8]> = std::iter::repeat_n(&b"x"[..], MAX_ARGS).collect();
        let req = encode_req(&args);
        assert_eq!(parse_request(&req).unwrap().unwrap().args.len(), MAX_ARGS);
    }

    #[test]
    fn encodes_replies() {
        let mut out = BytesMut::new();
        Reply::Array(vec![
            Reply::ok(),
            Reply::err("bad\r\nthing"),
            Reply::Int(-3),
            Reply::bulk(b"ab"),
            Reply::Nil,
        ])
        .encode(&mut out);
        assert_eq!(
            &out[..],
            b"*5\r\n+OK\r\n-bad  thing\r\n:-3\r\n$2\r\nab\r\n$-1\r\n"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some(f)) = parse_request(&data) {
                prop_assert!(f.len <= data.len());
                for r in f.args { prop_assert!(r.end <= f.len); }
            }
        }

        #[test]
        fn mutated_frames_never_panic(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut req = encode_req(&refs);
            let clean = req.clone();
            let f = parse_request(&clean).unwrap().unwrap();
            prop_assert_eq!(f.len, clean.len());
            for (i, b) in flips { let n = req.len(); req[i % n] = b; }
            let cut = cut % (req.len() + 1);
            let _ = parse_request(&req[..cut]);
            let _ = parse_request(&req);
        }
    }
}
