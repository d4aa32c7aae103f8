-- Fractions of a token must be carried, not rounded away (no-lost-refill invariant);
-- timestamps become absolute instants; buckets are kept per (policy, caller).
-- The original wrote NOW() in the session's time zone, so existing rows are read in it.
ALTER TABLE rate_limits
  ALTER COLUMN tokens TYPE double precision,
  ALTER COLUMN last_refill_time TYPE timestamptz USING last_refill_time AT TIME ZONE current_setting('TimeZone'),
  ALTER COLUMN last_refill_time SET DEFAULT clock_timestamp(),
  ADD COLUMN policy text NOT NULL DEFAULT 'default';

ALTER TABLE rate_limits DROP CONSTRAINT rate_limits_pkey;
ALTER TABLE rate_limits ADD PRIMARY KEY (policy, user_id);
