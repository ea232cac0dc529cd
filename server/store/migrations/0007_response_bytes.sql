-- The bytes each owner's stored Responses API responses took on each day (UTC): what a key may still store that day
-- (GGUFSTACK_RESPONSES_MAX_BYTES_PER_KEY_PER_DAY). Each row keeps its whole conversation and reasoning items cost no
-- tokens, so without a budget a key could store megabytes per tiny request for as long as the retention. A save adds
-- to its owner's row of the day and drops that owner's earlier days: one row per owner.
CREATE TABLE response_bytes (
    owner text NOT NULL,
    day date NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (owner, day)
);
