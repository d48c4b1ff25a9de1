//! The configuration file's checks.
#![allow(clippy::unwrap_used)]

use super::*;

const GOOD: &str = r#"
    [listen]
    http = ["127.0.0.1:8080"]
    admin = "127.0.0.1:9090"
    [control_plane]
    url = "http://127.0.0.1:7070/"
    edge_token = "edge-token-0123456789"
    [geoip]
    location = { lat = 51.5, lon = -0.12 }
    trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]
    [agents]
    edge_token = "agent-token-0123456789"
"#;

fn check(text: &str, env: &[(&str, &str)]) -> Result<EdgeConfig, ConfigError> {
    let file: ConfigFile = ConfigError::parse(text, None)?;
    file.check(Path::new("/nonexistent"), |name| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let config = check(GOOD, &[]).unwrap();
    assert_eq!(config.control_plane_url, "http://127.0.0.1:7070");
    assert_eq!(config.max_body_bytes, 32 << 20);
    assert_eq!(config.retry_floor, 10);
    assert_eq!(config.breaker_failures, 5);
    assert_eq!(config.read_timeout, Duration::from_secs(120));
    assert_eq!(config.agent_idle_timeout, Duration::from_secs(20));
    assert_eq!(
        config.snapshot_cache,
        Path::new("/nonexistent/edge-snapshot.json")
    );
    assert_eq!(config.trusted_proxies.len(), 2);
}

#[test]
fn the_environment_overrides_tokens() {
    let config = check(GOOD, &[(ENV_AGENT_TOKEN, "from-the-environment-123")]).unwrap();
    assert_eq!(config.agent_token.expose(), "from-the-environment-123");
}

#[test]
fn debug_never_prints_a_token() {
    let config = check(GOOD, &[]).unwrap();
    let printed = format!("{config:?}");
    assert!(!printed.contains("edge-token-0123456789"), "{printed}");
    assert!(!printed.contains("agent-token-0123456789"), "{printed}");
    assert!(printed.contains("[redacted]"), "{printed}");
    let file: ConfigFile = ConfigError::parse(GOOD, None).unwrap();
    let printed = format!("{file:?}");
    assert!(!printed.contains("token-0123456789"), "{printed}");
}

#[test]
fn client_limits_and_connections_have_documented_defaults_and_are_checked() {
    let config = check(GOOD, &[]).unwrap();
    assert_eq!(config.limits.reads.per_second, 50.0);
    assert_eq!(config.limits.reads.burst, 100);
    assert_eq!(config.limits.idempotency_keys, 100_000);
    assert_eq!(config.limits.failed_keys_per_minute, 20);
    assert_eq!(config.connections.header_timeout, Duration::from_secs(10));
    assert_eq!(config.connections.body_timeout, Duration::from_secs(60));
    assert_eq!(config.connections.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        (config.connections.max, config.connections.max_per_address),
        (10_000, 256)
    );
    let text = format!(
        "{GOOD}\n[limits]\nreads_per_second = 0.0\nfailed_keys_per_minute = 0\n\
         [connections]\nheader_timeout_ms = 5\nmax = 10\nmax_per_address = 11\n"
    );
    let Err(ConfigError::Invalid(problems)) = check(&text, &[]) else {
        panic!("expected problems");
    };
    for place in [
        "limits.reads_per_second",
        "limits.failed_keys_per_minute",
        "connections.header_timeout_ms",
        "connections.max_per_address",
    ] {
        assert!(problems.has_place(place), "{place}: {problems}");
    }
}

#[test]
fn unknown_fields_are_rejected() {
    let text = GOOD.replace("[agents]", "[agents]\nconect_timeout_ms = 5");
    let err = check(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("conect_timeout_ms"), "{err}");
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let text = GOOD
        .replace("127.0.0.1:8080", "localhost")
        .replace("10.0.0.0/8", "10.0.0.0/33")
        .replace("agent-token-0123456789", "short")
        .replace("lat = 51.5", "lat = 91.0");
    let Err(ConfigError::Invalid(problems)) = check(&text, &[]) else {
        panic!("expected problems");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(
        fields,
        [
            "listen.http[0]",
            "geoip.location",
            "geoip.trusted_proxies[0]",
            "agents.edge_token"
        ]
    );
}

#[test]
fn the_upgrade_socket_is_relative_to_the_file_and_must_fit_a_socket_address() {
    let with = |path: &str| {
        let text = GOOD.replace(
            "[control_plane]",
            &format!("upgrade_socket = {path:?}\n[control_plane]"),
        );
        check(&text, &[])
    };
    assert_eq!(check(GOOD, &[]).unwrap().upgrade_socket, None);
    assert_eq!(
        with("run/edge.sock").unwrap().upgrade_socket.as_deref(),
        Some(Path::new("/nonexistent/run/edge.sock"))
    );
    let Err(ConfigError::Invalid(problems)) = with(&format!("/{}", "x".repeat(120))) else {
        panic!("expected a problem");
    };
    assert!(problems.has_place("listen.upgrade_socket"), "{problems}");
}

#[test]
fn a_public_url_is_an_http_url_without_query_kept_without_its_trailing_slash() {
    let with = |url: &str| {
        let text = GOOD.replace(
            "[control_plane]",
            &format!("public_url = {url:?}\n[control_plane]"),
        );
        check(&text, &[])
    };
    assert_eq!(check(GOOD, &[]).unwrap().public_url, None);
    assert_eq!(
        with("https://api.example.com/")
            .unwrap()
            .public_url
            .as_deref(),
        Some("https://api.example.com")
    );
    for bad in ["api.example.com", "https://api.example.com/?a=1"] {
        let Err(ConfigError::Invalid(problems)) = with(bad) else {
            panic!("expected a problem for {bad}");
        };
        assert!(problems.has_place("listen.public_url"), "{problems}");
    }
}
