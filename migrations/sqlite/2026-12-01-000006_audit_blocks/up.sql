-- The audit log in blocks: the records committed together (a group commit of reads, or one write's
-- records) are one row, so logging costs a row per batch rather than per request. The hash chain
-- still runs through every event (src/audit/chain.rs): a block keeps each event's hash and the chain
-- hash after its last event. `body` holds the events as stored, one per line, LZ4-compressed
-- (src/audit/block.rs); the links carried over below keep their event as plain JSON.
CREATE TABLE audit_block (
    seq INTEGER PRIMARY KEY,     -- the chain position of the block's last event
    events INTEGER NOT NULL,     -- how many events it holds (the first is at seq - events + 1)
    hashes TEXT NOT NULL,        -- their SHA-256 (hex), concatenated in order
    chain_hash TEXT NOT NULL,    -- the chain hash after its last event
    recorded BIGINT NOT NULL,    -- the latest time one of them was recorded (µs)
    body BLOB NOT NULL
);

-- Each link becomes a block of one event; a link without its event (from before the log held
-- events) takes it from its resource row. One whose row is gone keeps an empty body, so
-- `audit verify` still reports it.
INSERT INTO audit_block (seq, events, hashes, chain_hash, recorded, body)
SELECT c.seq, 1, c.event_hash, c.chain_hash, COALESCE(c.recorded, h.last_updated, 0),
       CAST(COALESCE(c.content, h.content, '') AS BLOB)
FROM audit_chain c
LEFT JOIN resource_history h ON c.content IS NULL AND h.res_type = 'AuditEvent'
    AND h.res_id = c.event_id AND h.version = 1;
DROP TABLE audit_chain;

CREATE TRIGGER audit_block_no_update BEFORE UPDATE ON audit_block
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_block_no_delete BEFORE DELETE ON audit_block
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
