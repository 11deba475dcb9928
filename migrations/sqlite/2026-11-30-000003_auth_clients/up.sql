-- Backend Services clients of the built-in authorization server (`cairn client add`): the public
-- keys their client assertions are checked with, and the scopes they may be granted at most.
CREATE TABLE auth_clients (
    client_id TEXT PRIMARY KEY,
    jwks TEXT NOT NULL,      -- a JWKS document (public keys only)
    scope TEXT NOT NULL,     -- space-separated SMART scopes
    created BIGINT NOT NULL  -- microseconds since the Unix epoch, UTC
);

-- Client assertion ids already used, until they expire: a replayed assertion is refused.
CREATE TABLE auth_assertions (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires BIGINT NOT NULL, -- seconds since the Unix epoch
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_assertions_expires ON auth_assertions (expires);
