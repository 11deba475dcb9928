-- Appends a block linked by the caller (src/audit/chain.rs: `Sealed::link`) from the head it last
-- saw, in one statement: takes the chain's lock, reads the head after it, and if the head is still
-- `after` / `after_hash`, inserts the block with the caller's chain hash `linked`. Otherwise (a
-- write or another instance appended meanwhile, or the caller knows no head) it links the events
-- itself, exactly as cairn_audit_append does. Either way it returns the new head. The audit
-- committer keeps the head it gets back, so the links of a group commit are worked out in Rust,
-- not in PL/pgSQL, and the statement is prepared once per connection. `audit verify` checks every
-- link whoever computed it. cairn_audit_append stays for instances of the previous release during
-- a rolling upgrade.
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
    ELSE
        FOR i IN 1 .. cardinality(ids) LOOP
            head_seq := head_seq + 1;
            head_hash := encode(sha256(convert_to(head_hash || '|' || head_seq || '|' || ids[i] || '|'
                || hashes[i], 'UTF8')), 'hex');
        END LOOP;
        new_seq := head_seq;
        new_hash := head_hash;
    END IF;
    INSERT INTO audit_block (seq, events, hashes, chain_hash, recorded, body)
        VALUES (new_seq, cardinality(ids), array_to_string(hashes, ''), new_hash, recorded, body);
END
$$ LANGUAGE plpgsql;
