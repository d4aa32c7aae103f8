-- rate_limit_decide_batch: the same decisions as rate_limit_decide_groups (006), with the same
-- arguments and results, in a few set-based statements instead of two SQL statements per key.
-- The per-key statements of the plpgsql loop were most of PostgreSQL's CPU per decision at large
-- batches (docs/performance.md, "One set-based statement per batch").
--
-- 1. One INSERT ... ON CONFLICT DO UPDATE ... WHERE false over the batch's distinct keys, sorted
--    in the one global (policy, user_id) order: it creates each missing key full and locks each
--    existing one (ON CONFLICT DO UPDATE locks the conflicting row even when its WHERE is false,
--    and writes nothing), one key after the other in that order. So, as in 006, every row and
--    every insertion a batch waits for comes in key order, whether the key is new or not, and
--    batches (of any gateway, and the hand-back's rate_limit_lock) cannot deadlock each other.
--    RETURNING names the keys this call created (o_created).
-- 2. The groups none of whose keys occur twice in the batch share no bucket with any other
--    group, so their order does not matter: one statement reads their (now locked) rows, refills
--    them to the database clock read once after every lock is held (never moving a timestamp
--    backwards), decides each group all or nothing, writes the charged rows and returns them.
-- 3. Only the groups that touch a key occurring twice (one caller's concurrent requests) are
--    decided one by one in arrival order, as in 006, against rows read in one statement, and
--    their charged rows written in one statement.
-- A refusal writes nothing. The arithmetic is 006's expression for expression (and so
-- src/core/token-bucket.ts, EPSILON included): keep them in step.
CREATE OR REPLACE FUNCTION rate_limit_decide_batch(
  p_groups int[], p_policies text[], p_users text[], p_costs float8[], p_capacities float8[], p_rates float8[]
) RETURNS TABLE (o_idx int, o_allowed boolean, o_can_pay boolean, o_tokens float8, o_at_ms float8, o_created boolean)
LANGUAGE plpgsql AS $$
DECLARE
  n int := coalesce(array_length(p_policies, 1), 0);
  nk int;
  ng int;
  v_clock timestamptz;
  c_policies text[];
  c_users text[];
  dep int[];
  nd int;
  i int;
  j int;
  m int;
  q int;
  v_ok boolean;
  rec record;
  -- Step 3 only: per dependent item (by position in dep), its key's slot; per key slot, its state.
  item_key int[];
  k_policy text[] := '{}';
  k_user text[] := '{}';
  k_first int[] := '{}';
  k_tokens float8[] := '{}';
  k_ts timestamptz[] := '{}';
  k_charged boolean[] := '{}';
  can_pay boolean[];
  allowed boolean[];
  after float8[];
BEGIN
  IF n = 0 THEN RETURN; END IF;

  -- 1. Lock or create every distinct key, in the global key order, in one statement. DISTINCT
  -- ON keeps a key's first item (its capacity creates the row, as in 006), and a statement
  -- that met the same key twice would fail ("cannot affect row a second time").
  WITH k AS MATERIALIZED (
    SELECT DISTINCT ON (t.p, t.u) t.p, t.u, t.cap
    FROM unnest(p_policies, p_users, p_capacities) WITH ORDINALITY AS t(p, u, cap, n)
    ORDER BY t.p, t.u, t.n
  ), ins AS (
    INSERT INTO rate_limits AS r (policy, user_id, tokens, last_refill_time)
    SELECT k.p, k.u, k.cap, clock_timestamp() FROM k ORDER BY k.p, k.u
    ON CONFLICT (policy, user_id) DO UPDATE SET tokens = r.tokens WHERE false
    RETURNING r.policy, r.user_id
  )
  SELECT (SELECT count(*) FROM k), (SELECT count(DISTINCT g) FROM unnest(p_groups) AS g), array_agg(ins.policy), array_agg(ins.user_id)
    INTO nk, ng, c_policies, c_users FROM ins;

  -- Every row is locked (or ours): from here on, the clock read follows every lock.
  v_clock := clock_timestamp();

  -- 2a. Every key once and every group one bucket (one policy per request, the usual batch):
  -- each row decides alone, so one UPDATE charges the rows that can pay and returns them, and
  -- only the refused rows are read (a refusal writes nothing, so the statement's snapshot of
  -- them is the locked state).
  IF nk = n AND ng = n THEN
    RETURN QUERY
    WITH it AS (
      SELECT t.p, t.u, t.c, t.cap, t.rate, t.n::int AS n
      FROM unnest(p_policies, p_users, p_costs, p_capacities, p_rates) WITH ORDINALITY AS t(p, u, c, cap, rate, n)
    ), paid AS (
      UPDATE rate_limits r
      SET tokens = least(it.cap, r.tokens + extract(epoch FROM (greatest(v_clock, r.last_refill_time) - r.last_refill_time)) * it.rate) - it.c,
          last_refill_time = greatest(v_clock, r.last_refill_time)
      FROM it
      WHERE r.policy = it.p AND r.user_id = it.u
        AND least(it.cap, r.tokens + extract(epoch FROM (greatest(v_clock, r.last_refill_time) - r.last_refill_time)) * it.rate) + 1e-9 >= it.c
      RETURNING it.n, it.p, it.u, r.tokens, r.last_refill_time
    )
    SELECT x.n, x.allowed, x.allowed, x.tokens, (extract(epoch FROM x.at) * 1000)::float8,
           EXISTS (SELECT 1 FROM unnest(c_policies, c_users) AS c(cp, cu) WHERE c.cp = x.p AND c.cu = x.u)
    FROM (
      SELECT paid.n, paid.p, paid.u, true AS allowed, paid.tokens, paid.last_refill_time AS at FROM paid
      UNION ALL
      SELECT it.n, it.p, it.u, false, least(it.cap, r.tokens + extract(epoch FROM (s.v_now - r.last_refill_time)) * it.rate), s.v_now
      FROM it
      JOIN rate_limits r ON r.policy = it.p AND r.user_id = it.u
      CROSS JOIN LATERAL (SELECT greatest(v_clock, r.last_refill_time) AS v_now) AS s
      WHERE NOT EXISTS (SELECT 1 FROM paid WHERE paid.n = it.n)
    ) AS x;
    RETURN;
  END IF;

  -- The items of groups that touch a key occurring twice (none when every key is distinct).
  IF nk < n THEN
    SELECT array_agg(d.n ORDER BY d.n) INTO dep FROM (
      SELECT x.n, bool_or(x.uses > 1) OVER (PARTITION BY x.g) AS dependent
      FROM (SELECT t.g, t.n, count(*) OVER (PARTITION BY t.p, t.u) AS uses
            FROM unnest(p_groups, p_policies, p_users) WITH ORDINALITY AS t(g, p, u, n)) AS x
    ) AS d WHERE d.dependent;
  END IF;
  dep := coalesce(dep, '{}');
  nd := coalesce(array_length(dep, 1), 0);

  -- 2b. The independent groups, set-based: read, refill, decide all or nothing, write, return.
  IF nd < n THEN
    RETURN QUERY
    WITH it AS (
      SELECT t.g, t.p, t.u, t.c, t.cap, t.rate, t.n::int AS n
      FROM unnest(p_groups, p_policies, p_users, p_costs, p_capacities, p_rates) WITH ORDINALITY AS t(g, p, u, c, cap, rate, n)
      WHERE nd = 0 OR t.n::int <> ALL (dep)
    ), refilled AS (
      SELECT it.g, it.p, it.u, it.c, it.n, s.v_now,
             least(it.cap, r.tokens + extract(epoch FROM (s.v_now - r.last_refill_time)) * it.rate) AS tokens
      FROM it
      JOIN rate_limits r ON r.policy = it.p AND r.user_id = it.u
      CROSS JOIN LATERAL (SELECT greatest(v_clock, r.last_refill_time) AS v_now) AS s
    ), paid AS (
      SELECT f.*, f.tokens + 1e-9 >= f.c AS can_pay FROM refilled AS f
    ), decided AS MATERIALIZED (
      SELECT x.*, bool_and(x.can_pay) OVER (PARTITION BY x.g) AS allowed FROM paid AS x
    ), written AS (
      UPDATE rate_limits r SET tokens = d.tokens - d.c, last_refill_time = d.v_now
      FROM decided AS d
      WHERE d.allowed AND r.policy = d.p AND r.user_id = d.u
    )
    SELECT d.n, d.allowed, d.can_pay,
           CASE WHEN d.allowed THEN d.tokens - d.c ELSE d.tokens END,
           (extract(epoch FROM d.v_now) * 1000)::float8,
           coalesce(cr.created, false)
    FROM decided AS d
    LEFT JOIN (SELECT true AS created, cp, cu FROM unnest(c_policies, c_users) AS c(cp, cu)) AS cr
      ON cr.cp = d.p AND cr.cu = d.u
      -- 006 reports a created key on its first item only; here that item is the key's only one.
    ;
  END IF;

  IF nd = 0 THEN RETURN; END IF;

  -- 3. The dependent groups, as 006 decides them: their keys' rows in one read (sorted, so a
  -- key's items are adjacent), then the groups one by one in arrival order.
  item_key := array_fill(0, ARRAY[nd]);
  can_pay := array_fill(false, ARRAY[nd]);
  allowed := array_fill(false, ARRAY[nd]);
  after := array_fill(0::float8, ARRAY[nd]);
  FOR rec IN
    SELECT d.q, d.i, rl.tokens, rl.last_refill_time AS at
    FROM unnest(dep) WITH ORDINALITY AS d(i, q)
    JOIN rate_limits rl ON rl.policy = p_policies[d.i] AND rl.user_id = p_users[d.i]
    ORDER BY p_policies[d.i], p_users[d.i], d.i
  LOOP
    nk := coalesce(array_length(k_first, 1), 0);
    IF nk = 0 OR p_policies[rec.i] <> k_policy[nk] OR p_users[rec.i] <> k_user[nk] THEN
      nk := nk + 1;
      k_policy[nk] := p_policies[rec.i];
      k_user[nk] := p_users[rec.i];
      k_first[nk] := rec.i;
      k_ts[nk] := greatest(v_clock, rec.at);
      k_tokens[nk] := least(p_capacities[rec.i], rec.tokens + extract(epoch FROM (k_ts[nk] - rec.at)) * p_rates[rec.i]);
      k_charged[nk] := false;
    END IF;
    item_key[rec.q] := nk;
  END LOOP;

  q := 1;
  WHILE q <= nd LOOP
    j := q;
    WHILE j < nd AND p_groups[dep[j + 1]] = p_groups[dep[q]] LOOP j := j + 1; END LOOP;
    v_ok := true;
    FOR m IN q..j LOOP
      can_pay[m] := k_tokens[item_key[m]] + 1e-9 >= p_costs[dep[m]];
      v_ok := v_ok AND can_pay[m];
    END LOOP;
    FOR m IN q..j LOOP
      IF v_ok THEN
        k_tokens[item_key[m]] := k_tokens[item_key[m]] - p_costs[dep[m]];
        k_charged[item_key[m]] := true;
      END IF;
      allowed[m] := v_ok;
      after[m] := k_tokens[item_key[m]];
    END LOOP;
    q := j + 1;
  END LOOP;

  UPDATE rate_limits rl SET tokens = w.tokens, last_refill_time = w.ts
  FROM unnest(k_policy, k_user, k_tokens, k_ts, k_charged) AS w(p, u, tokens, ts, charged)
  WHERE w.charged AND rl.policy = w.p AND rl.user_id = w.u;

  FOR m IN 1..nd LOOP
    i := dep[m];
    o_idx := i;
    o_allowed := allowed[m];
    o_can_pay := can_pay[m];
    o_tokens := after[m];
    o_at_ms := extract(epoch FROM k_ts[item_key[m]]) * 1000;
    o_created := k_first[item_key[m]] = i AND EXISTS (
      SELECT 1 FROM unnest(c_policies, c_users) AS c(cp, cu) WHERE c.cp = p_policies[i] AND c.cu = p_users[i]);
    RETURN NEXT;
  END LOOP;
END
$$;
