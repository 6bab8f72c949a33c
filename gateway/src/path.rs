//! The request path as the gateway routes it and forwards it, so that the gateway and the
//! upstream can never disagree on which resource a request names.
//!
//! Normalisation follows Envoy's `normalize_path`: percent-encoded unreserved characters are
//! decoded and the hex digits of the other escapes upper-cased (RFC 3986 §6.2.2), dot
//! segments are removed (§5.2.4), and repeated slashes are merged when `merge_slashes` is on.
//! Raw characters a path may not hold (non-ASCII, space, `"`, `<`, `{`, `|`, …) are
//! percent-encoded (§3.3 allows only `pchar` and `/`).
//!
//! Path parameters (`;…` at the end of a segment) are removed, as Tomcat, Jetty and Spring
//! remove them before they route: `/echo;x/secret` is `/echo/secret` to them, so it must be
//! to the gateway too. An encoded `;` (`%3B`) is data and stays.
//!
//! What cannot be normalised safely is refused, since an upstream may read it in a way the
//! gateway did not: a backslash, a control character (raw or encoded, `%00` included), an
//! invalid escape, escapes that are not valid UTF-8 (overlong forms of `.` and `/` among
//! them), a dot segment carrying path parameters (`..;x`, Tomcat's traversal), and a path
//! that climbs above the root. Encoded `/` and `\` (`%2F`, `%5C`) are kept, upper-cased, as
//! data inside their segment; whether a route accepts them is the route's choice
//! ([`Normalized::encoded_slash`]).

use std::borrow::Cow;

/// Why a path was refused; the text is the 400 response's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The target is not an absolute path (`*`, or authority form).
    NotAbsolute,
    /// A raw or encoded control character, `%00` included.
    Control,
    /// A raw backslash, which some servers read as `/`.
    Backslash,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// Percent-encoded bytes that are not UTF-8 (overlong forms included).
    InvalidUtf8,
    /// `.` or `..` followed by `;` parameters.
    DotSegmentParameters,
    /// More `..` segments than there are segments before them.
    AboveRoot,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request target is not an absolute path",
            PathError::Control => "the path contains a control character",
            PathError::Backslash => "the path contains a backslash",
            PathError::InvalidEscape => "the path contains an invalid percent-encoding",
            PathError::InvalidUtf8 => "the path's percent-encoded bytes are not UTF-8",
            PathError::DotSegmentParameters => "the path has a dot segment with parameters",
            PathError::AboveRoot => "the path climbs above the root",
        }
    }
}

/// A normalised path.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// Borrowed when the request's own path was already normal (the usual case).
    pub path: Cow<'a, str>,
    /// The path holds `%2F` or `%5C`: a separator the gateway reads as data but an upstream
    /// that decodes before splitting would not.
    pub encoded_slash: bool,
}

/// Normalises `path` (the request target's path, without its query).
pub fn normalize(path: &str, merge_slashes: bool) -> Result<Normalized<'_>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes, merge_slashes) {
        return Ok(Normalized {
            path: Cow::Borrowed(path),
            encoded_slash: false,
        });
    }
    let (decoded, encoded_slash) = decode(bytes)?;
    let resolved = resolve(&decoded, merge_slashes)?;
    let path = if resolved == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(resolved)
    };
    Ok(Normalized {
        path,
        encoded_slash,
    })
}

