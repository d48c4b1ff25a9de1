//! Fetching one media URL under the destination policy ([`super::policy`]): the client's
//! resolver drops the addresses the policy refuses, so the address checked is the address
//! connected to (no gap for DNS rebinding); an IP-literal host never reaches a resolver, so
//! it is checked on its own, for the first URL and at every redirect, whose count is bounded.
//! No proxy is used. The connect timeout bounds each connection, a time limit the whole
//! fetch, and the size limit the body — by its `Content-Length`, and while it streams.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{StatusCode, Url, redirect};

use super::policy::{DestinationPolicy, RefusedAddress};
use crate::config::InputUrlsConfig;

/// What the agent calls itself when it fetches media.
const USER_AGENT: &str = concat!("meridian-region-agent/", env!("CARGO_PKG_VERSION"));

/// The media type of a response that names none (or names one that is not `type/subtype`).
const UNKNOWN_TYPE: &str = "application/octet-stream";

/// Why a URL could not be fetched (the user's problem: answered 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The text is not a URL.
    #[error("not a valid URL: {0}")]
    BadUrl(String),
    /// A scheme other than `http` and `https`.
    #[error("only http:// and https:// URLs are fetched, not {0}:")]
    Scheme(String),
    /// A user name or password in the URL.
    #[error("a URL must not carry a user name or password")]
    Credentials,
    /// An address the policy refuses, written as the host.
    #[error("refused: {0}; media is fetched from the public internet only")]
    Refused(RefusedAddress),
    /// A host name whose every address the policy refuses.
    #[error(
        "refused: {host} resolves only to addresses off the public internet ({})",
        list(.refused)
    )]
    RefusedHost {
        /// The name.
        host: String,
        /// Its addresses, and why each is refused.
        refused: Vec<RefusedAddress>,
    },
    /// A host name that does not resolve.
    #[error("cannot resolve {host}: {message}")]
    Resolve {
        /// The name.
        host: String,
        /// What the resolver said.
        message: String,
    },
    /// A redirect to a URL that is refused.
    #[error("redirected to {to}: {problem}")]
    Redirect {
        /// Where to, as [`shown`].
        to: String,
        /// Why it is refused.
        problem: Box<Problem>,
    },
    /// More redirects than the limit.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// An answer other than 2xx.
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    /// A body over the size limit.
    #[error("the response is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// No complete answer within the time limit.
    #[error("no complete response within the time limit of {0} ms")]
    TimedOut(u128),
    /// No connection within the connect timeout.
    #[error("no connection within the connect timeout of {0} ms")]
    ConnectTimedOut(u128),
    /// The connection or the exchange failed.
    #[error("cannot fetch it: {0}")]
    Transport(String),
}

fn list(refused: &[RefusedAddress]) -> String {
    let each: Vec<String> = refused.iter().map(ToString::to_string).collect();
    each.join(", ")
}

/// `url` as an answer may show it: without credentials, query or fragment (a signed URL's
/// query is a secret).
pub fn shown(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Only fails for URLs that cannot have credentials.
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.to_string()
}

/// Media fetched: its bytes and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The response's media type (`type/subtype`, lowercase, no parameters).
    pub content_type: String,
    /// The body.
    pub bytes: Vec<u8>,
}

