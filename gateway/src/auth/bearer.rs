//! Bearer token extraction, RFC 6750 §2.1 only (no query or body tokens).

use http::{header, HeaderMap};

use crate::error::GatewayError;

/// The token from the single `Authorization: Bearer <token>` header.
///
/// No header, or another scheme, is "no credentials" (401 without an error code, RFC 6750
/// §3.1); two headers or a malformed value is a malformed request (400).
pub fn extract(headers: &HeaderMap, max_bytes: usize) -> Result<&str, GatewayError> {
    let token = extract_unchecked(headers, max_bytes)?;
    check_b64token(token)?;
    Ok(token)
}

/// [`extract`] without the `b64token` character check, for a caller that first looks the
/// token up among tokens that passed it (the token cache) and calls [`check_b64token`] on a
/// miss.
pub fn extract_unchecked(headers: &HeaderMap, max_bytes: usize) -> Result<&str, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(GatewayError::NoCredentials),
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidRequest(
                "more than one Authorization header",
            ))
        }
        (Some(value), None) => value,
    };
    if value.len() > max_bytes {
        return Err(GatewayError::InvalidRequest(
            "Authorization header too large",
        ));
    }
    // Any byte outside visible ASCII fails here or in the b64token check below.
    let value = std::str::from_utf8(value.as_bytes())
        .map_err(|_| GatewayError::InvalidRequest("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(GatewayError::NoCredentials);
    }
    Ok(token)
}

/// RFC 6750's token syntax; anything else is a 400.
pub fn check_b64token(token: &str) -> Result<(), GatewayError> {
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    // Without an early exit, so that the compiler checks many bytes at a time: the table
    // walked byte by byte cost ≈ 4,500 instructions per token (BENCHMARKS.md).
    let valid = !body.is_empty()
        && body
            .bytes()
            .fold(true, |valid, b| valid & is_b64token_char(b));
    if !valid {
        return Err(GatewayError::InvalidRequest("malformed bearer token"));
    }
    Ok(())
}

/// A character of RFC 6750's `b64token` before its padding. Comparisons without branches,
/// which vectorise.
#[inline]
fn is_b64token_char(b: u8) -> bool {
    // Setting bit 5 maps A–Z onto a–z and no other byte into that range.
    (b | 0x20).is_ascii_lowercase()
        | b.is_ascii_digit()
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    /// Each header shape gets its RFC 6750 answer.
    #[test]
    fn shapes() {
        assert_eq!(
            extract(&headers(&["Bearer abc.def.ghi"]), 100).unwrap(),
            "abc.def.ghi"
        );
        assert_eq!(extract(&headers(&["bearer a=="]), 100).unwrap(), "a==");
        let no_creds =
            |v: &[&str]| matches!(extract(&headers(v), 100), Err(GatewayError::NoCredentials));
        assert!(no_creds(&[]));
        assert!(no_creds(&["Basic dXNlcjpwdw=="]));
        let bad = |v: &[&str]| {
            matches!(
                extract(&headers(v), 100),
                Err(GatewayError::InvalidRequest(_))
            )
        };
        assert!(bad(&["Bearer a", "Bearer b"]));
        assert!(bad(&["Bearer "]));
        assert!(bad(&["Bearer"]));
        assert!(bad(&["Bearer a b"]));
        assert!(bad(&["Bearer ==="]));
        assert!(bad(&[&format!("Bearer {}", "a".repeat(200))]));
        assert!(bad(&["Bearer abc.d@f"]));
        assert!(bad(&["Bearer abc.d\u{e9}f"]));
        assert!(check_b64token("abc.d@f").is_err());
        assert!(check_b64token("a=b").is_err());
        assert!(check_b64token(&format!("{}~+/-_.Z9==", "x".repeat(500))).is_ok());
        assert!(check_b64token(&format!("{}%", "x".repeat(500))).is_err());
    }

    /// The branch-free character test is RFC 6750's set, for every byte.
    #[test]
    fn b64token_characters() {
        for b in 0..=255u8 {
            let rfc =
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
            assert_eq!(is_b64token_char(b), rfc, "byte {b:#04x}");
        }
    }
}
