-- Every version of every resource, tombstones included. `seq` orders all writes for system history.
CREATE TABLE resource_history (
    seq BIGSERIAL PRIMARY KEY,
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL, -- microseconds since the Unix epoch, UTC
    method TEXT NOT NULL,         -- POST, PUT or DELETE
    deleted SMALLINT NOT NULL,   -- 1 for a tombstone (MultiConnection has no Bool)
    content TEXT NOT NULL         -- the resource as FHIR JSON; empty for a tombstone
);
CREATE UNIQUE INDEX resource_history_version ON resource_history (res_type, res_id, version);
CREATE INDEX resource_history_time ON resource_history (last_updated, seq);
CREATE INDEX resource_history_type_time ON resource_history (res_type, last_updated, seq);

-- The current version of each resource: the row writers compare-and-swap on. `rid` is the
-- resource's stable row id, which the search index tables refer to.
CREATE TABLE resources (
    rid BIGSERIAL PRIMARY KEY,
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted SMALLINT NOT NULL,   -- 1 for a tombstone (MultiConnection has no Bool)
    UNIQUE (res_type, res_id)
);
