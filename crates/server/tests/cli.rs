//! The command line: `config print` shows the effective configuration; a bad configuration
//! stops the start with exit code 2 and a message naming the key.

use std::process::Command;

fn datamiddleware() -> Command {
    Command::new(env!("CARGO_BIN_EXE_datamiddleware"))
}

#[test]
fn config_print_shows_file_env_and_flags_merged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dmw.toml");
    std::fs::write(&file, "[http]\nmax_in_flight = 77\n[games.rpg]\nstore = \"sqlite://x.db\"\n[games.rpg.collections.heroes]\n").unwrap();
    let output = datamiddleware()
        .args([
            "--config",
            file.to_str().unwrap(),
            "--tcp-listen",
            "127.0.0.1:7999",
            "config",
            "print",
        ])
        .env("DMW_STORE__TIMEOUT", "750ms")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let config: toml::Value = toml::from_str(&printed).expect("the output is TOML");
    assert_eq!(config["http"]["max_in_flight"].as_integer(), Some(77));
    assert_eq!(config["store"]["timeout"].as_str(), Some("750ms"));
    assert_eq!(config["tcp"]["listen"].as_str(), Some("127.0.0.1:7999"));
    assert!(config["games"].get("default").is_none());
    assert!(
        config["games"]["rpg"]["collections"]
            .get("heroes")
            .is_some()
    );
}

#[test]
fn invalid_configuration_fails_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dmw.toml");
    std::fs::write(
        &file,
        "[tcp]\nheartbeat_timeout = \"1s\"\nheartbeat_interval = \"5s\"\n",
    )
    .unwrap();
    let output = datamiddleware()
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8(output.stderr).unwrap();
    assert!(message.contains("tcp.heartbeat_timeout"), "{message}");
    let output = datamiddleware()
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("does not exist")
    );
}