/// The fast path: RFC 3986 path characters only (`pchar` and `/`, no `%`), no segment
/// starting with `.`, and no empty segment when slashes are merged. Such a path is its own
/// normal form.
fn is_normal(bytes: &[u8], merge_slashes: bool) -> bool {
    let plain = bytes
        .iter()
        .all(|&b| b == b'/' || (is_pchar(b) && b != b';'));
    plain
        && !bytes
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'.' || (merge_slashes && w[1] == b'/')))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` but for percent-encodings: unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Escapes decoded where they stand for unreserved characters, upper-cased elsewhere; raw
/// non-ASCII bytes encoded. The result is ASCII. Also says whether `%2F` or `%5C` was seen.
fn decode(bytes: &[u8]) -> Result<(String, bool), PathError> {
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut encoded_slash = false;
    // Bytes >= 0x80 of the current run, escaped or raw, checked as UTF-8 when the run ends.
    let mut high = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = if b == b'%' {
            let value = bytes
                .get(i + 1)
                .and_then(|&h| hex_value(h))
                .zip(bytes.get(i + 2).and_then(|&l| hex_value(l)))
                .map(|(h, l)| h << 4 | l)
                .ok_or(PathError::InvalidEscape)?;
            i += 3;
            Some(value)
        } else {
            i += 1;
            None
        };
        let value = escaped.unwrap_or(b);
        if value >= 0x80 {
            // Checked as one run with the raw bytes around it: an escaped lead byte and a raw
            // character after it decode to bytes that are not UTF-8 together.
            high.push(value);
            push_escape(&mut out, value);
            continue;
        }
        if !high.is_empty() {
            std::str::from_utf8(&high).map_err(|_| PathError::InvalidUtf8)?;
            high.clear();
        }
        match (value, escaped.is_some()) {
            (0x00..=0x1f | 0x7f, _) => return Err(PathError::Control),
            (b'\\', false) => return Err(PathError::Backslash),
            (b'/' | b'\\', true) => {
                encoded_slash = true;
                push_escape(&mut out, value);
            }
            (v, true) if !is_unreserved(v) => push_escape(&mut out, v),
            // A raw character a path may not hold (space, `"`, `<`, `{`, `|`, `^`, …) is
            // encoded, so that what is forwarded is a strict RFC 3986 path.
            (v, false) if v != b'/' && !is_pchar(v) => push_escape(&mut out, v),
            (v, _) => out.push(char::from(v)),
        }
    }
    if !high.is_empty() {
        std::str::from_utf8(&high).map_err(|_| PathError::InvalidUtf8)?;
    }
    Ok((out, encoded_slash))
}

