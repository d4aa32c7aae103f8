-- Several buckets per request, all or nothing (a plan of burst + hourly + monthly limits).
-- rate_limit_decide_groups extends rate_limit_decide (003): each item carries a group id (one
-- group per request; a group's items are adjacent and groups come in arrival order). A group is
-- allowed only if every one of its buckets can pay its cost; then each is charged, else none is.
-- All of a batch's rows are locked first, in the one global (policy, user_id) order every
-- decision and hand-back uses, so concurrent batches cannot deadlock; each row's time is read
-- from the database clock once it is locked and never moves its timestamp backwards. Groups are
-- then decided in order against the locked rows, and only rows that were charged are written.
-- The arithmetic mirrors src/core/token-bucket.ts (EPSILON included): keep them in step.
-- o_can_pay: this bucket alone could pay (false marks the policies that refused the group);
-- o_tokens: the bucket after its group was decided.
CREATE OR REPLACE FUNCTION rate_limit_decide_groups(
  p_groups int[], p_policies text[], p_users text[], p_costs float8[], p_capacities float8[], p_rates float8[]
) RETURNS TABLE (o_idx int, o_allowed boolean, o_can_pay boolean, o_tokens float8, o_at_ms float8, o_created boolean)
LANGUAGE plpgsql AS $$
DECLARE
  n int := coalesce(array_length(p_policies, 1), 0);
  nk int := 0;
  i int;
  j int;
  m int;
  v_tokens float8;
  v_at timestamptz;
  v_now timestamptz;
  v_created boolean;
  v_ok boolean;
  item_key int[] := array_fill(0, ARRAY[greatest(n, 1)]);
  k_first int[] := '{}';
  k_tokens float8[] := '{}';
  k_ts timestamptz[] := '{}';
  k_created boolean[] := '{}';
  k_charged boolean[] := '{}';
  can_pay boolean[] := array_fill(false, ARRAY[greatest(n, 1)]);
  allowed boolean[] := array_fill(false, ARRAY[greatest(n, 1)]);
  after float8[] := array_fill(0::float8, ARRAY[greatest(n, 1)]);
BEGIN
  -- 1. Lock every distinct key in the global order (sorted: a key's items are adjacent).
  FOR i IN
    SELECT s.n FROM unnest(p_policies, p_users) WITH ORDINALITY AS s(p, u, n) ORDER BY s.p, s.u, s.n
  LOOP
    IF nk = 0 OR p_policies[i] <> p_policies[k_first[nk]] OR p_users[i] <> p_users[k_first[nk]] THEN
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
      nk := nk + 1;
      k_first[nk] := i;
      k_tokens[nk] := least(p_capacities[i], v_tokens + extract(epoch FROM (v_now - v_at)) * p_rates[i]);
      k_ts[nk] := v_now;
      k_created[nk] := v_created;
      k_charged[nk] := false;
    END IF;
    item_key[i] := nk;
  END LOOP;

  -- 2. Decide the groups in arrival order: all of a group's buckets pay, or none does.
  i := 1;
  WHILE i <= n LOOP
    j := i;
    WHILE j < n AND p_groups[j + 1] = p_groups[i] LOOP j := j + 1; END LOOP;
    v_ok := true;
    FOR m IN i..j LOOP
      can_pay[m] := k_tokens[item_key[m]] + 1e-9 >= p_costs[m];
      v_ok := v_ok AND can_pay[m];
    END LOOP;
    FOR m IN i..j LOOP
      IF v_ok THEN
        k_tokens[item_key[m]] := k_tokens[item_key[m]] - p_costs[m];
        k_charged[item_key[m]] := true;
      END IF;
      allowed[m] := v_ok;
      after[m] := k_tokens[item_key[m]];
    END LOOP;
    i := j + 1;
  END LOOP;

  -- 3. Write the rows that were charged (a refusal changes nothing: the row projects the same).
  FOR m IN 1..nk LOOP
    IF k_charged[m] THEN
      UPDATE rate_limits r SET tokens = k_tokens[m], last_refill_time = k_ts[m]
        WHERE r.policy = p_policies[k_first[m]] AND r.user_id = p_users[k_first[m]];
    END IF;
  END LOOP;

  FOR i IN 1..n LOOP
    o_idx := i;
    o_allowed := allowed[i];
    o_can_pay := can_pay[i];
    o_tokens := after[i];
    o_at_ms := extract(epoch FROM k_ts[item_key[i]]) * 1000;
    o_created := k_created[item_key[i]] AND k_first[item_key[i]] = i;
    RETURN NEXT;
  END LOOP;
END
$$;

-- A refund: each bucket gets p_amounts back, refilled to now first and never above capacity
-- (the upstream failed, or a request of several buckets was refused after some were charged
-- while PostgreSQL decided them one by one). Rows are locked in the global key order. A missing
-- row is full: nothing to give back.
CREATE OR REPLACE FUNCTION rate_limit_refund(
  p_policies text[], p_users text[], p_amounts float8[], p_capacities float8[], p_rates float8[]
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
    v_now := greatest(clock_timestamp(), coalesce(v_at, clock_timestamp()));
    o_idx := i;
    o_at_ms := extract(epoch FROM v_now) * 1000;
    IF NOT FOUND THEN
      o_tokens := p_capacities[i];
    ELSE
      v_tokens := least(p_capacities[i], v_tokens + extract(epoch FROM (v_now - v_at)) * p_rates[i] + p_amounts[i]);
      UPDATE rate_limits r SET tokens = v_tokens, last_refill_time = v_now
        WHERE r.policy = p_policies[i] AND r.user_id = p_users[i];
      o_tokens := v_tokens;
    END IF;
    RETURN NEXT;
  END LOOP;
END
$$;
