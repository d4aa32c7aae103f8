-- Handing buckets that Redis decided (while PostgreSQL was down) back to PostgreSQL
-- (src/limiter/hand-back.ts, docs/design.md). In one transaction the caller:
--   1. locks the rows with rate_limit_lock (created full if missing), in the same key order as
--      rate_limit_decide, so the two cannot deadlock;
--   2. marks the buckets as being handed back in Redis and reads their tokens;
--   3. merges with rate_limit_merge, keeping whichever state has fewer tokens, so nothing Redis
--      spent is refunded and nothing PostgreSQL spent is charged twice.

CREATE OR REPLACE FUNCTION rate_limit_lock(
  p_policies text[], p_users text[], p_capacities float8[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  i int;
BEGIN
  FOR i IN
    SELECT s.n FROM unnest(p_policies, p_users) WITH ORDINALITY AS s(p, u, n) ORDER BY s.p, s.u, s.n
  LOOP
    PERFORM 1 FROM rate_limits r WHERE r.policy = p_policies[i] AND r.user_id = p_users[i] FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO rate_limits AS r (policy, user_id, tokens, last_refill_time)
        VALUES (p_policies[i], p_users[i], p_capacities[i], clock_timestamp())
        ON CONFLICT DO NOTHING;
      PERFORM 1 FROM rate_limits r WHERE r.policy = p_policies[i] AND r.user_id = p_users[i] FOR UPDATE;
    END IF;
  END LOOP;
END
$$;

-- p_tokens: each bucket's tokens in Redis, refilled to the moment it was read (Redis clock).
-- Both states are refilled to "now" on their own store's clock, the lower one is kept and
-- stamped with the database clock: the moments differ by the time between the two reads,
-- and the refill in that gap is given up (it errs towards fewer tokens, never more).
CREATE OR REPLACE FUNCTION rate_limit_merge(
  p_policies text[], p_users text[], p_capacities float8[], p_rates float8[], p_tokens float8[]
) RETURNS TABLE (o_idx int, o_tokens float8, o_at_ms float8)
LANGUAGE plpgsql AS $$
DECLARE
  i int;
  v_tokens float8;
  v_at timestamptz;
  v_now timestamptz;
BEGIN
  FOR i IN
    SELECT s.n FROM unnest(p_policies, p_users) WITH ORDINALITY AS s(p, u, n) ORDER BY s.p, s.u, s.n
  LOOP
    SELECT r.tokens, r.last_refill_time INTO v_tokens, v_at
      FROM rate_limits r WHERE r.policy = p_policies[i] AND r.user_id = p_users[i] FOR UPDATE;
    v_now := greatest(clock_timestamp(), v_at);
    v_tokens := least(p_capacities[i], v_tokens + extract(epoch FROM (v_now - v_at)) * p_rates[i]);
    IF p_tokens[i] IS NOT NULL THEN
      v_tokens := least(v_tokens, p_tokens[i]);
    END IF;
    UPDATE rate_limits r SET tokens = v_tokens, last_refill_time = v_now
      WHERE r.policy = p_policies[i] AND r.user_id = p_users[i];
    o_idx := i;
    o_tokens := v_tokens;
    o_at_ms := extract(epoch FROM v_now) * 1000;
    RETURN NEXT;
  END LOOP;
END
$$;