/// Removes dot segments (RFC 3986 §5.2.4) and, if asked, empty segments; a path that would
/// climb above the root is refused rather than clamped.
fn resolve(path: &str, merge_slashes: bool) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    // A path ending in a dot segment or a slash names a directory: it keeps its trailing `/`.
    let mut trailing_slash = false;
    let segments = path[1..].split('/');
    let count = path[1..].split('/').count();
    for (i, segment) in segments.enumerate() {
        let last = i + 1 == count;
        trailing_slash = false;
        let parameters = segment
            .find(';')
            .into_iter()
            .chain(segment.find("%3B"))
            .min();
        if let Some(at) = parameters {
            if matches!(&segment[..at], "." | "..") {
                return Err(PathError::DotSegmentParameters);
            }
        }
        // The segment without its parameters (see the module's doc).
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "." => trailing_slash = last,
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            "" if last => trailing_slash = true,
            "" if merge_slashes => {}
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, true).map(|n| n.path.into_owned())
    }

    /// RFC 3986 §5.4's dot-segment examples, and the usual spellings of a traversal.
    #[test]
    fn dot_segments() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b/c", "/a/b/c"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/./b", "/a/b"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/public/../echo/x", "/echo/x"),
            ("/public/%2e%2e/echo/x", "/echo/x"),
            ("/public/%2E%2E/echo/x", "/echo/x"),
            ("/public/.%2e/echo/x", "/echo/x"),
            ("/public/./../echo/x", "/echo/x"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/...", "/a/..."),
            ("/a/%2e%2e%2e", "/a/..."),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
        for above in ["/..", "/../a", "/a/../..", "/%2e%2e", "/a/%2E%2e/%2e./x"] {
            assert_eq!(norm(above), Err(PathError::AboveRoot), "{above}");
        }
    }

    /// Unreserved escapes are decoded, the others upper-cased; encoded slashes stay and are
    /// reported; raw non-ASCII is encoded.
    #[test]
    fn escapes() {
        for (input, want, slash) in [
            ("/%7euser/%41%62%2D", "/~user/Ab-", false),
            ("/a%20b/%3f", "/a%20b/%3F", false),
            ("/a%2fb", "/a%2Fb", true),
            ("/a%5cb", "/a%5Cb", true),
            ("/a/..%2f..%2fb", "/a/..%2F..%2Fb", true),
            ("/%252e%252e/x", "/%252e%252e/x", false),
            ("/caf%c3%a9", "/caf%C3%A9", false),
            ("/café", "/caf%C3%A9", false),
            ("/%F0%9F%98%80", "/%F0%9F%98%80", false),
            ("/a;b=c/d", "/a/d", false),
            ("/echo;x/secret", "/echo/secret", false),
            ("/echo;jsessionid=1", "/echo", false),
            ("/public;x=1/../echo", "/echo", false),
            ("/a%3Bb/c", "/a%3Bb/c", false),
            ("/a/;x/b", "/a/b", false),
            (
                "/a b\"c<d>{e}|^`",
                "/a%20b%22c%3Cd%3E%7Be%7D%7C%5E%60",
                false,
            ),
            ("/!$&'()*+,=:@", "/!$&'()*+,=:@", false),
        ] {
            let n = normalize(input, true).unwrap();
            assert_eq!(n.path, want, "{input}");
            assert_eq!(n.encoded_slash, slash, "{input}");
        }
        // A normal path is borrowed, not copied.
        assert!(matches!(
            normalize("/echo/hello", true).unwrap().path,
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            normalize("/a%20b", true).unwrap().path,
            Cow::Borrowed(_)
        ));
    }

    /// Everything that cannot be normalised safely is refused, each with its reason.
    #[test]
    fn refusals() {
        for (input, why) in [
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("echo", PathError::NotAbsolute),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::Control),
            ("/a%0a", PathError::Control),
            ("/a%0D%0Ab", PathError::Control),
            ("/a%7f", PathError::Control),
            ("/a\u{1}", PathError::Control),
            ("/a%", PathError::InvalidEscape),
            ("/a%2", PathError::InvalidEscape),
            ("/a%zz", PathError::InvalidEscape),
            ("/a%u002e", PathError::InvalidEscape),
            ("/a%%32%65", PathError::InvalidEscape),
            ("/%c0%ae%c0%ae/x", PathError::InvalidUtf8),
            ("/%c0%af", PathError::InvalidUtf8),
            ("/%e0%80%af", PathError::InvalidUtf8),
            ("/%c3", PathError::InvalidUtf8),
            ("/%c3/x", PathError::InvalidUtf8),
            ("/%ed%a0%80", PathError::InvalidUtf8),
            ("/%ff", PathError::InvalidUtf8),
            // Found by `make fuzz`: an escaped lead byte, a raw character, an escaped tail.
            ("/%EF%BF\u{fffd}%BD", PathError::InvalidUtf8),
            ("/%c3\u{e9}", PathError::InvalidUtf8),
            ("/public/..;/echo", PathError::DotSegmentParameters),
            ("/public/..;x=1/echo", PathError::DotSegmentParameters),
            ("/public/.;x/echo", PathError::DotSegmentParameters),
            ("/public/%2e%2e;/echo", PathError::DotSegmentParameters),
            ("/public/..%3b/echo", PathError::DotSegmentParameters),
        ] {
            assert_eq!(norm(input), Err(why), "{input:?}");
        }
    }

    /// Repeated slashes are merged when asked (a trailing slash stays), kept otherwise, and
    /// dot segments then act on the segments as the upstream will see them.
    #[test]
    fn slashes() {
        assert_eq!(norm("//echo//x//").as_deref(), Ok("/echo/x/"));
        assert_eq!(norm("/public//../echo").as_deref(), Ok("/echo"));
        let keep = |p| normalize(p, false).map(|n| n.path.into_owned());
        assert_eq!(keep("//echo//x").as_deref(), Ok("//echo//x"));
        assert_eq!(keep("/public//../echo").as_deref(), Ok("/public/echo"));
    }

    /// The normal form is a fixed point: normalising it again changes nothing.
    #[test]
    fn idempotent() {
        for input in [
            "/a/./b/../c//d/",
            "/%41%2f%2e%2E/x",
            "/café/%7e",
            "/a/.%2e/b;c/d",
            "/x/%252e",
        ] {
            let once = norm(input).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{input}");
        }
    }
}
