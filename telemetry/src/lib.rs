//! How every Meridian binary sets up its logs.
//!
//! Each binary calls [`init`] once, first thing in `main`, so all components log the same
//! way and are configured by the same environment variables:
//!
//! | variable             | meaning                                                  | default |
//! | -------------------- | -------------------------------------------------------- | ------- |
//! | `MERIDIAN_LOG`       | filter in `tracing-subscriber`'s `EnvFilter` syntax, e.g. `info,policy=debug` (`RUST_LOG` is read when it is unset) | `info` |
//! | `MERIDIAN_LOG_FORMAT`| `human` (one readable line per event) or `json` (one JSON object per line, for log shippers) | `human` |
//!
//! Logs go to standard error, so standard output stays free for a command's own output.
//! Request bodies and secrets are never logged by Meridian; this crate cannot enforce that,
//! the call sites do.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// Environment variable holding the log filter.
pub const LOG_FILTER_VAR: &str = "MERIDIAN_LOG";
/// Environment variable holding the log format (`human` or `json`).
pub const LOG_FORMAT_VAR: &str = "MERIDIAN_LOG_FORMAT";

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "human" | "text" | "" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(TelemetryError::BadFormat(other.to_owned())),
        }
    }
}

/// What can go wrong while setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log format variable names an unknown format.
    #[error("{LOG_FORMAT_VAR}={0:?} is not a log format: use `human` or `json`")]
    BadFormat(String),
    /// The filter does not parse.
    #[error("{var}={value:?} is not a valid log filter ({reason}); example: `info,policy=debug`")]
    BadFilter {
        /// Which variable held it.
        var: &'static str,
        /// What it held.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A global subscriber was already installed (init called twice).
    #[error("logging is already set up in this process")]
    AlreadyInitialised,
}

/// Log settings, usually read from the environment with [`LogSettings::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `EnvFilter` directives.
    pub filter: String,
    /// Output format.
    pub format: LogFormat,
}

impl LogSettings {
    /// Reads `MERIDIAN_LOG` (or `RUST_LOG`) and `MERIDIAN_LOG_FORMAT`.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let (var, filter) = match lookup(LOG_FILTER_VAR) {
            Some(v) => (LOG_FILTER_VAR, v),
            None => match lookup("RUST_LOG") {
                Some(v) => ("RUST_LOG", v),
                None => (LOG_FILTER_VAR, "info".to_owned()),
            },
        };
        // Parse now so a typo is reported at start, naming the variable.
        EnvFilter::try_new(&filter).map_err(|e| TelemetryError::BadFilter {
            var,
            value: filter.clone(),
            reason: e.to_string(),
        })?;
        let format = lookup(LOG_FORMAT_VAR)
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or_default();
        Ok(Self { filter, format })
    }
}

/// Installs the global subscriber for `service` with settings from the environment.
///
/// `service` is recorded on the first event so that mixed logs can be told apart.
pub fn init(service: &'static str) -> Result<LogSettings, TelemetryError> {
    let settings = LogSettings::from_env()?;
    init_with(service, &settings)?;
    Ok(settings)
}

/// Installs the global subscriber with explicit settings.
pub fn init_with(service: &'static str, settings: &LogSettings) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&settings.filter).map_err(|e| TelemetryError::BadFilter {
        var: LOG_FILTER_VAR,
        value: settings.filter.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match settings.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInitialised)?;
    tracing::debug!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        "logging started"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn defaults_to_info_and_human() {
        let s = LogSettings::from_lookup(lookup(&[])).unwrap();
        assert_eq!(s.filter, "info");
        assert_eq!(s.format, LogFormat::Human);
    }

    #[test]
    fn meridian_log_wins_over_rust_log() {
        let s = LogSettings::from_lookup(lookup(&[
            ("MERIDIAN_LOG", "debug"),
            ("RUST_LOG", "warn"),
            ("MERIDIAN_LOG_FORMAT", "JSON"),
        ]))
        .unwrap();
        assert_eq!(s.filter, "debug");
        assert_eq!(s.format, LogFormat::Json);
        let s = LogSettings::from_lookup(lookup(&[("RUST_LOG", "warn")])).unwrap();
        assert_eq!(s.filter, "warn");
    }

    #[test]
    fn bad_settings_are_named_in_the_error() {
        let err = LogSettings::from_lookup(lookup(&[("MERIDIAN_LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("MERIDIAN_LOG_FORMAT"), "{err}");
        let err = LogSettings::from_lookup(lookup(&[("RUST_LOG", "policy=loud")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("RUST_LOG") && text.contains("policy=loud"),
            "{text}"
        );
    }

    #[test]
    fn second_init_is_an_error_not_a_panic() {
        let settings = LogSettings {
            filter: "off".into(),
            format: LogFormat::Human,
        };
        // The first call may lose a race with nothing else here; the second must fail.
        let _ = init_with("test", &settings);
        assert!(matches!(
            init_with("test", &settings),
            Err(TelemetryError::AlreadyInitialised)
        ));
    }
}
