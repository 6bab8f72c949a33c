//! Headers a client may not send upstream, and headers an upstream may not send back.
//!
//! Upstream frameworks trust some request headers as if the gateway had set them: its
//! identity headers (`X-Auth-*` by default), the forwarding headers, and the client-address,
//! URL-rewrite, method-override and trace-context headers of [`DEFAULT_UNTRUSTED`]. Many of them (CGI, WSGI,
//! Rack, PHP) also read `X_Auth_Subject` as `X-Auth-Subject`, so every name is compared with
//! `_` read as `-`:
//!
//! - a name under the identity prefix is always removed (the gateway adds its own);
//! - forwarding headers (`Forwarded`, `X-Forwarded-*`) and the untrusted list are removed
//!   when the peer is not a trusted proxy;
//! - any of those spelled with `_` is removed from every peer: no proxy sends them that way.
//!
//! Responses lose every header under the identity prefix, so that an upstream cannot make a
//! client or a downstream proxy believe an identity the gateway did not establish.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Client-address, URL-rewrite, method-override and trace-context headers, removed from untrusted peers
/// unless the configuration gives its own list (`untrusted_headers`).
pub const DEFAULT_UNTRUSTED: &[&str] = &[
    // Client addresses.
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-envoy-external-address",
    // URL rewrites.
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    // Method overrides.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // W3C trace context: only a trusted proxy's trace is continued (see `spans`).
    "traceparent",
    "tracestate",
];

/// The request and response header rules of one gateway.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    /// Lower case, `-` form, e.g. `x-auth-`.
    identity_prefix: String,
    /// The identity headers the gateway sets: subject, client id, scope, issuer.
    pub identity: [HeaderName; 4],
    /// Lower case, `-` form.
    untrusted: Vec<String>,
}

impl HeaderPolicy {
    /// From the configured prefix and list (checked by the configuration: header-name
    /// characters only).
    pub fn new(identity_prefix: &str, untrusted: &[String]) -> Result<Self, String> {
        let prefix = dashed(&identity_prefix.to_ascii_lowercase()).into_owned();
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes()).map_err(|_| {
                format!("identity_header_prefix {identity_prefix:?}: not a header name")
            })
        };
        Ok(HeaderPolicy {
            identity: [
                name("subject")?,
                name("client-id")?,
                name("scope")?,
                name("issuer")?,
            ],
            identity_prefix: prefix,
            untrusted: untrusted
                .iter()
                .map(|h| dashed(&h.to_ascii_lowercase()).into_owned())
                .collect(),
        })
    }

    /// Removes what the client may not send (see the module's rules).
    pub fn clean_request(&self, headers: &mut HeaderMap, trusted_peer: bool) {
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in headers.keys() {
            let name_text = dashed(name.as_str());
            let underscored = matches!(name_text, Cow::Owned(_));
            let text = &*name_text;
            let identity = text.starts_with(&*self.identity_prefix);
            let trusted_only = text.starts_with("x-forwarded-")
                || text == "forwarded"
                || self.untrusted.iter().any(|u| u == text);
            if identity || (trusted_only && (underscored || !trusted_peer)) {
                doomed.push(name.clone());
            }
        }
        for name in doomed {
            headers.remove(name);
        }
    }

    /// Removes identity headers from an upstream's response.
    pub fn clean_response(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| dashed(name.as_str()).starts_with(&*self.identity_prefix))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
}

/// `name` with `_` read as `-`; borrowed when it has none.
fn dashed(name: &str) -> Cow<'_, str> {
    if name.contains('_') {
        Cow::Owned(name.replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 allows one. RFC 9113 §8.2.3: join
/// them with `"; "` before forwarding over HTTP/1.1.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(http::header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, value) in headers.get_all(http::header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // The parts were header values, and "; " is allowed in one.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HeaderPolicy {
        let list: Vec<String> = DEFAULT_UNTRUSTED.iter().map(|s| s.to_string()).collect();
        HeaderPolicy::new("X-Auth-", &list).unwrap()
    }

    fn map(names: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in names {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("spoofed"),
            );
        }
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers
    }

    /// Spoofed identity headers are removed from every peer, in every spelling.
    #[test]
    fn identity_headers_never_pass() {
        let spoofs = [
            "x-auth-subject",
            "X-Auth-Subject",
            "x_auth_subject",
            "X_AUTH_CLIENT_ID",
            "x-auth_scope",
            "x-auth-roles",
            "x-auth-",
            "x_auth_anything_else",
        ];
        for trusted in [false, true] {
            let mut headers = map(&spoofs);
            policy().clean_request(&mut headers, trusted);
            assert_eq!(headers.len(), 1, "trusted={trusted}: {headers:?}");
        }
        // Another prefix: the old one passes, the new one does not.
        let custom = HeaderPolicy::new("X-Gw-", &[]).unwrap();
        assert_eq!(custom.identity[0], "x-gw-subject");
        let mut headers = map(&["x-gw-subject", "x_gw_tenant", "x-auth-subject"]);
        custom.clean_request(&mut headers, false);
        assert!(headers.contains_key("x-auth-subject"));
        assert_eq!(headers.len(), 2);
    }

    /// Forwarding and listed headers go from untrusted peers; from a trusted proxy only
    /// their `_` spellings go.
    #[test]
    fn forwarding_and_listed_headers() {
        let dashed_names = [
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-method-override",
        ];
        let underscored = [
            "x_forwarded_for",
            "X_Forwarded_Host",
            "x_real_ip",
            "true_client_ip",
            "x_original_url",
            "x_http_method_override",
        ];
        let mut headers = map(&dashed_names);
        for name in underscored {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("x"),
            );
        }
        let mut from_trusted = headers.clone();
        policy().clean_request(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        policy().clean_request(&mut from_trusted, true);
        assert_eq!(from_trusted.len(), dashed_names.len() + 1);
        // An empty list keeps the client-address headers; the forwarding ones still go.
        let mut headers = map(&["x-real-ip", "x-forwarded-for"]);
        HeaderPolicy::new("x-auth-", &[])
            .unwrap()
            .clean_request(&mut headers, false);
        assert!(headers.contains_key("x-real-ip"));
        assert!(!headers.contains_key("x-forwarded-for"));
    }

    /// Responses lose identity headers in any spelling; others stay.
    #[test]
    fn responses() {
        let mut headers = map(&["x-auth-subject", "x_auth_scope", "x-authx", "set-cookie"]);
        policy().clean_response(&mut headers);
        assert_eq!(headers.len(), 3);
        assert!(headers.contains_key("x-authx"));
    }

    /// Several cookie fields become one, in order; one stays as it was.
    #[test]
    fn cookies() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        headers.append("cookie", HeaderValue::from_static("c=3"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all("cookie").iter().count(), 1);
        assert_eq!(headers["cookie"], "a=1; b=2; c=3");
        join_cookies(&mut headers);
        assert_eq!(headers["cookie"], "a=1; b=2; c=3");
    }
}
