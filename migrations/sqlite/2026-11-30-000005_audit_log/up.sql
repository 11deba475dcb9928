-- The chain becomes the audit log itself: each link holds its AuditEvent as stored and when it was
-- recorded, so a request's record is one row. The AuditEvent resource rows (resources,
-- resource_history and the search indexes) that serve reads and searches are written from it later,
-- in chain order (src/audit/mod.rs, `materialize`); links from before this migration have them
-- already and keep a NULL content.
ALTER TABLE audit_chain ADD COLUMN recorded BIGINT;
ALTER TABLE audit_chain ADD COLUMN content TEXT;

-- How far the AuditEvent resource rows have been written: every link up to `seq` has them.
CREATE TABLE audit_materialized (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO audit_materialized (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_chain;
