DROP FUNCTION cairn_audit_append_linked(TEXT[], TEXT[], BIGINT, BYTEA, BIGINT, TEXT, TEXT);
