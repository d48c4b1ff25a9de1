//! `[webhooks]` validated: whether jobs may name a webhook, where the deployment's signing
//! key is, which blocks deliveries may reach despite the destination policy, and the time
//! limit and retry schedule of a delivery.

use std::path::PathBuf;
use std::time::Duration;

use contract::ConfigProblems;

use super::file::WebhooksFile;
use super::positive;
use crate::inputs::policy::Cidr;

const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The wait before each try of a delivery after the first, in ms: ten tries over 4 h 18 min.
pub const DEFAULT_RETRY_DELAYS_MS: [u64; 9] = [
    5_000, 30_000, 120_000, 300_000, 600_000, 1_200_000, 2_400_000, 3_600_000, 7_200_000,
];
/// The signing key's file under the data directory when `signing_key_file` is not set.
pub const DEFAULT_KEY_FILE: &str = "keys/webhook-signing.key";

/// How webhooks are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Whether a job may name a webhook (when not, one that does is refused).
    pub enabled: bool,
    /// The deployment's signing key (relative paths: to the configuration file); `None`:
    /// [`DEFAULT_KEY_FILE`] under the data directory.
    pub signing_key_file: Option<PathBuf>,
    /// Longest time for one try, from resolving the host to the answer's last byte.
    pub timeout: Duration,
    /// The wait before each try after the first.
    pub retry_delays: Vec<Duration>,
    /// Blocks delivered to although the destination policy refuses them by default.
    pub allow: Vec<Cidr>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            signing_key_file: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            retry_delays: default_delays(),
            allow: Vec::new(),
        }
    }
}

fn default_delays() -> Vec<Duration> {
    DEFAULT_RETRY_DELAYS_MS
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect()
}

/// `[webhooks]` (or its defaults).
pub(super) fn webhooks(p: &mut ConfigProblems, file: Option<&WebhooksFile>) -> WebhooksConfig {
    let empty = WebhooksFile::default();
    let file = file.unwrap_or(&empty);
    let timeout = positive(
        p,
        "webhooks.timeout_ms",
        file.timeout_ms,
        DEFAULT_TIMEOUT_MS,
    );
    let retry_delays = match &file.retry_delays_ms {
        None => default_delays(),
        Some(delays) if delays.len() > 100 => {
            p.add(
                "webhooks.retry_delays_ms",
                format!("has {} delays", delays.len()),
                "give at most 100",
            );
            Vec::new()
        }
        Some(delays) => delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
    };
    let allow = super::input_urls::allow_list(p, "webhooks.allow", &file.allow);
    WebhooksConfig {
        enabled: file.enabled.unwrap_or(true),
        signing_key_file: file.signing_key_file.clone(),
        timeout: Duration::from_millis(timeout),
        retry_delays,
        allow,
    }
}
