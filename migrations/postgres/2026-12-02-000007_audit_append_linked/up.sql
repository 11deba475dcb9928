-- Appends a block linked by the caller (src/audit/chain.rs: `Sealed::link`) from the head it last
-- saw, in one statement: takes the chain's lock, reads the head after it, and if the head is still
-- `after` / `after_hash`, inserts the block with the caller's chain hash `linked`. Otherwise (a
-- write or another instance appended meanwhile, or the caller knows no head) cairn_audit_append
-- links the events and inserts them, as it did alone before. Either way it returns the new head.
-- The audit committer keeps the head it gets back, so the links of a group commit are worked out
-- in Rust rather than in PL/pgSQL, and the statement is prepared once per connection.
-- `audit verify` checks every link, whoever computed it.
CREATE FUNCTION cairn_audit_append_linked(ids TEXT[], hashes TEXT[], recorded BIGINT, body BYTEA,
    after BIGINT, after_hash TEXT, linked TEXT, OUT new_seq BIGINT, OUT new_hash TEXT) AS $$
DECLARE
    head_seq BIGINT;
    head_hash TEXT;
BEGIN
    IF coalesce(cardinality(ids), 0) = 0 OR cardinality(hashes) IS DISTINCT FROM cardinality(ids) THEN
        RAISE EXCEPTION 'cairn_audit_append_linked: one hash per event';
    END IF;
    PERFORM pg_advisory_xact_lock(3390704919);
    SELECT b.seq, b.chain_hash INTO head_seq, head_hash FROM audit_block b ORDER BY b.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := repeat('0', 64);
    END IF;
    IF linked IS NOT NULL AND after = head_seq AND after_hash = head_hash THEN
        new_seq := head_seq + cardinality(ids);
        new_hash := linked;
        INSERT INTO audit_block (seq, events, hashes, chain_hash, recorded, body)
            VALUES (new_seq, cardinality(ids), array_to_string(hashes, ''), new_hash, recorded, body);
    ELSE
        -- Takes the same lock again (held twice until the transaction ends).
        new_seq := cairn_audit_append(ids, hashes, recorded, body);
        SELECT b.chain_hash INTO new_hash FROM audit_block b WHERE b.seq = new_seq;
    END IF;
END
$$ LANGUAGE plpgsql;
