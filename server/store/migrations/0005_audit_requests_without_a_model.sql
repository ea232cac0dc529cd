-- Requests that run no model (a stored Responses API response read, its input items listed, or deleted) count
-- against their key's RPM and are audited like any other: their rows name no model.
ALTER TABLE audit_log ALTER COLUMN model DROP NOT NULL;
