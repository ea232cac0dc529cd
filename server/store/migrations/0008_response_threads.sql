-- A stored response continuing another keeps its own items and a link to the one it continued (previous_id), not a
-- copy of the whole conversation before it: a chat of n turns stored about n²/2 turns, now n. A conversation's rows
-- must then be kept together, so expiry moves from each row to its thread (every response a first one led to): a
-- thread is kept until the retention has passed since its latest response, and then deleted whole. `bytes` is what
-- its rows were saved with (rows deleted since still counted), what a save extending its life is charged for
-- (GGUFSTACK_RESPONSES_MAX_BYTES_PER_KEY_PER_DAY).
-- A response deleted while later ones continue it is hidden (`deleted`) and trimmed to what they continue from.
-- Rows kept before stay whole (previous_id NULL, their `context` holds what they continued), each its own thread.
CREATE TABLE response_threads (
    id         text PRIMARY KEY,
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL,
    bytes      bigint NOT NULL
);
CREATE INDEX response_threads_expiry ON response_threads (expires_at);

ALTER TABLE responses ADD COLUMN thread_id text;
ALTER TABLE responses ADD COLUMN previous_id text;
ALTER TABLE responses ADD COLUMN deleted boolean NOT NULL DEFAULT false;
UPDATE responses SET thread_id = id;
INSERT INTO response_threads (id, owner, expires_at, bytes)
    SELECT id, owner, expires_at,
        octet_length(response::text) + octet_length(input_items::text) + octet_length(context::text)
    FROM responses;
ALTER TABLE responses ALTER COLUMN thread_id SET NOT NULL;
CREATE INDEX responses_thread ON responses (thread_id);
CREATE INDEX responses_previous ON responses (previous_id) WHERE previous_id IS NOT NULL;
DROP INDEX responses_expiry;
ALTER TABLE responses DROP COLUMN expires_at;
