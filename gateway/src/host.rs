//! The host a request names, taken from `Host`, the absolute-form target or HTTP/2's
//! `:authority`, checked before it routes anything or is copied into forwarding headers.
//!
//! A host is a DNS name (letters, digits, `-`, `_`, `.`), an IPv4 address or a bracketed
//! IPv6 literal, with an optional decimal port (RFC 3986 §3.2.2 narrowed to what a service
//! is reached by: no user info, no percent-encoding, none of the sub-delimiters `,;'"` that a
//! naive parser of `Forwarded` would split on). Routes compare names case-insensitively,
//! without a trailing dot and without the port.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Uri, Version};

/// Why a request's host was refused; the text is the 400 response's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// More than one `Host` header (RFC 9112 §3.2).
    Repeated,
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    Missing,
    /// Not a host and optional port.
    Invalid,
    /// `Host` names another host than the absolute-form target or `:authority`.
    Conflicting,
}

impl HostError {
    pub fn as_str(self) -> &'static str {
        match self {
            HostError::Repeated => "more than one Host header",
            HostError::Missing => "the request has no Host header",
            HostError::Invalid => "the request's host is not a valid host and port",
            HostError::Conflicting => "the Host header and the request target name different hosts",
        }
    }
}

/// The host of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// As the client sent it, port included: for `X-Forwarded-Host` and `Forwarded`.
    pub value: HeaderValue,
    /// Lower case, without port or trailing dot: what routes compare.
    pub name: String,
}

/// The request's host: the target's authority when it has one (absolute form, or HTTP/2's
/// `:authority`), else `Host`. `None` only for HTTP/1.0 requests without either.
pub fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<RequestHost>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    let header = host_header.map(parse).transpose()?;
    let authority = uri
        .authority()
        .map(|a| HeaderValue::from_str(a.as_str()).map_err(|_| HostError::Invalid))
        .transpose()?
        .map(|value| parse(&value))
        .transpose()?;
    match (authority, header) {
        // RFC 9112 §3.2.2: the target's authority wins; RFC 9113 §8.3.1: a `host` naming
        // another host than `:authority` is malformed. Refused in both versions.
        (Some(authority), Some(header)) if authority.name != header.name => {
            Err(HostError::Conflicting)
        }
        (Some(authority), _) => Ok(Some(authority)),
        (None, Some(header)) => Ok(Some(header)),
        (None, None) if version == Version::HTTP_11 => Err(HostError::Missing),
        (None, None) => Ok(None),
    }
}

fn parse(value: &HeaderValue) -> Result<RequestHost, HostError> {
    let text = value.to_str().map_err(|_| HostError::Invalid)?;
    let name = host_name(text).ok_or(HostError::Invalid)?;
    Ok(RequestHost {
        value: value.clone(),
        name,
    })
}

/// The host's name in the form routes compare, if `text` is a valid `host[:port]`.
pub fn host_name(text: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (&text[..literal.len() + 2], port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.parse::<u16>().is_err() {
            return None;
        }
    }
    if !host.starts_with('[') {
        let name = host.strip_suffix('.').unwrap_or(host);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63)
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return None;
        }
        return Some(name.to_ascii_lowercase());
    }
    Some(host.to_ascii_lowercase())
}

/// A configured route host in the form routes compare.
pub fn route_name(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.strip_suffix('.') {
        Some(name) => name.to_owned(),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for h in hosts {
            map.append(header::HOST, HeaderValue::from_bytes(h.as_bytes()).unwrap());
        }
        map
    }

    /// Valid hosts, with their route names.
    #[test]
    fn valid_hosts() {
        for (text, name) in [
            ("api.example", "api.example"),
            ("API.Example.:8443", "api.example"),
            ("api.example.", "api.example"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[2001:DB8::1]:443", "[2001:db8::1]"),
            ("svc_internal", "svc_internal"),
            ("localhost:65535", "localhost"),
        ] {
            assert_eq!(host_name(text).as_deref(), Some(name), "{text}");
        }
    }

    /// Everything that is not a host and optional port, including what a naive `Forwarded`
    /// or `X-Forwarded-Host` parser would split on.
    #[test]
    fn invalid_hosts() {
        for text in [
            "",
            ":80",
            "a:",
            "a:b",
            "a:65536",
            "a:123456",
            "a:-1",
            "a:+80",
            "a b",
            "a,b",
            "a;for=1.2.3.4",
            "a\"b",
            "a'b",
            "user@a",
            "a/b",
            "a\\b",
            "a%2eb",
            "a..b",
            ".a",
            "..",
            "a:80:80",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[nothex]",
            "::1",
            "a\tb",
            "é.example",
            &"a".repeat(64),
            &format!("{}.b", "a.".repeat(127)),
        ] {
            assert_eq!(host_name(text), None, "{text:?}");
        }
    }

    /// One Host, or the authority that overrides it when both agree; HTTP/1.1 needs one.
    #[test]
    fn request_hosts() {
        let uri: Uri = "/x".parse().unwrap();
        let absolute: Uri = "http://API.example:8080/x".parse().unwrap();
        let name = |r: Result<Option<RequestHost>, HostError>| r.map(|h| h.map(|h| h.name));
        assert_eq!(
            name(request_host(
                Version::HTTP_11,
                &uri,
                &headers(&["a.example"])
            )),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            request_host(Version::HTTP_11, &uri, &headers(&["a", "a"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            request_host(Version::HTTP_11, &uri, &headers(&[])),
            Err(HostError::Missing)
        );
        assert_eq!(
            request_host(Version::HTTP_10, &uri, &headers(&[])),
            Ok(None)
        );
        assert_eq!(
            request_host(Version::HTTP_11, &uri, &headers(&["a,b"])),
            Err(HostError::Invalid)
        );
        assert_eq!(
            request_host(Version::HTTP_11, &uri, &headers(&["a\u{e9}"])),
            Err(HostError::Invalid)
        );
        // Absolute form (or :authority): it wins, and a Host naming another host is refused.
        let got = request_host(Version::HTTP_11, &absolute, &headers(&["api.EXAMPLE."])).unwrap();
        assert_eq!(
            got.map(|h| h.value),
            Some(HeaderValue::from_static("API.example:8080"))
        );
        assert_eq!(
            name(request_host(Version::HTTP_2, &absolute, &headers(&[]))),
            Ok(Some("api.example".into()))
        );
        assert_eq!(
            request_host(Version::HTTP_11, &absolute, &headers(&["evil.example"])),
            Err(HostError::Conflicting)
        );
        assert_eq!(
            request_host(Version::HTTP_2, &absolute, &headers(&["evil.example"])),
            Err(HostError::Conflicting)
        );
    }
}
