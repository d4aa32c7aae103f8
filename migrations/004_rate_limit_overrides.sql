-- Per-caller overrides of a policy's capacity and refill rate (admin API). Every gateway keeps
-- the whole table in memory and reloads it when notified, so a change made by one gateway
-- (or by hand in psql) reaches the others at once.
CREATE TABLE IF NOT EXISTS rate_limit_overrides (
  policy text NOT NULL,
  user_id varchar(255) NOT NULL,
  capacity double precision CHECK (capacity > 0),
  refill_per_second double precision CHECK (refill_per_second > 0),
  updated_by text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (policy, user_id),
  CHECK (capacity IS NOT NULL OR refill_per_second IS NOT NULL)
);

CREATE OR REPLACE FUNCTION rate_limit_overrides_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('rate_limit_overrides', TG_OP);
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rate_limit_overrides_changed ON rate_limit_overrides;
CREATE TRIGGER rate_limit_overrides_changed
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rate_limit_overrides
  FOR EACH STATEMENT EXECUTE FUNCTION rate_limit_overrides_notify();
