-- The size of the conversation a continuation of each response starts from (its context, input and output items):
-- their number and their bytes as JSON. A continuation reads these first and the items only within the server's
-- bound (GGUFSTACK_MAX_MESSAGES, GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES), so a conversation grown too large is
-- refused without being read. Rows kept before are measured here, once, by PostgreSQL's own JSON text.
ALTER TABLE responses ADD COLUMN conversation_items integer;
ALTER TABLE responses ADD COLUMN conversation_bytes bigint;
UPDATE responses SET
    conversation_items = jsonb_array_length(context) + jsonb_array_length(input_items)
        + coalesce(jsonb_array_length(response -> 'output'), 0),
    conversation_bytes = octet_length(context::text) + octet_length(input_items::text)
        + coalesce(octet_length((response -> 'output')::text), 0);
ALTER TABLE responses ALTER COLUMN conversation_items SET NOT NULL;
ALTER TABLE responses ALTER COLUMN conversation_bytes SET NOT NULL;