/// Fetches media URLs with one client (its connections are pooled).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<DestinationPolicy>,
    max_bytes: u64,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Fetcher {
    /// A fetcher under `config`'s policy and limits.
    pub fn new(config: &InputUrlsConfig) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(DestinationPolicy::new(config.allow.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .redirect(redirects(policy.clone(), config.max_redirects))
            .connect_timeout(config.connect_timeout)
            .user_agent(USER_AGENT)
            .referer(false)
            .build()?;
        Ok(Self {
            client,
            policy,
            max_bytes: config.max_bytes,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
        })
    }

    /// Checks what can be checked of `url` before connecting (scheme, credentials, an
    /// IP-literal host against the policy).
    ///
    /// # Errors
    ///
    /// Why it is refused.
    pub fn check(&self, url: &Url) -> Result<(), Problem> {
        check_url(url, &self.policy)
    }

    /// Fetches `url` within the time limit.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, Problem> {
        check_url(url, &self.policy)?;
        let limit = self.timeout;
        tokio::time::timeout(limit, self.get(url.clone()))
            .await
            .map_err(|_| Problem::TimedOut(limit.as_millis()))?
    }

    /// Posts `body` with `headers` to `url` (a webhook) under the same policy, redirects and
    /// limits; the answer's body is read up to the size limit and dropped.
    ///
    /// # Errors
    ///
    /// What kept the post from a `2xx` answer.
    pub async fn post(
        &self,
        url: &Url,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<StatusCode, Problem> {
        check_url(url, &self.policy)?;
        let limit = self.timeout;
        let exchange = async {
            let mut response = self
                .client
                .post(url.clone())
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(|e| self.problem(&e))?;
            let status = response.status();
            let mut read = 0u64;
            while let Some(chunk) = response.chunk().await.map_err(|e| self.problem(&e))? {
                read = read.saturating_add(chunk.len() as u64);
                if read > self.max_bytes {
                    break;
                }
            }
            if status.is_success() {
                Ok(status)
            } else {
                Err(Problem::Status(status))
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| Problem::TimedOut(limit.as_millis()))?
    }

    async fn get(&self, url: Url) -> Result<Fetched, Problem> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| self.problem(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Problem::Status(status));
        }
        let declared = response.content_length();
        if declared.is_some_and(|length| length > self.max_bytes) {
            return Err(Problem::TooLarge(self.max_bytes));
        }
        let content_type = media_type(response.headers());
        let expected = declared.unwrap_or(0).min(self.max_bytes);
        let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.problem(&e))? {
            let total = bytes.len().saturating_add(chunk.len());
            if u64::try_from(total).unwrap_or(u64::MAX) > self.max_bytes {
                return Err(Problem::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            content_type,
            bytes,
        })
    }

    /// The problem behind a client error: the policy's (from the resolver or the redirect
    /// policy), a connect timeout, or what the innermost cause says.
    fn problem(&self, error: &reqwest::Error) -> Problem {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
        let mut innermost = error.to_string();
        while let Some(e) = cause {
            if let Some(problem) = e.downcast_ref::<Problem>() {
                return problem.clone();
            }
            innermost = e.to_string();
            cause = e.source();
        }
        if error.is_connect() && error.is_timeout() {
            return Problem::ConnectTimedOut(self.connect_timeout.as_millis());
        }
        Problem::Transport(innermost)
    }
}

/// Checks what can be checked of `url` before connecting: its scheme, no credentials, and an
/// IP-literal host against the policy (a host name is checked by [`PolicyResolver`]).
fn check_url(url: &Url, policy: &DestinationPolicy) -> Result<(), Problem> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Problem::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Problem::Credentials);
    }
    let host = url
        .host_str()
        .ok_or_else(|| Problem::BadUrl("it has no host".to_owned()))?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = literal.parse::<IpAddr>() {
        policy.check(address).map_err(Problem::Refused)?;
    }
    Ok(())
}

/// Follows at most `most` redirects, each to a URL [`check_url`] passes.
fn redirects(policy: Arc<DestinationPolicy>, most: usize) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        // `previous` holds the URLs requested so far, the first included.
        if attempt.previous().len() > most {
            return attempt.error(Problem::TooManyRedirects(most));
        }
        match check_url(attempt.url(), &policy) {
            Ok(()) => attempt.follow(),
            Err(problem) => {
                let to = shown(attempt.url());
                attempt.error(Problem::Redirect {
                    to,
                    problem: Box::new(problem),
                })
            }
        }
    })
}

