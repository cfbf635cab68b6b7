-- Instances of a deployment that share an invalidation bus (`bus` = cache.l2_prefix), with the
-- last time each said it was alive (ms since the Unix epoch, by its own clock). The bus uses it
-- as a witness: an instance silent on the bus but alive here is waited for, not forgotten.
CREATE TABLE IF NOT EXISTS dmw_instances (
    bus     TEXT COLLATE "C" NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    seen_ms BIGINT NOT NULL,
    PRIMARY KEY (bus, id)
);
