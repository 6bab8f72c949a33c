//! A guard below hyper's HTTP/1 parser that notices a request carrying both `Content-Length`
//! and `Transfer-Encoding` — the classic request-smuggling input. hyper frames such a request
//! by `Transfer-Encoding` and drops the `Content-Length` before the gateway could see it, so
//! the guard reads the raw bytes as they arrive and raises a per-connection flag that the
//! request path turns into a 400 and a closed connection.
//!
//! It can follow request boundaries exactly because the gateway closes every connection after
//! a request with `Transfer-Encoding`: each head is followed either by nothing, by exactly
//! `Content-Length` bytes, or (chunked) by the end of what the guard needs to read. Anything it
//! cannot follow (HTTP/2, an upgraded connection, a head hyper would refuse anyway) ends its
//! watch without raising the flag; hyper's own checks still apply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why a request's `Transfer-Encoding` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodingError {
    /// A coding other than `chunked` (`gzip, chunked`): the gateway would forward the body
    /// still encoded as if it were plain (501).
    Unsupported,
    /// `chunked` twice or not last, empty elements, or bytes that are not a list (400).
    Malformed,
}

/// RFC 9112 §6.1: the only transfer coding the gateway implements is `chunked`, applied
/// once, last. hyper decodes `chunked` and would pass any coding before it on silently.
pub fn check_transfer_coding(headers: &http::HeaderMap) -> Result<(), CodingError> {
    let mut values = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    let mut codings = Vec::new();
    for value in std::iter::once(first).chain(values) {
        let text = value.to_str().map_err(|_| CodingError::Malformed)?;
        for coding in text.split(',') {
            let name = coding.split(';').next().unwrap_or("").trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(CodingError::Malformed);
            }
            codings.push(name);
        }
    }
    if codings.iter().any(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(CodingError::Unsupported);
    }
    if codings.len() != 1 {
        return Err(CodingError::Malformed);
    }
    Ok(())
}

/// Raised when the connection carried a request with both framing headers.
#[derive(Debug, Clone, Default)]
pub struct AmbiguousFraming(pub Arc<AtomicBool>);

impl AmbiguousFraming {
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Largest request head the guard buffers; hyper refuses larger ones itself.
const MAX_HEAD: usize = 64 * 1024;
/// More than hyper's 100-header limit, so that every head hyper accepts parses here.
const MAX_HEADERS: usize = 128;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Default)]
struct Tracker {
    /// The start of a head that has not fully arrived.
    head: Vec<u8>,
    /// Body bytes of the current request still to come.
    skip: u64,
    done: bool,
}

impl Tracker {
    fn feed(&mut self, data: &[u8], flag: &AmbiguousFraming) {
        if self.done {
            return;
        }
        if self.head.is_empty() {
            // The usual case, whole heads in one read: they are parsed where they lie and
            // only a partial head is kept.
            let used = self.follow(data, flag);
            if !self.done {
                self.head.extend_from_slice(&data[used..]);
            }
        } else {
            let mut head = std::mem::take(&mut self.head);
            head.extend_from_slice(data);
            let used = self.follow(&head, flag);
            head.drain(..used);
            self.head = head;
        }
        if self.done {
            self.head = Vec::new();
        }
    }

    /// Follows requests through `buf` (heads parsed, bodies skipped) and returns how far it
    /// got: the rest, if any, is a head still arriving.
    fn follow(&mut self, buf: &[u8], flag: &AmbiguousFraming) -> usize {
        let mut at = 0;
        while !self.done && at < buf.len() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(buf.len() - at);
                self.skip -= n as u64;
                at += n;
                continue;
            }
            let rest = &buf[at..];
            if rest.starts_with(H2_PREFACE) {
                self.done = true;
                break;
            }
            // Uninitialised: zeroing 128 headers for every head showed up in the profile.
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut []);
            match request.parse_with_uninit_headers(rest, &mut headers) {
                Ok(httparse::Status::Complete(end)) => {
                    let has = |name: &str| {
                        request
                            .headers
                            .iter()
                            .any(|h| h.name.eq_ignore_ascii_case(name))
                    };
                    if has("transfer-encoding") {
                        if has("content-length") {
                            flag.0.store(true, Ordering::Release);
                        }
                        // The connection closes after this request.
                        self.done = true;
                        break;
                    }
                    let length = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| {
                            std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                        });
                    match length {
                        // hyper refuses an unreadable length itself.
                        Some(None) => self.done = true,
                        Some(Some(n)) => self.skip = n,
                        None => self.skip = 0,
                    }
                    at += end;
                }
                Ok(httparse::Status::Partial) => {
                    if rest.len() > MAX_HEAD {
                        self.done = true;
                    }
                    break;
                }
                Err(_) => self.done = true,
            }
        }
        at
    }
}

/// The guard of one connection: shown every byte the connection reads, below hyper.
pub struct FramingGuard {
    tracker: Tracker,
    flag: AmbiguousFraming,
}

impl FramingGuard {
    pub fn new(flag: AmbiguousFraming) -> Self {
        FramingGuard {
            tracker: Tracker::default(),
            flag,
        }
    }
}

impl service_kit::serve::ReadObserver for FramingGuard {
    fn observe(&mut self, data: &[u8]) {
        if !self.tracker.done {
            self.tracker.feed(data, &self.flag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raised(chunks: &[&[u8]]) -> bool {
        let flag = AmbiguousFraming::default();
        let mut tracker = Tracker::default();
        for chunk in chunks {
            tracker.feed(chunk, &flag);
        }
        flag.is_raised()
    }

    /// `chunked` alone passes; any other coding is unsupported; odd lists are malformed.
    #[test]
    fn transfer_codings() {
        let check = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                );
            }
            check_transfer_coding(&headers)
        };
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&["chunked"]), Ok(()));
        assert_eq!(check(&["Chunked"]), Ok(()));
        assert_eq!(check(&[" chunked "]), Ok(()));
        for unsupported in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["deflate,chunked"],
            &["chunked, gzip"],
            &["identity, chunked"],
            &["x-custom;q=1, chunked"],
        ] {
            assert_eq!(
                check(unsupported),
                Err(CodingError::Unsupported),
                "{unsupported:?}"
            );
        }
        for malformed in [
            &["chunked, chunked"][..],
            &["chunked", "chunked"],
            &[", chunked"],
            &["chunked,"],
            &[""],
            &["chun ked"],
            &["\"chunked\""],
            &["chunked\u{e9}"],
        ] {
            assert_eq!(
                check(malformed),
                Err(CodingError::Malformed),
                "{malformed:?}"
            );
        }
    }

    /// Both framing headers raise the flag, in any order, split anywhere, after a body.
    #[test]
    fn detects_both_framings() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(raised(&[cl_te]));
        assert!(raised(&[&cl_te[..20], &cl_te[20..]]));
        let te_cl = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n";
        assert!(raised(&[te_cl]));
        // Behind a first request with a body.
        let first = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody";
        assert!(raised(&[first, cl_te]));
        // A body that merely looks like headers is skipped, not parsed.
        let tricky = b"POST /a HTTP/1.1\r\nContent-Length: 59\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert!(!raised(&[tricky]));
        assert!(!raised(&[
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        ]));
        assert!(!raised(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        assert!(!raised(&[H2_PREFACE]));
        // Byte by byte: heads and bodies split everywhere.
        let mut stream = first.to_vec();
        stream.extend_from_slice(te_cl);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert!(raised(&bytes));
        let bytes: Vec<&[u8]> = tricky.chunks(3).collect();
        assert!(!raised(&bytes));
    }
}
