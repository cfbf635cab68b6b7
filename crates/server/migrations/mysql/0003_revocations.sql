-- Revoked tokens of a game: one token by its id (`kind` 'jti', `value` the jti), or every
-- token of one subject issued at or before `cutoff_s` (`kind` 'sub', `value` the subject).
-- Every instance reads the rows still in force (`expires_s`, seconds since the Unix epoch).
CREATE TABLE IF NOT EXISTS dmw_revocations (
    game      VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind      VARCHAR(8)   CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    value     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    cutoff_s  BIGINT NOT NULL,
    expires_s BIGINT NOT NULL,
    PRIMARY KEY (game, kind, value)
);