/// Resolves host names with the system resolver and keeps only the addresses the policy
/// allows; a name left with none is refused, naming its addresses.
struct PolicyResolver {
    policy: Arc<DestinationPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Problem::Resolve {
                    host: host.clone(),
                    message: e.to_string(),
                })?;
            let (allowed, refused) = filter(&policy, addresses);
            if allowed.is_empty() {
                let problem = if refused.is_empty() {
                    Problem::Resolve {
                        host,
                        message: "no addresses".to_owned(),
                    }
                } else {
                    Problem::RefusedHost { host, refused }
                };
                return Err(problem.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses the policy allows, and the ones it refuses (each once).
fn filter(
    policy: &DestinationPolicy,
    addresses: impl Iterator<Item = SocketAddr>,
) -> (Vec<SocketAddr>, Vec<RefusedAddress>) {
    let mut allowed = Vec::new();
    let mut refused: Vec<RefusedAddress> = Vec::new();
    for address in addresses {
        match policy.check(address.ip()) {
            Ok(()) => allowed.push(address),
            Err(r) if !refused.contains(&r) => refused.push(r),
            Err(_) => {}
        }
    }
    (allowed, refused)
}

/// The media type a response names, `type/subtype` in lowercase without parameters.
fn media_type(headers: &HeaderMap) -> String {
    let named = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let token = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    named
        .filter(|t| t.split_once('/').is_some_and(|(a, b)| token(a) && token(b)))
        .unwrap_or_else(|| UNKNOWN_TYPE.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn urls_are_checked_before_connecting() {
        let policy = DestinationPolicy::default();
        let check = |url: &str| check_url(&Url::parse(url).unwrap(), &policy);
        assert_eq!(check("https://example.com/a.png"), Ok(()));
        assert_eq!(check("http://93.184.216.34/"), Ok(()));
        assert_eq!(
            check("ftp://example.com/a"),
            Err(Problem::Scheme("ftp".into()))
        );
        assert_eq!(
            check("file:///etc/passwd"),
            Err(Problem::Scheme("file".into()))
        );
        assert_eq!(
            check("http://user:pass@example.com/"),
            Err(Problem::Credentials)
        );
        assert_eq!(check("http://user@example.com/"), Err(Problem::Credentials));
        for refused in [
            "http://127.0.0.1:8080/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.1/",
        ] {
            assert!(
                matches!(check(refused), Err(Problem::Refused(_))),
                "{refused}: {:?}",
                check(refused)
            );
        }
    }

    #[test]
    fn shown_urls_carry_no_secrets() {
        let url = Url::parse("https://u:p@media.example/a.png?X-Amz-Signature=s#f").unwrap();
        assert_eq!(shown(&url), "https://media.example/a.png");
    }

    #[test]
    fn the_media_type_is_the_response_s_or_octet_stream() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            media_type(&headers)
        };
        assert_eq!(with("image/png"), "image/png");
        assert_eq!(with("Image/PNG; charset=binary"), "image/png");
        assert_eq!(with("audio/x-wav"), "audio/x-wav");
        assert_eq!(with("png"), UNKNOWN_TYPE);
        assert_eq!(with("image/png,base64"), UNKNOWN_TYPE);
        assert_eq!(media_type(&HeaderMap::new()), UNKNOWN_TYPE);
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let policy = DestinationPolicy::new(vec!["10.1.0.0/16".parse().unwrap()]);
        let addresses = [
            "127.0.0.1:0",
            "10.1.2.3:0",
            "8.8.8.8:0",
            "[::1]:0",
            "127.0.0.1:0",
        ]
        .map(|a| a.parse::<SocketAddr>().unwrap());
        let (allowed, refused) = filter(&policy, addresses.into_iter());
        assert_eq!(allowed, [addresses[1], addresses[2]]);
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        assert_eq!(
            refused,
            [
                "127.0.0.1 is a loopback address",
                "::1 is a loopback address"
            ]
        );
    }
}
