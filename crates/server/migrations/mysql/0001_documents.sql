-- Documents of every game and collection held by this store. value NULL is a tombstone
-- (version > 0) or a transient lock placeholder (version 0): versions are never reused.
-- Names and ids are ASCII with a binary collation, so list order is byte-wise as elsewhere.
CREATE TABLE IF NOT EXISTS dmw_documents (
    game       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    collection VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    id         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    owner      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    version    BIGINT       NOT NULL,
    updated_at VARCHAR(40)  CHARACTER SET ascii NOT NULL,
    value      LONGTEXT     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    PRIMARY KEY (game, collection, id),
    KEY dmw_documents_owner (game, collection, owner, id)
) ENGINE = InnoDB;
