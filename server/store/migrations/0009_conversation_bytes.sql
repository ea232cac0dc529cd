-- The bytes of conversation text each API key stored on each day (UTC): what it may still store that day
-- (GGUFSTACK_CONVERSATIONS_MAX_BYTES_PER_KEY_PER_DAY). Tokens bound what a request costs, not what it stores: a
-- thinking block the chat template leaves out of the prompt costs no token and was stored whole, and a cache hit
-- costs none at all. The audit writer adds to a key's row of the day and drops its earlier days: one row per key.
CREATE TABLE conversation_bytes (
    key_id text NOT NULL,
    day date NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (key_id, day)
);
