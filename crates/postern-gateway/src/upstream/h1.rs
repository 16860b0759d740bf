//! HTTP/1.1 on the wire toward upstreams, without I/O: the request head
//! postern writes, the response head it reads, and how that response's body
//! is delimited.
//!
//! A keep-alive connection carries one user's request after another's, so a
//! response whose end is misjudged would hand the rest of it, or a forged
//! one, to the next user (response splitting). Everything here therefore
//! reads framing strictly (RFC 9112 §6) and refuses what is ambiguous rather
//! than guessing:
//! - `Content-Length` and `Transfer-Encoding` together, `Content-Length`
//!   values that differ or are not plain digits, a `Transfer-Encoding` that
//!   does not end in `chunked` (or names it twice), and `Transfer-Encoding`
//!   on an HTTP/1.0 answer are errors;
//! - a header line folded over several lines (obs-fold), a control
//!   character in a value, and a head over [`MAX_HEAD_BYTES`] or
//!   [`MAX_HEADERS`] are errors (httparse's strict defaults); a head whose
//!   lines end in a bare `LF` is read as RFC 9112 §2.2 allows, since only
//!   this parser reads it;
//! - inside a chunked body every line must end in `CRLF`;
//! - a body with no length runs to the end of the connection, which is then
//!   never reused.
//!
//! Postern writes the request's own framing from the body it holds: any
//! `Content-Length` or `Transfer-Encoding` in the header map is dropped.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// Header lines accepted in one response head (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Bytes accepted in one response head, status line included.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes accepted for a chunk-size line, or for all trailer lines.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Write the request head: request line, `headers`, then `own` (postern's
/// headers, which replace any of the same name in `headers`), postern's
/// framing, blank line. `body_len` is the length of the body that follows.
pub(crate) fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    own: &[(HeaderName, HeaderValue)],
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &HeaderName, value: &HeaderValue| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || own.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        line(name, value);
    }
    for (name, value) in own {
        line(name, value);
    }
    // As hyper does: a length for any body, and an explicit zero where the
    // method is expected to carry one.
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(digits.format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: a `HEAD` answer, 1xx, 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// No length given: the body is whatever comes until the upstream closes.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this body is read.
    pub keep_alive: bool,
}

