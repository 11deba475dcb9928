DROP TRIGGER audit_resources_append_only ON resources;
DROP TRIGGER audit_history_append_only ON resource_history;
DROP TRIGGER audit_chain_no_truncate ON audit_chain;
DROP TRIGGER audit_chain_append_only ON audit_chain;
DROP FUNCTION cairn_audit_append_only();
DROP TABLE audit_chain;
