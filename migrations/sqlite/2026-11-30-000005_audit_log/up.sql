-- The chain becomes the audit log itself: each link holds its AuditEvent as stored and when it was
-- recorded, so a request's record is one row. The AuditEvent resource rows (resources,
-- resource_history and the search indexes) that serve reads and searches are written from it later,
-- in chain order (src/audit/mod.rs, `materialize`); links from before this migration have them
-- already and keep a NULL content.
--
-- Rebuilt rather than altered so that `seq` becomes the rowid (INTEGER PRIMARY KEY): one b-tree
-- less to write per record.
DROP TRIGGER audit_chain_no_update;
DROP TRIGGER audit_chain_no_delete;
ALTER TABLE audit_chain RENAME TO audit_chain_old;
CREATE TABLE audit_chain (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,   -- the AuditEvent's id
    event_hash TEXT NOT NULL,        -- SHA-256 of the AuditEvent as stored
    chain_hash TEXT NOT NULL,        -- SHA-256 over the previous link and this one
    recorded BIGINT,                 -- when it was recorded (µs); NULL before this migration
    content TEXT                     -- the AuditEvent as stored; NULL before this migration
);
INSERT INTO audit_chain (seq, event_id, event_hash, chain_hash)
    SELECT seq, event_id, event_hash, chain_hash FROM audit_chain_old;
DROP TABLE audit_chain_old;
CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- How far the AuditEvent resource rows have been written: every link up to `seq` has them.
CREATE TABLE audit_materialized (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO audit_materialized (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_chain;