/// Why a response head or body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response header `{0}`")]
    Header(String),
    #[error("ambiguous framing: {0}")]
    Framing(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// Parse one response head at the start of `buf`. `Ok(None)`: not all of
/// it has arrived. On success the head's bytes are taken off `buf` (the
/// header values share them, without copies).
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Head>, WireError> {
    // Not initialized up front: httparse fills what it parses.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WireError::Malformed(e)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(WireError::HeadTooLarge);
    }
    let version = if resp.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| WireError::Malformed(httparse::Error::Status))?;
    // Where each name and value sits, so that the values can share the
    // head's bytes once it is split off.
    let mut spans = [(Span::default(), Span::default()); MAX_HEADERS];
    let count = resp.headers.len();
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        *span = (Span::of(buf, h.name.as_bytes()), Span::of(buf, h.value));
    }
    let head = buf.split_to(len).freeze();

    // Room for the one header postern adds to every answer.
    let mut headers = HeaderMap::with_capacity(count + 1);
    let mut length: Option<u64> = None;
    let mut te = TransferCoding::None;
    let mut close = false;
    let mut connection = false;
    for &(name, value) in spans.iter().take(count) {
        let name_bytes = head.get(name.range()).unwrap_or_default();
        let name = HeaderName::from_bytes(name_bytes)
            .map_err(|_| WireError::Header(String::from_utf8_lossy(name_bytes).into_owned()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.range()))
            .map_err(|_| WireError::Header(name.as_str().to_string()))?;
        if name == CONTENT_LENGTH {
            length = Some(content_length(value.as_bytes(), length)?);
        } else if name == TRANSFER_ENCODING {
            te = te.then(value.as_bytes())?;
        } else if name == CONNECTION {
            close |= has_token(value.as_bytes(), b"close");
            connection = true;
        }
        // Hop-by-hop headers end here, as the gateway would drop them anyway
        // (`headers::sanitize_response`, which still runs).
        if !crate::headers::is_hop_by_hop(&name) {
            headers.append(name, value);
        }
    }
    // So do the headers `Connection` names (rare beyond close/keep-alive).
    if connection {
        for &(name, value) in spans.iter().take(count) {
            let name_bytes = head.get(name.range()).unwrap_or_default();
            if !name_bytes.eq_ignore_ascii_case(b"connection") {
                continue;
            }
            let value = head.get(value.range()).unwrap_or_default();
            crate::headers::remove_named_by(&mut headers, value);
        }
    }

    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (te, length) {
        (TransferCoding::None, _) if no_body => Framing::Empty,
        (TransferCoding::None, Some(n)) => Framing::Length(n),
        (TransferCoding::None, None) => Framing::UntilClose,
        (_, Some(_)) => {
            return Err(WireError::Framing(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (_, None) if version == Version::HTTP_10 => {
            return Err(WireError::Framing(
                "Transfer-Encoding on an HTTP/1.0 response",
            ))
        }
        (TransferCoding::Chunked, None) if no_body => Framing::Empty,
        (TransferCoding::Chunked, None) => Framing::Chunked,
        (TransferCoding::Other, None) => {
            return Err(WireError::Framing(
                "Transfer-Encoding does not end in chunked",
            ))
        }
    };
    let keep_alive = version == Version::HTTP_11
        && !close
        && framing != Framing::UntilClose
        && status != StatusCode::SWITCHING_PROTOCOLS;
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// Where a part of a head sits in the buffer it was parsed from (a head of
/// at most 64 KiB), as offsets that stay valid once the head is split off
/// and frozen: its names and values can then share the head's bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span(u32, u32);

impl Span {
    /// `part`, a slice of `buf`, as a span of it.
    pub(crate) fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        Span(start as u32, (start + part.len()) as u32)
    }

    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.0 as usize..self.1 as usize
    }
}

/// The transfer codings named so far, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCoding {
    None,
    /// `chunked` is the last coding (and appears once).
    Chunked,
    /// Some coding other than `chunked` is last.
    Other,
}

impl TransferCoding {
    fn then(self, value: &[u8]) -> Result<TransferCoding, WireError> {
        let mut now = self;
        for token in value.split(|&b| b == b',').map(trim) {
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case(b"chunked") {
                if now == TransferCoding::Chunked {
                    return Err(WireError::Framing("chunked applied twice"));
                }
                now = TransferCoding::Chunked;
            } else if now == TransferCoding::Chunked {
                return Err(WireError::Framing("a coding after chunked"));
            } else {
                now = TransferCoding::Other;
            }
        }
        Ok(now)
    }
}

/// One `Content-Length` line (a list of equal values is allowed, RFC 9110
/// §8.6), agreeing with any seen before.
fn content_length(value: &[u8], before: Option<u64>) -> Result<u64, WireError> {
    let mut seen = before;
    let mut any = false;
    for item in value.split(|&b| b == b',').map(trim) {
        any = true;
        if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
            return Err(WireError::Framing("a Content-Length that is not a number"));
        }
        let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if seen.is_some_and(|s| s != n) {
            return Err(WireError::Framing("Content-Length values that differ"));
        }
        seen = Some(n);
    }
    match seen {
        Some(n) if any => Ok(n),
        _ => Err(WireError::Framing("an empty Content-Length")),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => s.get(a..=b).unwrap_or_default(),
        _ => &[],
    }
}

