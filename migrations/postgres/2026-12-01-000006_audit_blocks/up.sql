-- The audit log in blocks: the records committed together (a group commit of reads, or one write's
-- records) are one row, so logging costs a row per batch rather than per request. The hash chain
-- still runs through every event (src/audit/chain.rs): a block keeps each event's hash and the chain
-- hash after its last event. `body` holds the events as stored, one per line, LZ4-compressed
-- (src/audit/block.rs); the links carried over below keep their event as plain JSON.
CREATE TABLE audit_block (
    seq BIGINT PRIMARY KEY,      -- the chain position of the block's last event
    events INTEGER NOT NULL,     -- how many events it holds (the first is at seq - events + 1)
    hashes TEXT NOT NULL,        -- their SHA-256 (hex), concatenated in order
    chain_hash TEXT NOT NULL,    -- the chain hash after its last event
    recorded BIGINT NOT NULL,    -- the latest time one of them was recorded (µs)
    body BYTEA NOT NULL
);
-- Compressed already: not compressed again by TOAST, and kept in the row up to a page.
ALTER TABLE audit_block ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE audit_block SET (toast_tuple_target = 8160);

-- Each link becomes a block of one event; a link without its event (from before the log held
-- events) takes it from its resource row. One whose row is gone keeps an empty body, so
-- `audit verify` still reports it.
INSERT INTO audit_block (seq, events, hashes, chain_hash, recorded, body)
SELECT c.seq, 1, c.event_hash, c.chain_hash, COALESCE(c.recorded, h.last_updated, 0),
       convert_to(COALESCE(c.content, h.content, ''), 'UTF8')
FROM audit_chain c
LEFT JOIN resource_history h ON c.content IS NULL AND h.res_type = 'AuditEvent'
    AND h.res_id = c.event_id AND h.version = 1;
DROP TABLE audit_chain;

CREATE TRIGGER audit_block_append_only BEFORE UPDATE OR DELETE ON audit_block
    FOR EACH ROW EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_block_no_truncate BEFORE TRUNCATE ON audit_block
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_audit_append_only();

-- Appends a block in one statement, so a group commit is one round trip: takes the chain's lock
-- (an advisory lock held to the end of the transaction, so appends from any instance wait for each
-- other), reads the head after it (each statement of a volatile function sees what committed before
-- it began), links the events and inserts the block. The link
-- is the one src/audit/chain.rs computes on SQLite, and `audit verify` checks both:
-- chain_hash(n) = SHA-256(chain_hash(n-1) | n | event id | event hash), in hex.
CREATE FUNCTION cairn_audit_append(ids TEXT[], hashes TEXT[], recorded BIGINT, body BYTEA)
RETURNS BIGINT AS $$
DECLARE
    head_seq BIGINT;
    head_hash TEXT;
BEGIN
    IF coalesce(cardinality(ids), 0) = 0 OR cardinality(hashes) IS DISTINCT FROM cardinality(ids) THEN
        RAISE EXCEPTION 'cairn_audit_append: one hash per event';
    END IF;
    PERFORM pg_advisory_xact_lock(3390704919);
    SELECT b.seq, b.chain_hash INTO head_seq, head_hash FROM audit_block b ORDER BY b.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := repeat('0', 64);
    END IF;
    FOR i IN 1 .. cardinality(ids) LOOP
        head_seq := head_seq + 1;
        head_hash := encode(sha256(convert_to(head_hash || '|' || head_seq || '|' || ids[i] || '|'
            || hashes[i], 'UTF8')), 'hex');
    END LOOP;
    INSERT INTO audit_block (seq, events, hashes, chain_hash, recorded, body)
        VALUES (head_seq, cardinality(ids), array_to_string(hashes, ''), head_hash, recorded, body);
    RETURN head_seq;
END
$$ LANGUAGE plpgsql;
