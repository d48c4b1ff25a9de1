//! Configuration parsing and validation cases.
#![allow(clippy::unwrap_used)]

use super::*;

const GOOD: &str = r#"
region = "eu-west"
listen = "127.0.0.1:0"
edge_token = "edge-token-0123456789"
data_dir = "/tmp/agent"
on_demand_start_ms = 250

[control_plane]
url = "http://127.0.0.1:7070"
agent_token = "agent-token-0123456789"

[[models]]
id = "meridian/esrgan-x2"
weights_dir = "models/esrgan-slim"
max_batch = 4
"#;

fn problems(text: &str) -> Vec<contract::ConfigProblem> {
    match AgentConfig::from_toml(text) {
        Err(ConfigError::Invalid(problems)) => problems.into_vec(),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn places(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.place).collect()
}

#[test]
fn a_complete_file_gets_its_values_and_defaults() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!(config.region.as_str(), "eu-west");
    assert_eq!(config.result_retention, Duration::from_secs(86_400));
    assert_eq!(config.usage_retention, Duration::from_secs(90 * 86_400));
    assert_eq!(config.max_body_bytes, 32 << 20);
    assert_eq!(config.sync_timeout, Duration::from_secs(60));
    assert_eq!(config.on_demand.start_delay, Duration::from_millis(250));
    assert_eq!(config.on_demand.idle_stop, Duration::from_secs(60));
    let cp = config.control_plane().unwrap();
    assert_eq!(cp.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(cp.usage_interval, Duration::from_secs(10));
    let model = config.model("meridian/esrgan-x2").unwrap();
    assert_eq!((model.max_batch, model.queue_bound), (4, 64));
    assert_eq!(model.keep_alive, Duration::from_secs(300));
}

#[test]
fn printing_the_configuration_never_shows_a_token() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    for printed in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(!printed.contains("edge-token-0123456789"), "{printed}");
        assert!(!printed.contains("agent-token-0123456789"), "{printed}");
        assert!(printed.contains("[redacted]"), "{printed}");
    }
    let file: file::AgentFile = toml::from_str(GOOD).unwrap();
    assert!(!format!("{file:?}").contains("token-0123456789"));
    assert_eq!(config.edge_token.expose(), "edge-token-0123456789");
}

#[test]
fn exactly_one_catalog_source_is_required() {
    let start = GOOD.find("[control_plane]").unwrap();
    let end = GOOD.find("[[models]]").unwrap();
    let without = format!("{}{}", &GOOD[..start], &GOOD[end..]);
    let with_file = without.replace(
        "on_demand_start_ms",
        "catalog_file = \"catalog.toml\"\non_demand_start_ms",
    );
    let config = AgentConfig::from_toml(&with_file).unwrap();
    assert_eq!(config.catalog, CatalogSource::File("catalog.toml".into()));
    assert!(config.control_plane().is_none());

    let neither = problems(&without);
    assert_eq!(neither[0].place, "control_plane");
    assert!(neither[0].fix.contains("catalog_file"), "{}", neither[0]);
    let both = GOOD.replace(
        "on_demand_start_ms",
        "catalog_file = \"catalog.toml\"\non_demand_start_ms",
    );
    assert_eq!(places(&both), ["catalog_file"]);
}

#[test]
fn unknown_fields_are_refused_with_their_line() {
    let text = GOOD.replace("max_batch = 4", "max_batch = 4\nbatch_size = 3");
    let problems = problems(&text);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].place, "models[0].batch_size");
    assert!(problems[0].problem.contains("line 16"), "{}", problems[0]);
    let err = AgentConfig::from_toml("region = ").unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}

#[test]
fn pools_and_prices_are_refused_as_the_catalog_s() {
    let text = format!("{GOOD}price_per_unit = 0.25\n\n[[pools]]\nid = \"h100\"\nreserved = 2\n");
    let problems = problems(&text);
    let places: Vec<_> = problems.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(places, ["models[0].price_per_unit", "pools[0]"]);
    assert!(
        problems.iter().all(|p| p.fix.contains("catalog")),
        "{problems:?}"
    );
    assert!(problems[1].problem.contains("line 18"), "{}", problems[1]);
    assert!(problems[1].fix.contains("[pools]"), "{}", problems[1]);
}

