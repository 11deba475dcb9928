DROP TABLE audit_materialized;
ALTER TABLE audit_chain DROP COLUMN content;
ALTER TABLE audit_chain DROP COLUMN recorded;
