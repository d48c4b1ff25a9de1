//! `[input_urls]` validated: whether media given as URLs is fetched, the limits of a fetch
//! and the address blocks the operator allows despite the destination policy
//! ([`crate::inputs::policy`]).

use std::time::Duration;

use contract::ConfigProblems;

use super::file::InputUrlsFile;
use super::{DEFAULT_MAX_BODY_BYTES, positive};
use crate::inputs::policy::Cidr;

const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// How media given as `http(s)` URLs is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputUrlsConfig {
    /// Whether URLs are fetched (when not, a job with one is refused).
    pub enabled: bool,
    /// Largest body fetched for one URL, in bytes (≥ 1).
    pub max_bytes: u64,
    /// Longest time for one URL, redirects and the whole body included (> 0).
    pub timeout: Duration,
    /// Longest time to connect to an address (> 0, at most `timeout`).
    pub connect_timeout: Duration,
    /// Most redirects followed for one URL.
    pub max_redirects: usize,
    /// Blocks fetched from although the destination policy refuses them by default.
    pub allow: Vec<Cidr>,
}

impl Default for InputUrlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: DEFAULT_MAX_BODY_BYTES,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            max_redirects: DEFAULT_MAX_REDIRECTS as usize,
            allow: Vec::new(),
        }
    }
}

/// `[input_urls]` (or its defaults), with `max_bytes` defaulting to the body limit
/// `max_body_bytes`: a fetched medium is never larger than one a body could carry.
pub(super) fn input_urls(
    p: &mut ConfigProblems,
    file: Option<&InputUrlsFile>,
    max_body_bytes: u64,
) -> InputUrlsConfig {
    let empty = InputUrlsFile::default();
    let file = file.unwrap_or(&empty);
    let max_bytes = positive(p, "input_urls.max_bytes", file.max_bytes, max_body_bytes);
    let timeout = positive(
        p,
        "input_urls.timeout_ms",
        file.timeout_ms,
        DEFAULT_TIMEOUT_MS,
    );
    // A 0 timeout is a problem of its own, not also of the connect timeout.
    let connect_default = match timeout {
        0 => DEFAULT_CONNECT_TIMEOUT_MS,
        timeout => DEFAULT_CONNECT_TIMEOUT_MS.min(timeout),
    };
    let connect_timeout = positive(
        p,
        "input_urls.connect_timeout_ms",
        file.connect_timeout_ms,
        connect_default,
    );
    if timeout > 0 && connect_timeout > timeout {
        p.add(
            "input_urls.connect_timeout_ms",
            format!("{connect_timeout} is more than timeout_ms ({timeout})"),
            "set it to timeout_ms or less",
        );
    }
    let allow = allow_list(p, "input_urls.allow", &file.allow);
    InputUrlsConfig {
        enabled: file.enabled.unwrap_or(true),
        max_bytes,
        timeout: Duration::from_millis(timeout),
        connect_timeout: Duration::from_millis(connect_timeout),
        max_redirects: file.max_redirects.unwrap_or(DEFAULT_MAX_REDIRECTS) as usize,
        allow,
    }
}

/// The address blocks of an `allow` list at `place`, each bad one a problem.
pub(super) fn allow_list(p: &mut ConfigProblems, place: &str, blocks: &[String]) -> Vec<Cidr> {
    blocks
        .iter()
        .enumerate()
        .filter_map(|(i, block)| {
            block
                .parse::<Cidr>()
                .map_err(|e| {
                    let fix = "write an address block, e.g. 10.20.0.0/16, or one address";
                    p.add(format!("{place}[{i}]"), e, fix);
                })
                .ok()
        })
        .collect()
}
