-- rate_limit_decide_distinct: rate_limit_decide_groups (006) for the usual small batch, where
-- every request asks one bucket and no bucket occurs twice (concurrent callers, each once). Each
-- such item decides alone, so the lock, the refill and the charge of an allowance can be one
-- UPDATE ... WHERE <it can pay> RETURNING, where 006 takes a SELECT ... FOR UPDATE (a row lock,
-- written to the WAL) and then an UPDATE: measured here at batches of 12, 40 against 52 µs of
-- PostgreSQL CPU per decision (docs/performance.md). An item the UPDATE does not charge (a
-- missing row, or one that cannot pay) is decided by rate_limit_decide_one (008, 006's steps for
-- one key: lock, create if missing, refill after the lock, decide).
--
-- Same arguments as 006 without the group ids (each item is its own group), same results.
-- Keys are visited in the one global (policy, user_id) order, as every decision and hand-back
-- takes rows, so this cannot deadlock with them.
--
-- The clock. The UPDATE's expressions read clock_timestamp() as the statement reaches the row;
-- if another transaction changed the row meanwhile, PostgreSQL evaluates them again on the new
-- row after the wait; greatest() never moves a timestamp backwards. But a transaction that only
-- locked the row (a refusal: 006, 007 and 008 lock, decide and write nothing) can take it between
-- that read and this UPDATE's lock, and answer with the row refilled to its own, later, clock:
-- a snapshot without this charge, stamped after the row's new time, which the cache would keep
-- as the newer ("newer wins", src/stores/redis/scripts.ts WRITE) and Redis could take over from.
-- So the result is not the row as written but the row projected (refilled) to a clock read in
-- RETURNING, after the UPDATE holds the row: later than any stamp a transaction that held the
-- row before it could have given, as 006's clock read after the lock is. The row itself keeps the
-- earlier time; the two describe the same bucket. The arithmetic is 006's expression for
-- expression (and so src/core/token-bucket.ts, EPSILON included): keep them in step.
CREATE OR REPLACE FUNCTION rate_limit_decide_distinct(
  p_policies text[], p_users text[], p_costs float8[], p_capacities float8[], p_rates float8[]
) RETURNS TABLE (o_idx int, o_allowed boolean, o_can_pay boolean, o_tokens float8, o_at_ms float8, o_created boolean)
LANGUAGE plpgsql AS $$
DECLARE
  i int;
  v_tokens float8;
  v_at timestamptz;
  v_after timestamptz;
BEGIN
  FOR i IN
    SELECT s.n FROM unnest(p_policies, p_users) WITH ORDINALITY AS s(p, u, n) ORDER BY s.p, s.u, s.n
  LOOP
    o_idx := i;
    o_created := false;
    UPDATE rate_limits r
      SET tokens = least(p_capacities[i], r.tokens + extract(epoch FROM (greatest(clock_timestamp(), r.last_refill_time) - r.last_refill_time)) * p_rates[i]) - p_costs[i],
          last_refill_time = greatest(clock_timestamp(), r.last_refill_time)
      WHERE r.policy = p_policies[i] AND r.user_id = p_users[i]
        AND least(p_capacities[i], r.tokens + extract(epoch FROM (greatest(clock_timestamp(), r.last_refill_time) - r.last_refill_time)) * p_rates[i]) + 1e-9 >= p_costs[i]
      RETURNING r.tokens, r.last_refill_time, clock_timestamp() INTO v_tokens, v_at, v_after;
    IF FOUND THEN
      -- The result is the row projected to a clock read after the UPDATE took the row (see above).
      v_after := greatest(v_after, v_at);
      o_allowed := true;
      o_tokens := least(p_capacities[i], v_tokens + extract(epoch FROM (v_after - v_at)) * p_rates[i]);
      o_at_ms := extract(epoch FROM v_after) * 1000;
    ELSE
      -- Missing (created full) or refused on the row the UPDATE saw: 006's steps for one key,
      -- as 008 takes them (lock, create if missing, refill after the lock, decide).
      SELECT d.o_allowed, d.o_tokens, d.o_at_ms, d.o_created INTO o_allowed, o_tokens, o_at_ms, o_created
        FROM rate_limit_decide_one(p_policies[i], p_users[i], p_costs[i], p_capacities[i], p_rates[i]) AS d;
    END IF;
    o_can_pay := o_allowed;
    RETURN NEXT;
  END LOOP;
END
$$;
