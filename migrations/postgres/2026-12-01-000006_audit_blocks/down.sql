-- Back to one row per event. Only blocks of one plain event can go back: a compressed block
-- cannot be read in SQL, and the audit log must not lose it, so then this refuses.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_block WHERE events <> 1 OR substring(body FROM 1 FOR 1) <> '\x7b'::bytea) THEN
        RAISE EXCEPTION 'the audit log holds compressed blocks: export it (cairn audit export) first';
    END IF;
END
$$;
CREATE TABLE audit_chain (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_hash TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    recorded BIGINT,
    content TEXT
);
INSERT INTO audit_chain (seq, event_id, event_hash, chain_hash, recorded, content)
SELECT seq, convert_from(body, 'UTF8')::jsonb ->> 'id', hashes, chain_hash, recorded,
       convert_from(body, 'UTF8')
FROM audit_block;
DROP TABLE audit_block;
DROP FUNCTION cairn_audit_append(TEXT[], TEXT[], BIGINT, BYTEA);
CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_audit_append_only();
