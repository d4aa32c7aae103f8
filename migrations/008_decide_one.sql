-- rate_limit_decide_one: rate_limit_decide_groups (006) for a batch of one bucket, the batch a
-- gateway sends whenever it is not busy (one request in flight: each sequential request's whole
-- decision). Same row lock, same database clock, same arithmetic and the same results, without
-- the arrays: six array parameters to parse, an unnest sorted for the lock order, and the
-- function's array bookkeeping were about a fifth of a one-key decision's time at the median
-- (docs/performance.md, "One bucket, one scalar function"). The arithmetic is 006's expression
-- for expression (and so src/core/token-bucket.ts, EPSILON included): keep them in step.
-- One row is locked, so it cannot deadlock with anything that takes rows in the global order.
CREATE OR REPLACE FUNCTION rate_limit_decide_one(
  p_policy text, p_user text, p_cost float8, p_capacity float8, p_rate float8
) RETURNS TABLE (o_allowed boolean, o_tokens float8, o_at_ms float8, o_created boolean)
LANGUAGE plpgsql AS $$
DECLARE
  v_tokens float8;
  v_at timestamptz;
  v_now timestamptz;
BEGIN
  o_created := false;
  SELECT r.tokens, r.last_refill_time INTO v_tokens, v_at
    FROM rate_limits r WHERE r.policy = p_policy AND r.user_id = p_user FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO rate_limits AS r (policy, user_id, tokens, last_refill_time)
      VALUES (p_policy, p_user, p_capacity, clock_timestamp())
      ON CONFLICT DO NOTHING;
    o_created := FOUND;
    SELECT r.tokens, r.last_refill_time INTO v_tokens, v_at
      FROM rate_limits r WHERE r.policy = p_policy AND r.user_id = p_user FOR UPDATE;
  END IF;
  v_now := greatest(clock_timestamp(), v_at);
  v_tokens := least(p_capacity, v_tokens + extract(epoch FROM (v_now - v_at)) * p_rate);
  o_allowed := v_tokens + 1e-9 >= p_cost;
  IF o_allowed THEN
    v_tokens := v_tokens - p_cost;
    UPDATE rate_limits r SET tokens = v_tokens, last_refill_time = v_now
      WHERE r.policy = p_policy AND r.user_id = p_user;
  END IF;
  o_tokens := v_tokens;
  o_at_ms := extract(epoch FROM v_now) * 1000;
  RETURN NEXT;
END
$$;