#[test]
fn every_problem_is_named_with_its_fix() {
    let text = GOOD
        .replace("edge-token-0123456789", "short")
        .replace(
            "max_batch = 4",
            "max_batch = 0\ntimeout_s = 0\nmax_output_pixels = 0\nmax_audio_seconds = 0",
        )
        .replace("\"eu-west\"", "\"EU West\"")
        .replace("agent-token-0123456789", "x");
    let found = problems(&text);
    let places: Vec<_> = found.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(
        places,
        [
            "region",
            "edge_token",
            "control_plane.agent_token",
            "models[0].max_batch",
            "models[0].timeout_s",
            "models[0].max_output_pixels",
            "models[0].max_audio_seconds",
        ]
    );
    assert!(
        found[0].problem.contains("not a valid region id"),
        "{}",
        found[0]
    );
    assert!(found.iter().all(|p| !p.fix.is_empty()));
}

#[test]
fn duplicate_models_and_bad_ids_are_refused() {
    let text = format!(
        "{GOOD}\n[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"x\"\n\n[[models]]\nid = \"esrgan\"\nweights_dir = \"x\"\n"
    );
    assert_eq!(places(&text), ["models[1].id", "models[2].id"]);
}

#[test]
fn weights_come_from_a_directory_or_the_pipeline_test_model() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!(
        config.models[0].weights,
        ModelWeights::Dir(PathBuf::from("models/esrgan-slim"))
    );
    let text = GOOD.replace(
        "weights_dir = \"models/esrgan-slim\"",
        "pipeline_test = true",
    );
    let config = AgentConfig::from_toml(&text).unwrap();
    assert_eq!(config.models[0].weights, ModelWeights::PipelineTest);
}

#[test]
fn weights_must_be_named_once() {
    let neither = GOOD.replace("weights_dir = \"models/esrgan-slim\"\n", "");
    let both = GOOD.replace(
        "weights_dir = \"models/esrgan-slim\"",
        "weights_dir = \"models/esrgan-slim\"\npipeline_test = true",
    );
    let empty = GOOD.replace("\"models/esrgan-slim\"", "\"\"");
    for (text, place) in [
        (neither, "models[0].weights_dir"),
        (both, "models[0].pipeline_test"),
        (empty, "models[0].weights_dir"),
    ] {
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].place, place);
        assert!(!found[0].fix.is_empty());
    }
}

#[test]
fn relative_paths_are_taken_from_the_file_s_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let text = GOOD.replace(
        "[control_plane]\nurl = \"http://127.0.0.1:7070\"\nagent_token = \"agent-token-0123456789\"\n",
        "",
    );
    let text = text.replace(
        "on_demand_start_ms",
        "catalog_file = \"catalog.toml\"\non_demand_start_ms",
    );
    std::fs::write(&path, text.replace("/tmp/agent", "data")).unwrap();
    let config = AgentConfig::load(&path).unwrap();
    assert_eq!(config.data_dir, dir.path().join("data"));
    assert_eq!(
        config.catalog,
        CatalogSource::File(dir.path().join("catalog.toml"))
    );
}

#[test]
fn connection_limits_and_free_disk_have_defaults_and_are_checked() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!(config.connections, ConnectionLimits::default());
    assert_eq!(config.connections.header_read, Duration::from_secs(10));
    assert_eq!(config.connections.body_read, Duration::from_secs(60));
    assert_eq!(config.connections.idle, Duration::from_secs(30));
    assert_eq!(
        (
            config.connections.max_total,
            config.connections.max_per_client
        ),
        (1024, 256)
    );
    assert_eq!(config.min_free_disk_bytes, 1 << 30);

    let set = GOOD.replace(
        "on_demand_start_ms = 250",
        "on_demand_start_ms = 250\nheader_read_timeout_ms = 500\nmax_connections = 8\n\
         min_free_disk_bytes = 0",
    );
    let config = AgentConfig::from_toml(&set).unwrap();
    assert_eq!(config.connections.header_read, Duration::from_millis(500));
    assert_eq!(config.connections.max_per_client, 8, "capped by the total");
    assert_eq!(config.min_free_disk_bytes, 0);

    let bad = GOOD.replace(
        "on_demand_start_ms = 250",
        "body_read_timeout_ms = 0\nkeep_alive_idle_ms = 0\nmax_connections = 4\n\
         max_connections_per_client = 5",
    );
    assert_eq!(
        places(&bad),
        [
            "body_read_timeout_ms",
            "keep_alive_idle_ms",
            "max_connections_per_client"
        ]
    );
}

