//! Unit tests of configuration loading and validation: defaults, file, environment, and an
//! error naming the key for every bad value.

use super::*;

/// Loads `text` as the config file. Runs inside a figment `Jail`, which serialises the tests
/// that touch process environment variables (one of them sets `DMW_…`).
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn load_toml(text: &str) -> Result<Config, ConfigError> {
    let mut result = None;
    figment::Jail::expect_with(|jail| {
        jail.create_file("dmw.toml", text)?;
        result = Some(Config::load(
            Some(Path::new("dmw.toml")),
            &CliOverrides::default(),
        ));
        Ok(())
    });
    result.expect("the jail ran")
}

fn problem(text: &str) -> String {
    load_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_declare_the_default_game() {
    let config = Config::default().with_default_game();
    config.validate().unwrap();
    let game = &config.games["default"];
    assert_eq!(game.store, DEFAULT_STORE_URL);
    let ttl = |c: &str| game.collections[c].l1_ttl.as_secs();
    assert_eq!(
        (
            ttl("players"),
            ttl("characters"),
            ttl("items"),
            ttl("orders")
        ),
        (600, 300, 180, 60)
    );
    assert_eq!(game.collections["players"].l2_ttl.as_secs(), 3600);
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
}

#[test]
fn a_file_with_games_replaces_the_default_game() {
    let config = load_toml(
        r#"
        [http]
        listen = "127.0.0.1:9000"
        [games.rpg]
        store = "postgres://db/rpg"
        [games.rpg.collections.heroes]
        l1_ttl = "30s"
        "#,
    )
    .unwrap();
    assert_eq!(config.http.listen.port(), 9000);
    assert!(!config.games.contains_key("default"));
    let heroes = &config.games["rpg"].collections["heroes"];
    assert_eq!(heroes.l1_ttl.as_secs(), 30);
    assert_eq!(
        heroes.negative_ttl.as_secs(),
        5,
        "unset members keep their defaults"
    );
}

#[test]
fn invalid_values_name_their_key() {
    assert!(problem("[http]\nmax_in_flight = 0\n").contains("http.max_in_flight"));
    assert!(problem("[store]\nidle_timeout = \"0s\"\n").contains("store.idle_timeout"));
    assert!(problem("[store]\nmax_lifetime = \"0s\"\n").contains("store.max_lifetime"));
    assert!(problem("[http]\nlisten = \"nowhere\"\n").contains("listen"));
    assert!(problem("[http]\nlistne = \"127.0.0.1:1\"\n").contains("listne"));
    assert!(
        problem("[games.Bad]\nstore = \"sqlite://x.db\"\n[games.Bad.collections.a]\n")
            .contains("games.Bad")
    );
    assert!(
        problem("[games.g]\nstore = \"redis://x\"\n[games.g.collections.a]\n")
            .contains("games.g.store")
    );
    assert!(
        problem("[games.g]\nstore = \"sqlite://x.db\"\ncollections = {}\n")
            .contains("games.g.collections")
    );
    assert!(
        problem("[games.g]\nstore = \"sqlite://x.db\"\n[games.g.collections.a]\nl2_ttl = \"0s\"\n")
            .contains("games.g.collections.a.l2_ttl")
    );
    let game = "[games.g]\nstore = \"sqlite://x.db\"\n[games.g.collections.a]\n";
    for (cache, key) in [
        (
            "l2_url = \"redis://a\"\nl2_cluster_nodes = [\"redis://b\"]",
            "cache.l2_cluster_nodes",
        ),
        ("l2_url = \"http://a\"", "cache.l2_url"),
        (
            "l2_cluster_nodes = [\"10.0.0.1:7000\"]",
            "cache.l2_cluster_nodes",
        ),
        ("l2_prefix = \"Bad Prefix\"", "cache.l2_prefix"),
        ("l2_prefix = \"\"", "cache.l2_prefix"),
        ("l2_timeout = \"0s\"", "cache.l2_timeout"),
        ("l2_timeout = \"200ms\"", "cache.l2_timeout"),
        (
            "bus_heartbeat = \"100ms\"\nbus_silence = \"150ms\"",
            "cache.bus_silence",
        ),
    ] {
        let text = problem(&format!("[cache]\n{cache}\n{game}"));
        assert!(text.contains(key), "{cache}: {text}");
    }
    assert!(
        problem(
            "[games.g]\nstore = \"sqlite://x.db\"\n[games.g.collections.a]\nl1_ttl = \"soon\"\n"
        )
        .contains("l1_ttl")
    );
    assert!(matches!(
        Config::load(
            Some(Path::new("/nonexistent/dmw.toml")),
            &CliOverrides::default()
        ),
        Err(ConfigError::MissingFile(_))
    ));
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn environment_and_cli_override_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "dmw.toml",
            "[http]\nmax_in_flight = 10\nmax_body_bytes = 300000\n",
        )?;
        jail.set_env("DMW_HTTP__MAX_IN_FLIGHT", "20");
        jail.set_env("DMW_STORE__TIMEOUT", "250ms");
        jail.set_env("DMW_CONFIG", "ignored-by-the-settings-loader");
        let cli = CliOverrides {
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            tcp_listen: None,
        };
        let config = Config::load(Some(Path::new("dmw.toml")), &cli).map_err(|e| e.to_string())?;
        assert_eq!(config.http.max_in_flight, 20);
        assert_eq!(config.http.max_body_bytes, 300000);
        assert_eq!(config.store.timeout.as_millis(), 250);
        assert_eq!(config.http.listen.port(), 7000);
        jail.set_env("DMW_GAMES__DEFAULT__STORE", "postgres://db/x");
        let config = Config::load(None, &CliOverrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(config.games["default"].store, "postgres://db/x");
        assert_eq!(
            config.games["default"].collections.len(),
            4,
            "default collections kept"
        );
        jail.set_env("DMW_HTTP__NOPE", "1");
        let err = Config::load(None, &CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        Ok(())
    });
}

