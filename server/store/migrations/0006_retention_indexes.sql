-- The retention job deletes the oldest rows first, a batch at a time: without an index on created_at alone each batch
-- would scan the whole table (audit_log's index leads with key_id). Building them locks writes to the two tables for
-- as long as the build takes; the audit writer holds its rows in memory meanwhile.
CREATE INDEX audit_log_created_at ON audit_log (created_at);
CREATE INDEX conversation_messages_created_at ON conversation_messages (created_at);