#[test]
fn gpus_have_defaults_and_their_settings_are_checked() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!(config.gpus, GpuConfig::default());
    assert_eq!(
        (
            config.gpus.slots_per_device,
            config.gpus.accept_mismatch,
            config.gpus.weights_memory_factor
        ),
        (1, false, 3.0)
    );
    assert_eq!(config.gpus.nvml_library, Path::new("libnvidia-ml.so.1"));

    let set = GOOD.replace(
        "[control_plane]",
        "[gpus]\nslots_per_device = 2\naccept_mismatch = true\nweights_memory_factor = 1.5\n\
         nvml_library = \"/usr/lib64/libnvidia-ml.so.1\"\n\n[control_plane]",
    );
    let gpus = AgentConfig::from_toml(&set).unwrap().gpus;
    assert_eq!(
        gpus,
        GpuConfig {
            slots_per_device: 2,
            accept_mismatch: true,
            weights_memory_factor: 1.5,
            nvml_library: "/usr/lib64/libnvidia-ml.so.1".into(),
        }
    );

    for (bad, place) in [
        ("slots_per_device = 0", "gpus.slots_per_device"),
        ("slots_per_device = 17", "gpus.slots_per_device"),
        ("weights_memory_factor = 0.5", "gpus.weights_memory_factor"),
        ("weights_memory_factor = nan", "gpus.weights_memory_factor"),
        ("nvml_library = \"\"", "gpus.nvml_library"),
        ("gpu_count = 4", "gpus.gpu_count"),
    ] {
        let text = GOOD.replace(
            "[control_plane]",
            &format!("[gpus]\n{bad}\n\n[control_plane]"),
        );
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert_eq!(problems[0].place, place, "{bad}");
        assert!(!problems[0].fix.is_empty(), "{bad}");
    }
}

#[test]
fn input_urls_have_defaults_follow_the_body_limit_and_are_checked() {
    let with = |section: &str| format!("{GOOD}\n[input_urls]\n{section}\n");
    let defaults = AgentConfig::from_toml(GOOD).unwrap().input_urls;
    assert_eq!(defaults, InputUrlsConfig::default());
    assert!(defaults.enabled && defaults.allow.is_empty());
    assert_eq!(defaults.max_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(defaults.timeout, Duration::from_secs(30));
    assert_eq!(defaults.connect_timeout, Duration::from_secs(5));
    assert_eq!(defaults.max_redirects, 5);
    let larger_body = GOOD.replace(
        "on_demand_start_ms",
        "max_body_bytes = 1000\non_demand_start_ms",
    );
    let follows = AgentConfig::from_toml(&larger_body).unwrap().input_urls;
    assert_eq!(follows.max_bytes, 1000);

    let set = with(
        "enabled = false\nmax_bytes = 4096\ntimeout_ms = 800\nmax_redirects = 0\n\
         allow = [\"127.0.0.1\", \"10.20.0.0/16\", \"fd00::/8\"]",
    );
    let set = AgentConfig::from_toml(&set).unwrap().input_urls;
    assert!(!set.enabled);
    assert_eq!((set.max_bytes, set.max_redirects), (4096, 0));
    assert_eq!(set.timeout, Duration::from_millis(800));
    assert_eq!(
        set.connect_timeout,
        Duration::from_millis(800),
        "capped by timeout_ms"
    );
    let allow: Vec<String> = set.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["127.0.0.1/32", "10.20.0.0/16", "fd00::/8"]);

    for (bad, place) in [
        ("max_bytes = 0", "input_urls.max_bytes"),
        ("timeout_ms = 0", "input_urls.timeout_ms"),
        ("connect_timeout_ms = 0", "input_urls.connect_timeout_ms"),
        (
            "timeout_ms = 100\nconnect_timeout_ms = 200",
            "input_urls.connect_timeout_ms",
        ),
        (
            "allow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]",
            "input_urls.allow[1]",
        ),
        ("allow = [\"localhost\"]", "input_urls.allow[0]"),
        ("deny = []", "input_urls.deny"),
    ] {
        let problems = problems(&with(bad));
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert_eq!(problems[0].place, place, "{bad}");
        assert!(!problems[0].fix.is_empty(), "{bad}");
    }
}