#[test]
fn printed_config_loads_back_identically() {
    let config = Config::default().with_default_game();
    let printed = config.to_toml();
    let reloaded = load_toml(&printed).unwrap();
    assert_eq!(reloaded.to_toml(), printed);
}

#[test]
fn the_heartbeat_timeout_follows_the_interval_unless_set() {
    let config = load_toml("[tcp]\nheartbeat_interval = \"1m\"\n").unwrap();
    assert_eq!(
        config.tcp.heartbeat_timeout().as_secs(),
        180,
        "3 x the interval"
    );
    let config =
        load_toml("[tcp]\nheartbeat_interval = \"10s\"\nheartbeat_timeout = \"25s\"\n").unwrap();
    assert_eq!(config.tcp.heartbeat_timeout().as_secs(), 25);
    assert_eq!(Config::default().tcp.heartbeat_timeout().as_secs(), 90);
    // A timeout not above the interval is refused, naming the key.
    let err = problem("[tcp]\nheartbeat_interval = \"10s\"\nheartbeat_timeout = \"10s\"\n");
    assert!(err.contains("tcp.heartbeat_timeout"), "{err}");
    let err = problem("[tcp]\nheartbeat_interval = \"500us\"\n");
    assert!(err.contains("tcp.heartbeat_interval"), "{err}");
    // Unset, it is not printed (so a printed config keeps following the interval).
    assert!(!Config::default().to_toml().contains("heartbeat_timeout"));
}

/// README: durations are a number with a unit, several may follow each other, in files and in
/// `DMW_` variables alike; a bare number is refused with the key named.
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn durations_are_written_with_units_in_files_and_variables() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("DMW_TCP__HEARTBEAT_TIMEOUT", "1m 30s");
        jail.set_env("DMW_STORE__TIMEOUT", "1500ms");
        jail.set_env("DMW_HTTP__HEADER_READ_TIMEOUT", "2h");
        let config = Config::load(None, &CliOverrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(config.tcp.heartbeat_timeout().as_secs(), 90);
        assert_eq!(config.store.timeout.as_millis(), 1500);
        assert_eq!(config.http.header_read_timeout.as_secs(), 7200);
        jail.set_env("DMW_STORE__TIMEOUT", "5");
        let err = Config::load(None, &CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.to_lowercase().contains("store.timeout"), "{err}");
        Ok(())
    });
}

/// Flags win over the environment, which wins over the file.
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn flags_win_over_the_environment() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("dmw.toml", "[tcp]\nlisten = \"127.0.0.1:7001\"\n")?;
        jail.set_env("DMW_TCP__LISTEN", "127.0.0.1:7002");
        let from_env = Config::load(Some(Path::new("dmw.toml")), &CliOverrides::default())
            .map_err(|e| e.to_string())?;
        assert_eq!(from_env.tcp.listen.port(), 7002);
        let cli = CliOverrides {
            listen: None,
            tcp_listen: Some("127.0.0.1:7003".parse().unwrap()),
        };
        let from_flag =
            Config::load(Some(Path::new("dmw.toml")), &cli).map_err(|e| e.to_string())?;
        assert_eq!(from_flag.tcp.listen.port(), 7003);
        Ok(())
    });
}

#[test]
fn response_limits_are_validated() {
    let err = problem("[responses]\nmax_bytes = 100000\nmax_total_bytes = 50000\n");
    assert!(err.contains("responses.max_total_bytes"), "{err}");
    // One document (256 KiB by default) must fit an answer.
    let err = problem("[responses]\nmax_bytes = 100000\n");
    assert!(err.contains("responses.max_bytes"), "{err}");
}

