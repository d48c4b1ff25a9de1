//! The public URL a client reached the edge at (`scheme://host[:port]`), told to agents in
//! `x-meridian-public-url` ([`contract::headers::PUBLIC_URL`]) on every call, so that the
//! status, result and file links they write are absolute and reachable by the client: the
//! operator's `public_url` when configured (the edge behind a load balancer or a CDN),
//! otherwise the listener's scheme and the request's `Host` (or `:authority`).

use http::uri::Authority;
use pingora::proxy::Session;

use crate::Edge;

/// Checks an operator's `public_url`: an absolute `http(s)` URL without query or fragment;
/// returns it without its trailing slashes.
///
/// # Errors
///
/// A sentence saying what is wrong.
pub fn checked(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| format!("{text:?} is not an http(s) URL"))?;
    if rest.contains(['?', '#']) {
        return Err(format!("{text:?} has a query or a fragment"));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if !usable_host(host) {
        return Err(format!("{text:?} has no usable host"));
    }
    Ok(trimmed.to_owned())
}

/// The public URL: `configured` when set, else `https://` or `http://` (by whether the
/// connection is TLS) and `host`; `None` without a usable host.
pub fn derive(configured: Option<&str>, tls: bool, host: Option<&str>) -> Option<String> {
    if let Some(url) = configured {
        return Some(url.to_owned());
    }
    let host = host.filter(|h| usable_host(h))?;
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

/// Whether `host` is a bare `host[:port]`: an authority without user information.
fn usable_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains('@')
        && Authority::try_from(host).is_ok_and(|a| a.as_str() == host && !a.host().is_empty())
}

impl Edge {
    /// The public URL of the request in `session`.
    pub(crate) fn public_url(&self, session: &Session) -> Option<String> {
        let request = session.req_header();
        let host = request
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri.authority().map(Authority::as_str));
        let tls = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
        derive(self.config.public_url.as_deref(), tls, host)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_url_comes_from_the_listener_and_the_host() {
        let derived = |tls, host| derive(None, tls, host);
        assert_eq!(
            derived(true, Some("127.0.0.1:8443")).as_deref(),
            Some("https://127.0.0.1:8443")
        );
        assert_eq!(
            derived(false, Some("api.example.com")).as_deref(),
            Some("http://api.example.com")
        );
        assert_eq!(
            derived(true, Some("[::1]:8443")).as_deref(),
            Some("https://[::1]:8443")
        );
        for unusable in ["", "user@evil.example", "a b", "host/path", "host?x"] {
            assert_eq!(derived(true, Some(unusable)), None, "{unusable:?}");
        }
        assert_eq!(derived(true, None), None);
    }

    #[test]
    fn a_configured_url_wins() {
        let configured = checked("https://api.example.com/").unwrap();
        assert_eq!(configured, "https://api.example.com");
        assert_eq!(
            derive(Some(&configured), false, Some("10.0.0.5:8080")).as_deref(),
            Some("https://api.example.com")
        );
        assert_eq!(
            checked("http://edge.internal:8080/meridian").unwrap(),
            "http://edge.internal:8080/meridian"
        );
        for bad in [
            "api.example.com",
            "ftp://api.example.com",
            "https://api.example.com/?x=1",
            "https://api.example.com/#top",
            "https://",
            "https://user@api.example.com",
        ] {
            assert!(checked(bad).is_err(), "{bad}");
        }
    }
}