#[test]
fn an_instance_id_is_checked_and_optional() {
    assert_eq!(AgentConfig::from_toml(GOOD).unwrap().instance, None);
    let named = GOOD.replacen("region = ", "instance = \"gpu-host-3\"\nregion = ", 1);
    let config = AgentConfig::from_toml(&named).unwrap();
    assert_eq!(config.instance.unwrap().as_str(), "gpu-host-3");
    let bad = GOOD.replacen("region = ", "instance = \"GPU host\"\nregion = ", 1);
    assert_eq!(places(&bad), ["instance"]);
}

/// `GOOD` with `top` among its top-level fields and `tables` at its end.
fn with_instance(top: &str, tables: &str) -> String {
    let text = GOOD.replacen("region = ", &format!("{top}\nregion = "), 1);
    format!("{text}\n{tables}\n")
}

#[test]
fn an_endpoint_and_a_share_of_the_pools_are_read() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!((config.endpoint, config.pools), (None, None));
    let text = with_instance(
        "endpoint = \"http://10.0.3.7:9102/\"",
        "[pools]\nh100 = { reserved = 1, on_demand = 2 }\ncpu = { on_demand = 3 }",
    );
    let config = AgentConfig::from_toml(&text).unwrap();
    assert_eq!(config.endpoint.as_deref(), Some("http://10.0.3.7:9102"));
    let pools = config.pools.unwrap();
    let shares: Vec<_> = pools
        .iter()
        .map(|(id, s)| (id.as_str(), s.reserved, s.on_demand))
        .collect();
    assert_eq!(shares, [("cpu", 0, 3), ("h100", 1, 2)]);
}

#[test]
fn an_unusable_endpoint_is_refused_with_its_fix() {
    for bad in [
        "10.0.3.7:9102",
        "ftp://10.0.3.7",
        "http://",
        "http://user:secret@10.0.3.7",
        "https://agents.example.com/?region=eu",
    ] {
        let found = problems(&with_instance(&format!("endpoint = {bad:?}"), ""));
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
        assert_eq!(found[0].place, "endpoint", "{bad}");
        assert!(found[0].problem.contains(bad), "{bad}: {}", found[0]);
        assert!(found[0].fix.contains("http://"), "{bad}: {}", found[0]);
    }
    let typed = AgentConfig::from_toml(&with_instance("endpoint = 9102", "")).unwrap_err();
    assert!(matches!(typed, ConfigError::Parse { .. }), "{typed}");
}

#[test]
fn a_share_names_pools_by_id_and_gives_at_least_one_slot() {
    for (pools, place, says) in [
        (
            "\"H100 x\" = { reserved = 1 }",
            "pools.H100 x",
            "not a valid pool id",
        ),
        ("h100 = { reserved = 0, on_demand = 0 }", "pools", "no slot"),
        ("", "pools", "no slot"),
        (
            "h100 = { reserved = 1, on_demand_max = 2 }",
            "pools.h100.on_demand_max",
            "unknown field",
        ),
        (
            "h100 = { reserved = 1, price_per_hour = 2.5 }",
            "pools.h100.price_per_hour",
            "unknown field",
        ),
    ] {
        let found = problems(&with_instance("", &format!("[pools]\n{pools}")));
        assert_eq!(found.len(), 1, "{pools}: {found:?}");
        assert_eq!(found[0].place, place, "{pools}");
        assert!(found[0].problem.contains(says), "{pools}: {}", found[0]);
        assert!(!found[0].fix.is_empty());
    }
    let share_fields = problems(&with_instance(
        "",
        "[pools]\nh100 = { reserved = 1, price_per_hour = 2.5 }",
    ));
    assert!(
        share_fields[0].fix.contains("reserved and on_demand"),
        "{}",
        share_fields[0]
    );
    let negative = with_instance("", "[pools]\nh100 = { reserved = -1 }");
    let err = AgentConfig::from_toml(&negative).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}
