//! The `control-plane` binary's offline catalog commands, run as an operator would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(args)
        .env("MERIDIAN_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_catalog_is_valid() {
    let example = repo("examples/catalog.toml");
    let out = run(&["validate-catalog", example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("valid — 3 jurisdictions, 3 regions, 6 models, 2 tenants"),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn a_broken_catalog_lists_every_problem_and_fails() {
    let dir = std::env::temp_dir().join(format!("meridian-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    let example = std::fs::read_to_string(repo("examples/catalog.toml")).unwrap();
    let broken = example
        .replacen("reserved = 2\n", "reserved = -2\n", 1)
        .replacen(
            "residency = { jurisdictions = [\"eu\"] }",
            "residency = { jurisdictions = [\"europe\"] }",
            1,
        );
    std::fs::write(&file, broken).unwrap();
    let out = run(&["validate-catalog", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2 problems in the configuration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("regions[1].pools[0].reserved: reserved is -2"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "tenants[1].residency.jurisdictions[0]: jurisdiction \"europe\" is not declared"
        ),
        "{stderr}"
    );

    std::fs::write(&file, "[[regions]\n").unwrap();
    let out = run(&["validate-catalog", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("parse catalog"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "validate-catalog",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert!(
        text(&out.stderr).contains("read catalog"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn route_shows_the_order_and_why_not_the_others() {
    let example = repo("examples/catalog.toml");
    // The EU tenant in London: only eu-west, and the others say why.
    let out = run(&[
        "route",
        example.to_str().unwrap(),
        "--tenant",
        "eu-corp",
        "--model",
        "meridian/esrgan-x4",
        "--from",
        "51.5,-0.13",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(" 1. eu-west (eu) — idle reserved GPU"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not us-east (us): is outside the tenant's residency"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not ap-south (in): is outside the tenant's residency"),
        "{stdout}"
    );
    assert!(!stdout.contains(" 2. "), "{stdout}");

    // A model the tenant may not call is refused with its status.
    let out = run(&[
        "route",
        example.to_str().unwrap(),
        "--tenant",
        "eu-corp",
        "--model",
        "meridian/video-upscale-x2",
        "--from",
        "51.5,-0.13",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("HTTP 403"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn route_can_locate_the_client_by_address() {
    let example = repo("examples/catalog.toml");
    let geoip = repo("policy/tests/data/geoip/GeoLite2-City-Test.mmdb");
    // 216.160.83.56 is Milton, Washington in the test database: us-east comes first.
    let out = run(&[
        "route",
        example.to_str().unwrap(),
        "--tenant",
        "demo",
        "--model",
        "meridian/tiny-sd",
        "--client-ip",
        "216.160.83.56",
        "--geoip",
        geoip.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("from 216.160.83.56 (Milton, US)"),
        "{stdout}"
    );
    assert!(stdout.contains(" 1. us-east (us)"), "{stdout}");
    assert!(
        stdout.contains("not ap-south (in): does not serve the model"),
        "{stdout}"
    );
    // An address the database does not know is an error that says so.
    let out = run(&[
        "route",
        example.to_str().unwrap(),
        "--tenant",
        "demo",
        "--model",
        "meridian/tiny-sd",
        "--client-ip",
        "10.0.0.1",
        "--geoip",
        geoip.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("10.0.0.1 is not in"),
        "{}",
        text(&out.stderr)
    );
}