/// Whether a comma-separated header value lists `token` (in any case).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// What the chunked decoder produced.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// A strict decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1): chunk
/// sizes of at most 15 hex digits, every line ended by CRLF, extensions
/// without control characters, trailer lines bounded and well-formed.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Decode what `buf` holds, taking the bytes used. `Ok(None)`: more
    /// input is needed.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = line_end(buf, MAX_CHUNK_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(buf.get(..line).unwrap_or_default())?;
                    let _ = buf.split_to(line + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(Decoded::Data(data)));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if buf.get(..2) != Some(b"\r\n") {
                        return Err(WireError::Chunk("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => return self.trailers(buf),
                ChunkState::Done => return Ok(Some(Decoded::End)),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, WireError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        if buf.get(..2) == Some(b"\r\n") {
            let _ = buf.split_to(2);
            self.state = ChunkState::Done;
            return Ok(Some(Decoded::End));
        }
        // Trailer lines end in CRLF, strictly: the blank line that ends
        // them is found by its CRLF CRLF.
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        let scanned = buf
            .get(..end.map_or(buf.len(), |e| e + 4))
            .unwrap_or_default();
        if scanned.len() > MAX_TRAILER_BYTES {
            return Err(WireError::Chunk("trailers too large"));
        }
        if has_bare_lf(scanned) {
            return Err(WireError::Chunk("a trailer line not ended by CRLF"));
        }
        let Some(end) = end else {
            return Ok(None);
        };
        let section = scanned;
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = match httparse::parse_headers(section, &mut slots) {
            Ok(httparse::Status::Complete((n, hs))) if n == section.len() => hs,
            _ => return Err(WireError::Chunk("malformed trailers")),
        };
        let mut map = HeaderMap::with_capacity(parsed.len());
        for h in parsed.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| WireError::Chunk("malformed trailer name"))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| WireError::Chunk("malformed trailer value"))?;
            map.append(name, value);
        }
        let _ = buf.split_to(end + 4);
        self.state = ChunkState::Done;
        Ok(Some(Decoded::Trailers(map)))
    }
}

fn has_bare_lf(s: &[u8]) -> bool {
    s.first() == Some(&b'\n')
        || s.windows(2)
            .any(|w| w.get(1) == Some(&b'\n') && w.first() != Some(&b'\r'))
}

