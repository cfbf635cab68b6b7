-- Revoked tokens of a game: one token by its id (`kind` 'jti', `value` the jti), or every
-- token of one subject issued at or before `cutoff_s` (`kind` 'sub', `value` the subject).
-- Every instance reads the rows still in force (`expires_s`, seconds since the Unix epoch).
CREATE TABLE IF NOT EXISTS dmw_revocations (
    game      TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    cutoff_s  INTEGER NOT NULL,
    expires_s INTEGER NOT NULL,
    PRIMARY KEY (game, kind, value)
);
