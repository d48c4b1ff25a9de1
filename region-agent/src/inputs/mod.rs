//! Media inputs given as URLs: a job's media fields ([`crate::serving::MEDIA_FIELDS`]) may
//! hold an `http://` or `https://` URL instead of base64 or a `data:` URL. The agent fetches
//! each before the job is accepted, under the destination policy ([`policy`]) and the
//! `[input_urls]` limits ([`fetch`]), and puts the media in the input as a
//! `data:<type>;base64,` URL — the input stored with the job, so a job resumed after a
//! restart is never fetched again. A URL that cannot be fetched is the user's problem (422,
//! naming the field, the URL and why). A value with another scheme (`ftp:`, `file:`) is
//! refused the same way; base64 text never holds a `:`, so it never reads as a URL.

pub mod fetch;
pub mod policy;

use base64::Engine as _;
use reqwest::Url;
use serde_json::Value;

use self::fetch::{Fetched, Fetcher, Problem, shown};
use crate::config::InputUrlsConfig;
use crate::serving::{InputError, MEDIA_FIELDS};

/// The media URLs of jobs' inputs, fetched (or refused, when the configuration turns
/// fetching off).
#[derive(Debug, Clone)]
pub struct MediaUrls {
    fetcher: Option<Fetcher>,
}

impl MediaUrls {
    /// Fetches under `config` (nothing when it is not `enabled`).
    pub fn new(config: &InputUrlsConfig) -> Result<Self, reqwest::Error> {
        let fetcher = config.enabled.then(|| Fetcher::new(config)).transpose()?;
        Ok(Self { fetcher })
    }

    /// `input` with the media at its media fields' URLs fetched in their place, or `None`
    /// when no media field holds a URL.
    pub async fn fetch_into(&self, input: &Value) -> Result<Option<Value>, InputError> {
        let mut fetched: Option<Value> = None;
        for &field in MEDIA_FIELDS {
            let Some(Value::String(text)) = input.get(field) else {
                continue;
            };
            if url_scheme(text).is_none() {
                continue;
            }
            let media = self.fetch(field, text.trim()).await?;
            fetched.get_or_insert_with(|| input.clone())[field] = Value::String(data_url(&media));
        }
        Ok(fetched)
    }

    /// The media at `text`, a URL in `field`.
    async fn fetch(&self, field: &str, text: &str) -> Result<Fetched, InputError> {
        let url = Url::parse(text).map_err(|e| {
            let shown: String = text.chars().take(80).collect();
            unusable(
                field,
                &format!("{shown:?}"),
                &Problem::BadUrl(e.to_string()),
            )
        })?;
        let Some(fetcher) = &self.fetcher else {
            return Err(InputError::Unprocessable(format!(
                "input.{field}: this agent does not fetch media from URLs; send it as base64 \
                 or a data: URL"
            )));
        };
        let media = fetcher.fetch(&url).await.map_err(|problem| {
            tracing::info!(field, url = %shown(&url), %problem, "a media URL was not fetched");
            unusable(field, &shown(&url), &problem)
        })?;
        tracing::debug!(
            field,
            url = %shown(&url),
            bytes = media.bytes.len(),
            content_type = %media.content_type,
            "media input fetched"
        );
        Ok(media)
    }
}

fn unusable(field: &str, url: &str, problem: &Problem) -> InputError {
    InputError::Unprocessable(format!("input.{field}: {url}: {problem}"))
}

/// The scheme of `text` when it is a URL other than a `data:` URL (which the models decode).
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.trim_start().split_once(':')?;
    let mut chars = scheme.chars();
    let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    (is_scheme && !scheme.eq_ignore_ascii_case("data")).then_some(scheme)
}

/// `media` as a `data:<type>;base64,` URL.
fn data_url(media: &Fetched) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(&media.bytes);
    format!("data:{};base64,{encoded}", media.content_type)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::serving::decode_base64;

    #[test]
    fn urls_are_told_from_base64_and_data_urls() {
        assert_eq!(url_scheme("https://media.example/a.png"), Some("https"));
        assert_eq!(url_scheme("  HTTP://media.example/"), Some("HTTP"));
        assert_eq!(url_scheme("ftp://media.example/a"), Some("ftp"));
        assert_eq!(url_scheme("file:///etc/passwd"), Some("file"));
        assert_eq!(url_scheme("data:image/png;base64,iVBO"), None);
        assert_eq!(url_scheme("DATA:image/png;base64,iVBO"), None);
        assert_eq!(url_scheme("iVBORw0KGgo+/="), None);
        assert_eq!(url_scheme(":x"), None);
        assert_eq!(url_scheme("1http://x"), None);
    }

    #[test]
    fn fetched_media_decodes_as_the_models_decode_it() {
        let media = Fetched {
            content_type: "image/png".into(),
            bytes: vec![0, 1, 2, 250, 255],
        };
        let url = data_url(&media);
        assert!(url.starts_with("data:image/png;base64,"), "{url}");
        assert_eq!(decode_base64("image", &url).unwrap(), media.bytes);
    }

    #[tokio::test]
    async fn inputs_without_urls_are_left_alone_and_other_schemes_refused() {
        let urls = MediaUrls::new(&InputUrlsConfig::default()).unwrap();
        let plain = json!({"image": "aGVsbG8=", "text": "http://not.a.media.field/"});
        assert_eq!(urls.fetch_into(&plain).await.unwrap(), None);
        for (value, says) in [
            ("ftp://media.example/a.png", "not ftp:"),
            ("file:///etc/passwd", "not file:"),
            ("http://user:secret@media.example/", "user name or password"),
            ("http://[::1", "not a valid URL"),
            (
                "http://127.0.0.1:9/a.png",
                "127.0.0.1 is a loopback address",
            ),
        ] {
            let refused = urls.fetch_into(&json!({"video": value})).await;
            let Err(InputError::Unprocessable(message)) = refused else {
                panic!("{value}: {refused:?}");
            };
            assert!(message.starts_with("input.video: "), "{message}");
            assert!(message.contains(says), "{value}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[tokio::test]
    async fn with_fetching_off_a_url_is_refused() {
        let config = InputUrlsConfig {
            enabled: false,
            ..InputUrlsConfig::default()
        };
        let urls = MediaUrls::new(&config).unwrap();
        let input = json!({"audio": "https://media.example/a.wav"});
        let Err(InputError::Unprocessable(message)) = urls.fetch_into(&input).await else {
            panic!("a URL was accepted with fetching off");
        };
        assert!(
            message.contains("does not fetch media from URLs"),
            "{message}"
        );
    }
}
