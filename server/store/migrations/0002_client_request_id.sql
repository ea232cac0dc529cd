-- request_id is the server's own id; the client's X-Request-Id is kept here for tracing. It is not unique: a client
-- may repeat it, or guess another's, and neither may merge or drop rows.
ALTER TABLE audit_log ADD COLUMN client_request_id text;
CREATE INDEX audit_log_client_request ON audit_log (key_id, client_request_id) WHERE client_request_id IS NOT NULL;
