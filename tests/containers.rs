//! The container files stay in step with the code and CI: `.env.example` is a configuration
//! full_proxy accepts, and the Dockerfile builds with the very command `.ci/run` proves (images
//! cannot be built in CI, so this is what keeps them honest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;

use support::Config;

/// The Dockerfile's build command, which `.ci/run` also runs.
const BUILD: &str = "cargo build --release --locked --example full_proxy";

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn env_example_is_a_valid_configuration_as_shipped_and_uncommented() {
    let text = read(".env.example");
    let vars: HashMap<String, String> = dotenvy::from_read_iter(text.as_bytes())
        .map(Result::unwrap)
        .collect();
    assert!(vars.contains_key("GEMINI_API_KEYS") && vars.contains_key("ADMIN_TOKEN"));
    Config::from_map(&vars).expect(".env.example as shipped");

    // Every commented example (`# NAME=value`) is a value full_proxy accepts too.
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.split_once('=').is_some_and(|(k, _)| is_name(k)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.lines().count() >= 15, "{uncommented}");
    let mut all = vars;
    all.extend(
        dotenvy::from_read_iter(uncommented.as_bytes())
            .map(Result::unwrap)
            .collect::<HashMap<_, _>>(),
    );
    Config::from_map(&all).expect(".env.example with every example set");
}

fn is_name(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

#[test]
fn dockerfile_builds_with_the_command_ci_runs() {
    assert!(read("Dockerfile").contains(BUILD));
    assert!(read(".ci/run").contains(BUILD));
}

#[test]
fn dockerfile_runs_as_non_root_on_all_interfaces_with_a_health_check() {
    let docker = read("Dockerfile");
    for needle in [
        "USER 10001",
        "LISTEN_ADDR=0.0.0.0:8080",
        "EXPOSE 8080",
        "HEALTHCHECK",
        "GET /health",
        "FROM debian:bookworm-slim",
    ] {
        assert!(docker.contains(needle), "Dockerfile lacks `{needle}`");
    }
}

#[test]
fn compose_reads_env_file_and_points_redis_url_at_its_redis_service() {
    let compose = read("docker-compose.yml");
    for needle in [
        "env_file: .env",
        "REDIS_URL: redis://redis:6379",
        "  redis:\n",
        "condition: service_healthy",
    ] {
        assert!(
            compose.contains(needle),
            "docker-compose.yml lacks `{needle}`"
        );
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == ".env"),
        "the image must not carry .env"
    );
}
