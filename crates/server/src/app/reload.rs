//! What a reload may change: the part of a new configuration that is applied while running
//! (everything else takes a restart), and the keys in which two configurations differ.

use serde_json::Value;

use crate::config::Config;

/// What [`super::Running::reload_report`] did.
#[derive(Debug, Default, Clone)]
pub struct Reloaded {
    /// The keys applied (dotted, such as `rate_limits.player` or
    /// `games.rpg.collections.players.l1_ttl`); API keys are not listed by name.
    pub applied: Vec<String>,
    /// The keys that differ but take a restart (kept as they run); a game or collection added
    /// or removed is listed once, as `games.<name>` or `games.<name>.collections.<name>`.
    pub needs_restart: Vec<String>,
    /// True when the API keys changed.
    pub api_keys_changed: bool,
    /// Why nothing was applied: the new values do not hold together with the ones kept.
    pub refused: Option<String>,
}

/// How one key differs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    /// Only in the new configuration (a game or a collection).
    Added,
    /// Only in the old one.
    Removed,
    /// In both, with these values (as JSON text).
    Changed(String, String),
}

/// The configuration a reload brings into force: `running`, with what can change while
/// running taken from `new`. What is not copied here takes a restart (and so does any key a
/// later version adds, until it is copied here and applied in `Running::reload_report`).
pub(super) fn live_part(running: &Config, new: &Config) -> Config {
    let mut live = running.clone();
    live.tls = new.tls.clone();
    live.auth.keys = new.auth.keys.clone();
    live.auth.tokens = new.auth.tokens.clone();
    live.rate_limits = new.rate_limits.clone();
    live.responses = new.responses.clone();
    live.http.max_body_bytes = new.http.max_body_bytes;
    live.http.max_in_flight = new.http.max_in_flight;
    live.tcp.max_in_flight = new.tcp.max_in_flight;
    live.tcp.max_frame_bytes = new.tcp.max_frame_bytes;
    live.log.filter = new.log.filter.clone();
    live.log.access_sample = new.log.access_sample;
    // Lifetimes and bounds of the collections that keep running on the same store; games and
    // collections added, removed or moved take a restart.
    for (name, game) in &mut live.games {
        let Some(new_game) = new.games.get(name) else {
            continue;
        };
        if new_game.store != game.store {
            continue;
        }
        for (collection, config) in &mut game.collections {
            if let Some(new_config) = new_game.collections.get(collection) {
                config.l1_ttl = new_config.l1_ttl;
                config.l2_ttl = new_config.l2_ttl;
                config.negative_ttl = new_config.negative_ttl;
                config.l2_negative_ttl = new_config.l2_negative_ttl;
                config.max_document_bytes = new_config.max_document_bytes;
            }
        }
    }
    live
}

/// Keys whose values are not written to the log (token keys and their settings).
pub(super) fn quiet(key: &str) -> bool {
    key.starts_with("auth.")
}

/// The keys in which `new` differs from `old`, in the order of the configuration's sections:
/// leaves by their dotted path; a game or collection present on one side only, once, as a
/// whole; lists as one value.
pub(super) fn differences(old: &Config, new: &Config) -> Vec<(String, Change)> {
    fn walk(path: &str, old: &Value, new: &Value, whole: bool, out: &mut Vec<(String, Change)>) {
        match (old, new) {
            (Value::Object(old), Value::Object(new)) => {
                let join = |key: &str| {
                    if path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    }
                };
                // A game, or a collection of a game, is one thing: added or removed whole.
                let named = path == "games" || path.ends_with(".collections");
                for (key, old_value) in old {
                    match new.get(key) {
                        Some(new_value) => walk(&join(key), old_value, new_value, named, out),
                        None if named || whole => out.push((join(key), Change::Removed)),
                        None => out.push((
                            join(key),
                            Change::Changed(old_value.to_string(), "none".into()),
                        )),
                    }
                }
                for (key, new_value) in new {
                    if !old.contains_key(key) {
                        let change = if named || whole {
                            Change::Added
                        } else {
                            Change::Changed("none".into(), new_value.to_string())
                        };
                        out.push((join(key), change));
                    }
                }
            }
            (old, new) if old != new => out.push((
                path.to_string(),
                Change::Changed(old.to_string(), new.to_string()),
            )),
            _ => {}
        }
    }
    let as_json = |config: &Config| serde_json::to_value(config).unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk("", &as_json(old), &as_json(new), false, &mut out);
    out
}

/// True when a token key's secret changed: secrets are left out of the configuration's
/// serialised form, so [`differences`] cannot see them.
pub(super) fn token_secrets_differ(old: &Config, new: &Config) -> bool {
    let secrets = |config: &Config| -> Vec<Option<String>> {
        config
            .auth
            .tokens
            .keys
            .iter()
            .map(|key| key.secret.clone())
            .collect()
    };
    secrets(old) != secrets(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_leaves_and_whole_games() {
        let old = Config::default().with_default_game();
        let mut new = old.clone();
        new.rate_limits.player = 7;
        new.http.max_connections = 3;
        let default = new.games.get_mut("default").unwrap();
        default.collections.remove("orders");
        let mut another = default.clone();
        another.collections.clear();
        new.games.insert("another".into(), another);
        let found = differences(&old, &new);
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.max_connections",
                "rate_limits.player",
                "games.default.collections.orders",
                "games.another",
            ]
        );
        let was = old.rate_limits.player.to_string();
        assert_eq!(found[1].1, Change::Changed(was, "7".into()));
        assert_eq!(found[2].1, Change::Removed);
        assert_eq!(found[3].1, Change::Added);
        assert!(differences(&old, &old).is_empty());
    }

    #[test]
    fn the_live_part_takes_only_what_may_change_while_running() {
        let running = Config::default().with_default_game();
        let mut new = running.clone();
        new.rate_limits.admin = 5;
        new.http.listen = "127.0.0.1:1".parse().unwrap();
        new.games
            .get_mut("default")
            .unwrap()
            .collections
            .get_mut("players")
            .unwrap()
            .l1_ttl = std::time::Duration::from_secs(1);
        let live = live_part(&running, &new);
        assert_eq!(live.rate_limits.admin, 5);
        assert_eq!(live.http.listen, running.http.listen);
        assert_eq!(
            live.games["default"].collections["players"].l1_ttl,
            std::time::Duration::from_secs(1)
        );
    }
}
