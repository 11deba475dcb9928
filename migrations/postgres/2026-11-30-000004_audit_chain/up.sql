-- The audit log's hash chain: one link per AuditEvent, in order (see src/audit/chain.rs).
CREATE TABLE audit_chain (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,   -- the AuditEvent's id (its row is in resource_history)
    event_hash TEXT NOT NULL,        -- SHA-256 of the AuditEvent as stored
    chain_hash TEXT NOT NULL         -- SHA-256 over the previous link and this one
);

-- Append-only: no update, delete or truncate of the chain or of an AuditEvent, whoever asks.
CREATE FUNCTION cairn_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_history_no_update BEFORE UPDATE ON resource_history
    FOR EACH ROW WHEN (OLD.res_type = 'AuditEvent' OR NEW.res_type = 'AuditEvent')
    EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_history_no_delete BEFORE DELETE ON resource_history
    FOR EACH ROW WHEN (OLD.res_type = 'AuditEvent') EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_resources_no_update BEFORE UPDATE ON resources
    FOR EACH ROW WHEN (OLD.res_type = 'AuditEvent' OR NEW.res_type = 'AuditEvent')
    EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_resources_no_delete BEFORE DELETE ON resources
    FOR EACH ROW WHEN (OLD.res_type = 'AuditEvent') EXECUTE FUNCTION cairn_audit_append_only();
-- A TRUNCATE would take AuditEvents with everything else.
CREATE TRIGGER audit_history_no_truncate BEFORE TRUNCATE ON resource_history
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_audit_append_only();
CREATE TRIGGER audit_resources_no_truncate BEFORE TRUNCATE ON resources
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_audit_append_only();
