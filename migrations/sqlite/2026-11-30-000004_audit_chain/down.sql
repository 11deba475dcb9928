DROP TRIGGER audit_resources_no_delete;
DROP TRIGGER audit_resources_no_update;
DROP TRIGGER audit_history_no_delete;
DROP TRIGGER audit_history_no_update;
DROP TRIGGER audit_chain_no_delete;
DROP TRIGGER audit_chain_no_update;
DROP TABLE audit_chain;
