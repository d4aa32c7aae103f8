-- The atomic decision, for one request or a batch of them, in one round trip.
-- Rows are locked in (policy, user_id) order, so concurrent batches cannot deadlock; requests
-- for the same key are charged in arrival order. Time is the database's clock, read after the
-- row lock is held, and never moves a bucket's timestamp backwards.
-- The arithmetic mirrors src/core/token-bucket.ts (EPSILON included): keep them in step.
CREATE OR REPLACE FUNCTION rate_limit_decide(
  p_policies text[], p_users text[], p_costs float8[], p_capacities float8[], p_rates float8[]
) RETURNS TABLE (o_idx int, o_allowed boolean, o_tokens float8, o_at_ms float8, o_created boolean)
LANGUAGE plpgsql AS $$
DECLARE
  i int;
  v_tokens float8;
  v_at timestamptz;
  v_now timestamptz;
  v_created boolean;
BEGIN
  FOR i IN
    SELECT s.n FROM unnest(p_policies, p_users) WITH ORDINALITY AS s(p, u, n) ORDER BY s.p, s.u, s.n
  LOOP
    v_created := false;
    SELECT r.tokens, r.last_refill_time INTO v_tokens, v_at
      FROM rate_limits r WHERE r.policy = p_policies[i] AND r.user_id = p_users[i] FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO rate_limits AS r (policy, user_id, tokens, last_refill_time)
        VALUES (p_policies[i], p_users[i], p_capacities[i], clock_timestamp())
        ON CONFLICT DO NOTHING;
      v_created := FOUND;
      SELECT r.tokens, r.last_refill_time INTO v_tokens, v_at
        FROM rate_limits r WHERE r.policy = p_policies[i] AND r.user_id = p_users[i] FOR UPDATE;
    END IF;

    v_now := greatest(clock_timestamp(), v_at);
    v_tokens := least(p_capacities[i], v_tokens + extract(epoch FROM (v_now - v_at)) * p_rates[i]);
    o_idx := i;
    o_created := v_created;
    o_at_ms := extract(epoch FROM v_now) * 1000;
    IF v_tokens + 1e-9 >= p_costs[i] THEN
      v_tokens := v_tokens - p_costs[i];
      UPDATE rate_limits r SET tokens = v_tokens, last_refill_time = v_now
        WHERE r.policy = p_policies[i] AND r.user_id = p_users[i];
      o_allowed := true;
    ELSE
      -- A denial changes nothing: the stored row projects to the same tokens.
      o_allowed := false;
    END IF;
    o_tokens := v_tokens;
    RETURN NEXT;
  END LOOP;
END
$$;
