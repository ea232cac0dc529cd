-- API keys: only a SHA-256 of the key and a short display prefix are kept, never the key itself.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    owner       text,
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    models      text[],
    rpm         integer CHECK (rpm > 0),
    tpm         integer CHECK (tpm > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- One row per request. request_id is unique so a batch retried after a lost connection cannot write a row twice.
CREATE TABLE audit_log (
    id                 bigserial PRIMARY KEY,
    request_id         text NOT NULL UNIQUE,
    key_id             text,
    created_at         timestamptz NOT NULL,
    endpoint           text NOT NULL,
    model              text NOT NULL,
    model_version      text,
    prompt_tokens      integer NOT NULL,
    completion_tokens  integer NOT NULL,
    latency_ms         double precision NOT NULL,
    ttft_ms            double precision,
    status             integer NOT NULL,
    cache_hit          boolean NOT NULL
);
CREATE INDEX audit_log_key_time ON audit_log (key_id, created_at);

-- Prompt and response text, written only when GGUFSTACK_STORE_CONVERSATIONS is on.
CREATE TABLE conversation_messages (
    id               bigserial PRIMARY KEY,
    conversation_id  text NOT NULL,
    key_id           text,
    request_id       text NOT NULL,
    position         integer NOT NULL,
    role             text NOT NULL,
    content          text NOT NULL,
    created_at       timestamptz NOT NULL,
    UNIQUE (request_id, position)
);
CREATE INDEX conversation_messages_lookup ON conversation_messages (conversation_id, key_id, id);
