-- Back to one row per event. Only blocks of one plain event can go back: a compressed block
-- cannot be read in SQL, and the audit log must not lose it, so then this fails (the CHECK).
CREATE TEMP TABLE audit_block_plain (compressed INTEGER CHECK (compressed = 0));
INSERT INTO audit_block_plain
    SELECT COUNT(*) FROM audit_block WHERE events <> 1 OR substr(body, 1, 1) <> X'7B';
DROP TABLE audit_block_plain;
CREATE TABLE audit_chain (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_hash TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    recorded BIGINT,
    content TEXT
);
INSERT INTO audit_chain (seq, event_id, event_hash, chain_hash, recorded, content)
SELECT seq, json_extract(CAST(body AS TEXT), '$.id'), hashes, chain_hash, recorded,
       CAST(body AS TEXT)
FROM audit_block;
DROP TABLE audit_block;
CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
