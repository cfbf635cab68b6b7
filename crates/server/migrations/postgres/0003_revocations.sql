-- Revoked tokens of a game: one token by its id (`kind` 'jti', `value` the jti), or every
-- token of one subject issued at or before `cutoff_s` (`kind` 'sub', `value` the subject).
-- Every instance reads the rows still in force (`expires_s`, seconds since the Unix epoch).
CREATE TABLE IF NOT EXISTS dmw_revocations (
    game      TEXT COLLATE "C" NOT NULL,
    kind      TEXT COLLATE "C" NOT NULL,
    value     TEXT COLLATE "C" NOT NULL,
    cutoff_s  BIGINT NOT NULL,
    expires_s BIGINT NOT NULL,
    PRIMARY KEY (game, kind, value)
);
