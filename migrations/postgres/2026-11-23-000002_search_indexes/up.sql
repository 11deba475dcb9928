-- Search indexes: one typed table per kind of search parameter, holding the values extracted from
-- each resource's current version (rewritten, in the same transaction, by every write).
-- Text columns are never NULL ('' for absent) so one equality serves both backends. Each table has
-- a covering (rid, param, …) index for per-resource probes and sort keys, and lookup indexes by value.
CREATE TABLE idx_string (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    norm TEXT NOT NULL DEFAULT '',
    exact TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_string_rid ON idx_string (rid, param, norm);
CREATE INDEX idx_string_lookup0 ON idx_string (param, norm text_pattern_ops, rid);
CREATE TABLE idx_token (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    system TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL DEFAULT '',
    text_norm TEXT NOT NULL DEFAULT '',
    type_system TEXT NOT NULL DEFAULT '',
    type_code TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_token_rid ON idx_token (rid, param, code, system);
CREATE INDEX idx_token_lookup0 ON idx_token (param, code, system, rid);
CREATE TABLE idx_reference (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    target_type TEXT NOT NULL DEFAULT '',
    target_id TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    ident_system TEXT NOT NULL DEFAULT '',
    ident_value TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_reference_rid ON idx_reference (rid, param, target_type, target_id);
CREATE INDEX idx_reference_lookup0 ON idx_reference (param, target_id, target_type, rid);
CREATE INDEX idx_reference_lookup1 ON idx_reference (target_type, target_id, param, rid);
CREATE TABLE idx_date (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    lo BIGINT,
    hi BIGINT
);
CREATE INDEX idx_date_rid ON idx_date (rid, param, lo, hi);
CREATE INDEX idx_date_lookup0 ON idx_date (param, lo, hi, rid);
CREATE TABLE idx_number (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    lo DOUBLE PRECISION,
    hi DOUBLE PRECISION
);
CREATE INDEX idx_number_rid ON idx_number (rid, param, lo, hi);
CREATE INDEX idx_number_lookup0 ON idx_number (param, lo, rid);
CREATE TABLE idx_quantity (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    lo DOUBLE PRECISION,
    hi DOUBLE PRECISION,
    system TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL DEFAULT '',
    canon_lo DOUBLE PRECISION,
    canon_hi DOUBLE PRECISION,
    canon_code TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_quantity_rid ON idx_quantity (rid, param, canon_code, canon_lo, canon_hi, lo, hi, system, code);
CREATE INDEX idx_quantity_lookup0 ON idx_quantity (param, canon_code, canon_lo, rid);
CREATE INDEX idx_quantity_lookup1 ON idx_quantity (param, lo, rid);
CREATE TABLE idx_uri (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    value TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_uri_rid ON idx_uri (rid, param, value);
CREATE INDEX idx_uri_lookup0 ON idx_uri (param, value, rid);
CREATE TABLE idx_composite (
    rid BIGINT NOT NULL REFERENCES resources (rid),
    param TEXT NOT NULL,
    system1 TEXT NOT NULL DEFAULT '',
    code1 TEXT NOT NULL DEFAULT '',
    system2 TEXT NOT NULL DEFAULT '',
    code2 TEXT NOT NULL DEFAULT '',
    text2 TEXT NOT NULL DEFAULT '',
    lo2 DOUBLE PRECISION,
    hi2 DOUBLE PRECISION,
    dlo2 BIGINT,
    dhi2 BIGINT
);
CREATE INDEX idx_composite_rid ON idx_composite (rid, param, code1, system1);
CREATE INDEX idx_composite_lookup0 ON idx_composite (param, code1, system1, rid);
