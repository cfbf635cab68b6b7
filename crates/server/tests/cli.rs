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

/// `doctor` checks this machine against the configuration: connection limits beyond any file
/// limit are a finding with its fix and exit status 1; small ones pass that check.
#[test]
fn doctor_names_each_shortfall_with_its_fix() {
    let run = |connections: &str| {
        datamiddleware()
            .arg("doctor")
            .env("DMW_HTTP__MAX_CONNECTIONS", connections)
            .env("DMW_TCP__MAX_CONNECTIONS", connections)
            .output()
            .unwrap()
    };
    let output = run("50000000");
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FIX  open files"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("100000080 needed"), "{line}");
    assert!(text.contains("LimitNOFILE=100000080"), "{text}");
    for check in ["listen backlog", "SYN backlog", "local ports", "memory"] {
        assert!(text.contains(check), "{check}: {text}");
    }
    let text = String::from_utf8(run("10").stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("ok   open files")),
        "{text}"
    );
}

/// `scripts/tune-linux.sh --dry-run` shows the seed's kernel settings without changing
/// anything, and never sets `tcp_tw_recycle` (removed from Linux 4.12).
#[test]
fn tune_linux_dry_run_lists_the_settings() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/tune-linux.sh");
    let output = Command::new("bash")
        .args([script, "--dry-run"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for setting in [
        "net.core.somaxconn = 65535",
        "net.ipv4.tcp_max_syn_backlog = 262144",
        "net.ipv4.ip_local_port_range = 1024 65535",
        "fs.file-max = 2097152",
    ] {
        assert!(text.contains(setting), "{setting}: {text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("net.ipv4.tcp_tw_recycle")),
        "{text}"
    );
    assert!(text.contains("tcp_tw_recycle is not set"));
}

/// `capacity` prints the seed's model with this build's costs; a machine it does not know is
/// refused with exit status 2.
#[test]
fn capacity_prints_the_model_and_refuses_unknown_machines() {
    let output = datamiddleware()
        .args(["capacity", "--connections", "400000", "--rps", "200000"])
        .args(["--machine", "flagship", "--mix", "http"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("machine flagship: 32 cores, 128 GiB"),
        "{text}"
    );
    // 200,000 req/s × 14.29 µs = 2.9 cores, below one flagship's 17.9 usable: two instances.
    assert!(text.contains("= 2.9 cores → 1 instance(s)"), "{text}");
    assert!(text.contains("instances     = 2"), "{text}");
    let refused = datamiddleware()
        .args([
            "capacity",
            "--connections",
            "1",
            "--rps",
            "1",
            "--machine",
            "huge",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("small, standard, large"));
}
