-- The original table (seed/original-spec.txt), kept as the first step so an existing
-- deployment of the original service upgrades in place.
CREATE TABLE IF NOT EXISTS rate_limits (
  user_id VARCHAR(255) PRIMARY KEY,
  tokens INT NOT NULL,
  last_refill_time TIMESTAMP NOT NULL DEFAULT NOW()
);
