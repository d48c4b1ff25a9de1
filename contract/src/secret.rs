//! A secret read from configuration (a token): it prints as `[redacted]` in `Debug` and
//! `Display`, so a logged or printed configuration never shows it, and it compares in
//! constant time.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A token or other secret. Only [`Secret::expose`] gives its text.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret's text, for sending it or checking its shape.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, compared in time that does not depend on where
    /// they differ (only on the lengths).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if expected.len() != presented.len() {
            return false;
        }
        expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let secret = Secret::new("hunter2-0123456789".into());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&secret)), "Some([redacted])");
        assert_eq!(secret.expose(), "hunter2-0123456789");
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let secret = Secret::new("token-0123456789".into());
        assert!(secret.matches(b"token-0123456789"));
        assert!(!secret.matches(b"token-0123456788"));
        assert!(!secret.matches(b"token-012345678"));
        assert!(!secret.matches(b""));
        assert_eq!(secret, Secret::from("token-0123456789".to_owned()));
    }

    #[test]
    fn deserializes_from_a_plain_string() {
        #[derive(Deserialize)]
        struct File {
            token: Secret,
        }
        let file: File = toml::from_str("token = \"abc-0123456789abcdef\"").expect("parses");
        assert_eq!(file.token.expose(), "abc-0123456789abcdef");
    }
}
