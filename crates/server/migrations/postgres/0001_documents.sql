-- Documents of every game and collection held by this store. value NULL is a tombstone
-- (version > 0) or a transient lock placeholder (version 0): versions are never reused.
-- COLLATE "C" keeps list order byte-wise, the same on every backend. value is TEXT, not
-- JSONB, so reads return the stored bytes without re-serialising.
CREATE TABLE IF NOT EXISTS dmw_documents (
    game       TEXT COLLATE "C" NOT NULL,
    collection TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    owner      TEXT COLLATE "C",
    version    BIGINT NOT NULL,
    updated_at TEXT   NOT NULL,
    value      TEXT,
    PRIMARY KEY (game, collection, id)
);
CREATE INDEX IF NOT EXISTS dmw_documents_owner ON dmw_documents (game, collection, owner, id);
