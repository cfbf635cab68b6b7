-- Documents of every game and collection held by this store. value NULL is a tombstone
-- (version > 0) or a transient lock placeholder (version 0): versions are never reused.
CREATE TABLE IF NOT EXISTS dmw_documents (
    game       TEXT    NOT NULL,
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    owner      TEXT,
    version    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    value      TEXT,
    PRIMARY KEY (game, collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dmw_documents_owner ON dmw_documents (game, collection, owner, id);