/// Where the CRLF that ends the first line of `buf` starts; an error for a
/// bare LF or a line longer than `max`.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(0) => Err(WireError::Chunk("a line not ended by CRLF")),
        Some(i) if buf.get(i - 1) != Some(&b'\r') => {
            Err(WireError::Chunk("a line not ended by CRLF"))
        }
        Some(i) if i - 1 > max => Err(WireError::Chunk("chunk-size line too long")),
        Some(i) => Ok(Some(i - 1)),
        None if buf.len() > max => Err(WireError::Chunk("chunk-size line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]` (the CRLF already cut off).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(WireError::Chunk("no chunk size"));
    }
    if digits > 15 {
        return Err(WireError::Chunk("chunk size too large"));
    }
    let (hex, rest) = line.split_at(digits);
    // chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ); nothing else
    // may follow the size, and no control character may hide in it.
    let rest_ok = match trim(rest).first() {
        None => true,
        Some(b';') => rest
            .iter()
            .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)),
        Some(_) => false,
    };
    if !rest_ok {
        return Err(WireError::Chunk("unexpected bytes after the chunk size"));
    }
    Ok(hex.iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &str, head_request: bool) -> Result<Option<Head>, WireError> {
        parse_response(&mut BytesMut::from(raw), head_request)
    }

    fn framing(raw: &str) -> Result<Framing, WireError> {
        parse(raw, false).map(|h| h.map(|h| h.framing).unwrap_or(Framing::Empty))
    }

    #[test]
    fn the_request_head_carries_postern_framing_only() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("up:80"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-postern-identity", HeaderValue::from_static("mallory"));
        let own = [(
            HeaderName::from_static("x-postern-identity"),
            HeaderValue::from_static("alice"),
        )];
        let mut out = Vec::new();
        write_request_head(&mut out, &Method::GET, "/p?q=1", &h, &own, 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /p?q=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\nx-a: 2\r\nx-postern-identity: alice\r\n\r\n"
        );
        out.clear();
        write_request_head(&mut out, &Method::POST, "/", &HeaderMap::new(), &[], 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        out.clear();
        write_request_head(&mut out, &Method::PUT, "/", &HeaderMap::new(), &[], 12);
        assert!(out.ends_with(b"content-length: 12\r\n\r\n"));
    }

    #[test]
    fn a_plain_head_parses_and_shares_its_bytes() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nokNEXT",
        );
        let h = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h.headers["server"], "x");
        assert_eq!(&buf[..], b"okNEXT");
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_stay_behind() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: s\r\nX-Kept: k\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_takes_nothing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Len");
        assert!(parse_response(&mut buf, false).unwrap().is_none());
        assert_eq!(buf.len(), 28);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            assert_eq!(framing(&raw), Ok(Framing::Empty), "{status}");
        }
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
        assert_eq!(head.unwrap().unwrap().framing, Framing::Empty);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw, false), Err(WireError::Framing(_))),
                "{raw:?} -> {:?}",
                parse(raw, false)
            );
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(parse(raw, false).is_err(), "{raw:?} was accepted");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(parse(&many, false).is_err());
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(&big, false).err(), Some(WireError::HeadTooLarge));
    }

    #[test]
    fn keep_alive_needs_http_1_1_a_length_and_no_close() {
        let ka = |raw: &str| parse(raw, false).unwrap().unwrap().keep_alive;
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"
        ));
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, usize), WireError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from(input);
        let (mut body, mut trailers) = (Vec::new(), None);
        loop {
            match d.decode(&mut buf)? {
                Some(Decoded::Data(b)) => body.extend_from_slice(&b),
                Some(Decoded::Trailers(t)) => trailers = Some(t),
                Some(Decoded::End) => return Ok((body, trailers, buf.len())),
                None => return Err(WireError::Chunk("incomplete")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (body, t, rest) =
            decode_all(b"3\r\nabc\r\nA;name=v\r\n0123456789\r\n0\r\n\r\nNEXT").unwrap();
        assert_eq!(body, b"abc0123456789");
        assert!(t.is_none());
        assert_eq!(rest, 4);
        let (body, t, _) = decode_all(b"2\r\nhi\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n").unwrap();
        assert_eq!(body, b"hi");
        let t = t.unwrap();
        assert_eq!(t["x-sum"], "1");
        assert_eq!(t["x-b"], "2");
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for raw in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3;a\0b\r\nabc\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"0\r\nBad Name: x\r\n\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
        ] {
            assert!(
                decode_all(raw).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(decode_all(format!("{}\r\n", "0".repeat(MAX_CHUNK_LINE + 1)).as_bytes()).is_err());
        let mut d = ChunkedDecoder::default();
        let mut long = BytesMut::from(&b"0\r\n"[..]);
        long.extend_from_slice(format!("X: {}", "a".repeat(MAX_TRAILER_BYTES)).as_bytes());
        assert!(d.decode(&mut long).is_err());
    }

    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        /// Any chunked body, fed in pieces of any size, decodes to exactly
        /// its data and stops exactly at its end.
        #[test]
        fn chunked_decoding_is_exact_however_the_bytes_arrive(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cut in proptest::collection::vec(1usize..64, 1..50),
            trailing in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut wire = encode(&chunks);
            let end = wire.len();
            wire.extend_from_slice(&trailing);
            let mut d = ChunkedDecoder::default();
            let mut buf = BytesMut::new();
            let (mut fed, mut body, mut cuts) = (0, Vec::new(), cut.iter().cycle());
            let mut ended = false;
            while !ended {
                match d.decode(&mut buf).unwrap() {
                    Some(Decoded::Data(b)) => body.extend_from_slice(&b),
                    Some(Decoded::Trailers(_)) => prop_assert!(false, "no trailers were sent"),
                    Some(Decoded::End) => ended = true,
                    None => {
                        prop_assert!(fed < end, "asked for more after the end");
                        let n = (*cuts.next().unwrap()).min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                    }
                }
            }
            prop_assert_eq!(body, chunks.concat());
            prop_assert_eq!(fed - buf.len(), end);
        }

        /// No input makes the head parser or the chunked decoder panic.
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_response(&mut BytesMut::from(&raw[..]), false);
            let mut d = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&raw[..]);
            for _ in 0..64 {
                match d.decode(&mut buf) {
                    Ok(Some(Decoded::End)) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
        }
    }
}