#[test]
fn auth_keys_are_validated_naming_the_key() {
    let digest = crate::auth::digest_hex("dmw_a_real_looking_key_for_the_config_tests");
    let key = |extra: &str| {
        format!("[auth]\nenabled = true\n[[auth.keys]]\nname = \"eu1\"\nrole = \"server\"\n{extra}")
    };
    let ok = key(&format!("sha256 = \"{digest}\"\ngames = [\"default\"]"));
    let config = load_toml(&ok).expect("a valid key");
    assert_eq!(config.auth.keys[0].role, crate::auth::Role::Server);
    let cases = [
        (
            "[auth]\nenabled = true\n".to_string(),
            "auth.keys: auth.enabled = true needs at least one key",
        ),
        (
            key("sha256 = \"dmw_a_real_looking_key\"\ngames = [\"*\"]"),
            "auth.keys[0].sha256: must be the SHA-256 of the key",
        ),
        (
            key(&format!(
                "sha256 = \"{}\"\ngames = [\"*\"]",
                crate::auth::digest_hex("changeme")
            )),
            "auth.keys[0].sha256: is the digest of a well-known example key",
        ),
        (
            key(&format!("sha256 = \"{digest}\"\ngames = [\"nosuchgame\"]")),
            "auth.keys[0].games: \"nosuchgame\" is not a configured game",
        ),
        (
            key(&format!("sha256 = \"{digest}\"\ngames = []")),
            "auth.keys[0].games: list its games",
        ),
        (
            format!(
                "{ok}\n[[auth.keys]]\nname = \"eu2\"\nrole = \"admin\"\nsha256 = \"{digest}\"\ngames = [\"*\"]"
            ),
            "auth.keys[1].sha256: the same key is configured twice",
        ),
        (
            key(&format!(
                "sha256 = \"{digest}\"\ngames = [\"*\"]\nrole2 = 1"
            )),
            "unknown field",
        ),
    ];
    for (text, expected) in cases {
        let problem = problem(&text);
        assert!(problem.contains(expected), "{text}\n→ {problem}");
    }
    let role = problem(
        &key(&format!("sha256 = \"{digest}\"\ngames = [\"*\"]")).replace("server", "player"),
    );
    assert!(
        role.contains("auth.keys[0].role: player is the role of tokens"),
        "{role}"
    );
}

#[test]
fn without_auth_only_loopback_addresses_are_served_unless_allowed() {
    let open = "[http]\nlisten = \"0.0.0.0:8080\"\n";
    assert!(
        problem(open).contains("http.listen: 0.0.0.0:8080 is reachable from other machines"),
        "{}",
        problem(open)
    );
    let tcp_open = "[tcp]\nlisten = \"[::]:7070\"\n";
    assert!(
        problem(tcp_open).contains("tcp.listen:"),
        "{}",
        problem(tcp_open)
    );
    load_toml("[tcp]\nenabled = false\nlisten = \"[::]:7070\"\n").expect("TCP off");
    load_toml(&format!("{open}[auth]\nallow_insecure = true\n")).expect("allowed explicitly");
    load_toml("[http]\nlisten = \"127.0.0.5:8080\"\n").expect("loopback");
}

#[test]
fn token_keys_are_validated_naming_the_entry() {
    let key = |body: &str| format!("[auth]\nenabled = true\n[[auth.tokens.keys]]\n{body}");
    let cases = [
        (
            "algorithm = \"none\"",
            "auth.tokens.keys[0]: algorithm \"none\"",
        ),
        (
            "algorithm = \"HS512\"\nsecret = \"x\"",
            "use HS256, RS256 or EdDSA",
        ),
        (
            "algorithm = \"HS256\"\nsecret = \"short\"",
            "at least 32 bytes",
        ),
        (
            "algorithm = \"HS256\"\nsecret = \"your-256-bit-secret-your-256-bit-secret\"",
            "well-known example",
        ),
        (
            "algorithm = \"HS256\"",
            "exactly one of secret and secret_file",
        ),
        ("algorithm = \"RS256\"", "public_key_file is required"),
        (
            "algorithm = \"EdDSA\"\npublic_key_file = \"/nonexistent/k.pem\"",
            "cannot read /nonexistent/k.pem",
        ),
        (
            "algorithm = \"RS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"",
            "RS256 takes key files",
        ),
    ];
    for (body, expected) in cases {
        let problem = problem(&key(body));
        assert!(problem.contains(expected), "{body}\n→ {problem}");
    }
    let ok = key("algorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef-ok\"");
    let config = load_toml(&ok).expect("a token key alone enables auth");
    assert_eq!(config.auth.tokens.leeway, Duration::from_secs(5));
    let long_leeway = format!("{ok}\n[auth.tokens]\nleeway = \"10m\"\n");
    assert!(
        problem(&long_leeway).contains("auth.tokens.leeway"),
        "{}",
        problem(&long_leeway)
    );
}

#[test]
fn a_profile_sets_the_defaults_that_scale_and_the_file_still_wins() {
    let plain = load_toml("").unwrap();
    let small = load_toml("profile = \"small\"\n[http]\nmax_connections = 123\n").unwrap();
    assert_eq!(small.profile, Some(profiles::Profile::Small));
    assert_eq!(small.http.max_connections, 123, "the file's key wins");
    assert_eq!(small.tcp.max_connections, 50_000);
    assert_eq!(small.cache.l1_max_bytes, 2 << 30);
    assert_eq!(small.store.max_connections, 32);
    assert_ne!(small.tcp.max_connections, plain.tcp.max_connections);
    let large = load_toml("profile = \"large\"\n").unwrap();
    assert_eq!(large.http.max_in_flight, 16 * 1_024);
    assert_eq!(large.responses.max_total_bytes, 2 << 30);
    assert!(problem("profile = \"huge\"\n").contains("huge"));
}
