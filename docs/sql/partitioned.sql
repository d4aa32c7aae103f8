-- Hash-partition rate_limits by caller, in place (docs/scale-out.md, "PostgreSQL at scale").
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f docs/sql/partitioned.sql
--
-- Run it once, after the gateway's migrations, at a quiet moment: it holds an exclusive lock on
-- the table while it copies the rows (gateways keep running; their decisions wait for the lock).
-- One transaction: on any error nothing changes. Refuses to run twice.
--
-- Why it is safe for the decision function: rate_limit_decide (migrations/003) names the table,
-- not a partition, and only ever touches the row of one (policy, user_id) per step; the primary
-- key stays (policy, user_id), which contains the partition key user_id, so ON CONFLICT and
-- SELECT ... FOR UPDATE behave exactly as on the plain table. Every bucket lives in one
-- partition; autovacuum and index maintenance work per partition.
--
-- 16 partitions: change both 16s below for more (a power of two keeps later splits simple).
-- Migrations after this one that ALTER TABLE rate_limits (add a column, a default) apply to
-- partitioned tables too.

BEGIN;

DO $$
BEGIN
  IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'rate_limits'::regclass) = 'p' THEN
    RAISE EXCEPTION 'rate_limits is already partitioned';
  END IF;
END
$$;

LOCK TABLE rate_limits IN ACCESS EXCLUSIVE MODE;

ALTER TABLE rate_limits RENAME TO rate_limits_unpartitioned;
ALTER INDEX rate_limits_pkey RENAME TO rate_limits_unpartitioned_pkey;

-- Same columns, types, defaults and constraints as whatever the migrations have made of it.
CREATE TABLE rate_limits (LIKE rate_limits_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)
  PARTITION BY HASH (user_id);
ALTER TABLE rate_limits ADD PRIMARY KEY (policy, user_id);

DO $$
BEGIN
  FOR i IN 0..15 LOOP
    EXECUTE format('CREATE TABLE rate_limits_p%s PARTITION OF rate_limits FOR VALUES WITH (MODULUS 16, REMAINDER %s)', lpad(i::text, 2, '0'), i);
  END LOOP;
END
$$;

INSERT INTO rate_limits SELECT * FROM rate_limits_unpartitioned;
DROP TABLE rate_limits_unpartitioned;

COMMIT;
