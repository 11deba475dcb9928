-- The audit log's hash chain: one link per AuditEvent, in order (see src/audit/chain.rs).
CREATE TABLE audit_chain (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,   -- the AuditEvent's id (its row is in resource_history)
    event_hash TEXT NOT NULL,        -- SHA-256 of the AuditEvent as stored
    chain_hash TEXT NOT NULL         -- SHA-256 over the previous link and this one
);

-- Append-only: no update or delete of the chain or of an AuditEvent, whoever asks.
CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_history_no_update BEFORE UPDATE ON resource_history
WHEN OLD.res_type = 'AuditEvent' OR NEW.res_type = 'AuditEvent'
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_history_no_delete BEFORE DELETE ON resource_history
WHEN OLD.res_type = 'AuditEvent'
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_resources_no_update BEFORE UPDATE ON resources
WHEN OLD.res_type = 'AuditEvent' OR NEW.res_type = 'AuditEvent'
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_resources_no_delete BEFORE DELETE ON resources
WHEN OLD.res_type = 'AuditEvent'
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
