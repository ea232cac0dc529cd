-- Stored Responses API responses (POST /v1/responses with store: true), read back by their owner only: the API key
-- that created them, 'admin', or 'anonymous' when authentication is off. JSON as the API shapes it; rows past
-- expires_at (GGUFSTACK_RESPONSES_RETENTION_S) are never read and are deleted now and then.
CREATE TABLE responses (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    response     jsonb NOT NULL,
    input_items  jsonb NOT NULL,
    context      jsonb NOT NULL
);
CREATE INDEX responses_expiry ON responses (expires_at);
