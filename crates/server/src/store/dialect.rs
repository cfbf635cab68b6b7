//! What differs between SQLite, PostgreSQL and MySQL/MariaDB: URLs, session pragmas,
//! placeholders, row locking, upserts and which errors are transient conflicts.

use super::StoreError;

const COLUMNS: &str = "version, owner, updated_at, value";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Dialect, StoreError> {
        let scheme = url.split("://").next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            _ => Err(StoreError::Url(
                url.to_string(),
                "scheme must be sqlite, postgres or mysql".to_string(),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// Makes a URL sqlx accepts: SQLite files are created (with their directory) when missing.
    pub fn normalize_url(self, url: &str) -> Result<String, StoreError> {
        match self {
            Dialect::Sqlite => {
                let rest = &url["sqlite://".len()..];
                let path = rest.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Err(StoreError::Url(
                        url.to_string(),
                        "missing file path".to_string(),
                    ));
                }
                if path != ":memory:"
                    && let Some(dir) = std::path::Path::new(path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Url(
                            url.to_string(),
                            format!("cannot create {}: {e}", dir.display()),
                        )
                    })?;
                }
                Ok(if rest.contains("mode=") {
                    url.to_string()
                } else if rest.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                })
            }
            Dialect::MySql => Ok(url.replacen("mariadb://", "mysql://", 1)),
            Dialect::Postgres => Ok(url.to_string()),
        }
    }

    /// Statements run on every new connection.
    pub fn session_setup(self, sqlite_full_sync: bool) -> Vec<&'static str> {
        match self {
            Dialect::Sqlite => vec![
                "PRAGMA journal_mode = WAL",
                if sqlite_full_sync {
                    "PRAGMA synchronous = FULL"
                } else {
                    "PRAGMA synchronous = NORMAL"
                },
                "PRAGMA busy_timeout = 5000",
            ],
            // Row values are byte-compared ids and UTF-8 JSON text.
            Dialect::MySql => vec!["SET NAMES utf8mb4 COLLATE utf8mb4_bin"],
            Dialect::Postgres => vec![],
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            _ => "?".to_string(),
        }
    }

    pub fn select_one(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "SELECT version, owner, updated_at, value FROM dmw_documents WHERE game = $1 AND collection = $2 AND id = $3"
            }
            _ => {
                "SELECT version, owner, updated_at, value FROM dmw_documents WHERE game = ? AND collection = ? AND id = ?"
            }
        }
    }

    pub fn select_for_update(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "SELECT version, owner, updated_at, value FROM dmw_documents WHERE game = $1 AND collection = $2 AND id = $3 FOR UPDATE"
            }
            Dialect::MySql => {
                "SELECT version, owner, updated_at, value FROM dmw_documents WHERE game = ? AND collection = ? AND id = ? FOR UPDATE"
            }
            // SQLite has no row locks: the write lock taken by the placeholder insert covers it.
            Dialect::Sqlite => self.select_one(),
        }
    }

    /// Bytes of a row's value (0 for a tombstone), as an SQL expression.
    fn value_bytes(self) -> &'static str {
        match self {
            Dialect::Postgres => "COALESCE(octet_length(value), 0)",
            Dialect::MySql => "COALESCE(LENGTH(value), 0)",
            Dialect::Sqlite => "COALESCE(LENGTH(CAST(value AS BLOB)), 0)",
        }
    }

    /// A window sum as a 64-bit integer (MySQL's SUM is a DECIMAL).
    fn sum(self, over: &str) -> String {
        let bytes = self.value_bytes();
        match self {
            Dialect::MySql => format!("CAST(SUM({bytes}) OVER ({over}) AS SIGNED)"),
            _ => format!("SUM({bytes}) OVER ({over})"),
        }
    }

    /// Rows of `count` ids (placeholders 3..), cut once their values pass a byte cap (the last
    /// placeholder): every row whose preceding values (in id order) stay within the cap, so the
    /// database sends at most the cap plus one value (it still reads them all), and leaves a
    /// row out only when the total is over the cap. Columns: id, the four document columns, and the
    /// value bytes of all the requested rows (cut or not).
    pub fn select_many(self, count: usize) -> String {
        let list: Vec<String> = (0..count).map(|i| self.placeholder(i + 3)).collect();
        format!(
            "SELECT id, {COLUMNS}, total FROM (SELECT id, {COLUMNS}, {running} AS running, {total} AS total, {len} AS len \
             FROM dmw_documents WHERE game = {} AND collection = {} AND id IN ({})) t WHERE running - len <= {}",
            self.placeholder(1),
            self.placeholder(2),
            list.join(", "),
            self.placeholder(count + 3),
            running = self.sum("ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"),
            total = self.sum(""),
            len = self.value_bytes(),
        )
    }

    /// One page of live documents in id order (the last placeholders: limit, then a byte cap
    /// applied as in [`Dialect::select_many`]). Columns: id, the four document columns, and how
    /// many rows the page had before the byte cap.
    /// Ids for warming: of one owner in id order, else the most recently updated first
    /// (`updated_at` is RFC 3339 UTC with milliseconds, so text order is time order).
    pub fn select_ids(self, by_owner: bool) -> String {
        let (p1, p2, p3) = (
            self.placeholder(1),
            self.placeholder(2),
            self.placeholder(3),
        );
        if by_owner {
            format!(
                "SELECT id FROM dmw_documents WHERE game = {p1} AND collection = {p2} AND owner = {p3} \
                 AND value IS NOT NULL ORDER BY id LIMIT {}",
                self.placeholder(4)
            )
        } else {
            format!(
                "SELECT id FROM dmw_documents WHERE game = {p1} AND collection = {p2} \
                 AND value IS NOT NULL ORDER BY updated_at DESC LIMIT {p3}"
            )
        }
    }

    /// Records that instance `id` of bus `bus` is alive at `seen_ms`.
    pub fn touch_instance(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "INSERT INTO dmw_instances (bus, id, seen_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (bus, id) DO UPDATE SET seen_ms = excluded.seen_ms"
            }
            Dialect::Sqlite => {
                "INSERT INTO dmw_instances (bus, id, seen_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (bus, id) DO UPDATE SET seen_ms = excluded.seen_ms"
            }
            Dialect::MySql => {
                "INSERT INTO dmw_instances (bus, id, seen_ms) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE seen_ms = VALUES(seen_ms)"
            }
        }
    }

    /// Records a revocation (a later one of the same token or subject replaces it).
    pub fn upsert_revocation(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "INSERT INTO dmw_revocations (game, kind, value, cutoff_s, expires_s) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (game, kind, value) DO UPDATE \
                 SET cutoff_s = excluded.cutoff_s, expires_s = excluded.expires_s"
            }
            Dialect::Sqlite => {
                "INSERT INTO dmw_revocations (game, kind, value, cutoff_s, expires_s) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (game, kind, value) DO UPDATE \
                 SET cutoff_s = excluded.cutoff_s, expires_s = excluded.expires_s"
            }
            Dialect::MySql => {
                "INSERT INTO dmw_revocations (game, kind, value, cutoff_s, expires_s) \
                 VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                 cutoff_s = VALUES(cutoff_s), expires_s = VALUES(expires_s)"
            }
        }
    }

    /// The revocations still in force at a time.
    pub fn revocations_in_force(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "SELECT game, kind, value, cutoff_s FROM dmw_revocations WHERE expires_s > $1"
            }
            _ => "SELECT game, kind, value, cutoff_s FROM dmw_revocations WHERE expires_s > ?",
        }
    }

    /// Instances of a bus seen since a time; and the one that leaves, and old rows.
    pub fn instances_since(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT id FROM dmw_instances WHERE bus = $1 AND seen_ms >= $2",
            _ => "SELECT id FROM dmw_instances WHERE bus = ? AND seen_ms >= ?",
        }
    }

    pub fn delete_instance(self) -> &'static str {
        match self {
            Dialect::Postgres => "DELETE FROM dmw_instances WHERE bus = $1 AND id = $2",
            _ => "DELETE FROM dmw_instances WHERE bus = ? AND id = ?",
        }
    }

    pub fn select_list(self, by_owner: bool, after: bool) -> String {
        let mut n = 2;
        let mut next = || {
            n += 1;
            self.placeholder(n)
        };
        let mut page = format!(
            "SELECT id, {COLUMNS} FROM dmw_documents WHERE game = {} AND collection = {} AND value IS NOT NULL",
            self.placeholder(1),
            self.placeholder(2)
        );
        if by_owner {
            page.push_str(&format!(" AND owner = {}", next()));
        }
        if after {
            page.push_str(&format!(" AND id > {}", next()));
        }
        page.push_str(&format!(" ORDER BY id LIMIT {}", next()));
        let rows = match self {
            Dialect::MySql => "CAST(COUNT(*) OVER () AS SIGNED)",
            _ => "COUNT(*) OVER ()",
        };
        format!(
            "SELECT id, {COLUMNS}, page_rows FROM (SELECT id, {COLUMNS}, {running} AS running, {len} AS len, {rows} AS page_rows \
             FROM ({page}) page) t WHERE running - len <= {} ORDER BY id",
            next(),
            running = self.sum("ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"),
            len = self.value_bytes(),
        )
    }

    /// Makes sure a row exists to lock (version 0, no value), without touching an existing one.
    pub fn insert_placeholder(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "INSERT INTO dmw_documents (game, collection, id, owner, version, updated_at, value) VALUES ($1, $2, $3, NULL, 0, '', NULL) ON CONFLICT DO NOTHING"
            }
            Dialect::Sqlite => {
                "INSERT INTO dmw_documents (game, collection, id, owner, version, updated_at, value) VALUES (?, ?, ?, NULL, 0, '', NULL) ON CONFLICT DO NOTHING"
            }
            Dialect::MySql => {
                "INSERT INTO dmw_documents (game, collection, id, owner, version, updated_at, value) VALUES (?, ?, ?, NULL, 0, '', NULL) ON DUPLICATE KEY UPDATE version = version"
            }
        }
    }

    pub fn delete_placeholder(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "DELETE FROM dmw_documents WHERE game = $1 AND collection = $2 AND id = $3 AND version = 0"
            }
            _ => {
                "DELETE FROM dmw_documents WHERE game = ? AND collection = ? AND id = ? AND version = 0"
            }
        }
    }

    pub fn update_row(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "UPDATE dmw_documents SET owner = $1, version = $2, updated_at = $3, value = $4 WHERE game = $5 AND collection = $6 AND id = $7"
            }
            _ => {
                "UPDATE dmw_documents SET owner = ?, version = ?, updated_at = ?, value = ? WHERE game = ? AND collection = ? AND id = ?"
            }
        }
    }

    /// Deadlocks, serialization failures and SQLite busy/locked: safe to retry the transaction.
    pub fn is_transient(self, error: &sqlx::Error) -> bool {
        let sqlx::Error::Database(db) = error else {
            return false;
        };
        let code = db.code();
        let code = code.as_deref().unwrap_or_default();
        match self {
            Dialect::Postgres => matches!(code, "40001" | "40P01"),
            // SQLSTATE 40001 covers InnoDB deadlock (1213); HY000 lock wait timeout is 1205.
            Dialect::MySql => matches!(code, "40001" | "1213" | "1205"),
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            Dialect::Sqlite => code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let list = Dialect::Postgres.select_list(true, true);
        assert!(
            list.contains("AND owner = $3 AND id > $4 ORDER BY id LIMIT $5) page"),
            "{list}"
        );
        assert!(
            list.ends_with("WHERE running - len <= $6 ORDER BY id"),
            "{list}"
        );
        assert!(
            Dialect::MySql
                .select_many(3)
                .contains("id IN (?, ?, ?)) t WHERE running - len <= ?")
        );
        let many = Dialect::Postgres.select_many(2);
        assert!(
            many.contains("id IN ($3, $4)) t WHERE running - len <= $5"),
            "{many}"
        );
        assert!(
            Dialect::Sqlite
                .select_list(false, false)
                .contains("ORDER BY id LIMIT ?) page")
        );
    }

    #[test]
    fn sqlite_url_gets_create_mode() {
        let dir = std::env::temp_dir().join(format!("dmw-dialect-{}", std::process::id()));
        let url = format!("sqlite://{}/x.db", dir.display());
        let normalized = Dialect::Sqlite.normalize_url(&url).unwrap();
        assert!(normalized.ends_with("x.db?mode=rwc"));
        assert!(dir.is_dir());
        let _ = std::fs::remove_dir_all(dir);
        assert!(Dialect::from_url("redis://x").is_err());
    }
}
