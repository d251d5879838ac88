-- Accounts, API keys, the credit ledger, holds, runs and idempotency records.
-- Every change of a balance is a ledger row; accounts.balance is kept equal to
-- the sum of the account's ledger rows in the same transaction.

CREATE TABLE accounts (
    id            bigserial PRIMARY KEY,
    email         text UNIQUE,
    password_hash text,
    balance       bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts(id),
    name         text NOT NULL DEFAULT 'default',
    key_hash     bytea NOT NULL UNIQUE,
    last4        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE ledger (
    id         bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts(id),
    amount     bigint NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('grant', 'charge', 'topup', 'refund', 'adjust')),
    ref        text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account ON ledger(account_id, id);
-- A payment event or a run is credited or charged at most once.
CREATE UNIQUE INDEX ledger_once ON ledger(kind, ref) WHERE ref IS NOT NULL;

CREATE TABLE holds (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts(id),
    amount      bigint NOT NULL CHECK (amount >= 0),
    instance_id text NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX holds_account ON holds(account_id);
CREATE INDEX holds_instance ON holds(instance_id);

CREATE TABLE runs (
    id              text PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts(id),
    key_id          bigint REFERENCES api_keys(id),
    language        text NOT NULL,
    termination     text NOT NULL,
    exit_code       integer NOT NULL,
    duration_ms     integer NOT NULL,
    queue_ms        integer NOT NULL,
    credits_charged bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_account ON runs(account_id, created_at DESC);

CREATE TABLE idempotency (
    account_id  bigint NOT NULL REFERENCES accounts(id),
    key         text NOT NULL,
    body_hash   bytea NOT NULL,
    state       text NOT NULL CHECK (state IN ('running', 'done')),
    status_code integer,
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_expiry ON idempotency(expires_at);

-- Auth plus hold in one round trip.  Each statement in a function gets a fresh
-- snapshot under READ COMMITTED, so the holds are summed after the account row
-- is locked: two concurrent runs can never hold the same credits.
CREATE FUNCTION cinch_authorize(p_key_hash bytea, p_max_hold bigint, p_instance text, p_ttl_s integer)
RETURNS TABLE (status text, account_id bigint, key_id bigint, hold_id bigint,
               hold_amount bigint, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    bal bigint;
    held bigint;
    amt bigint;
    hid bigint;
BEGIN
    SELECT ak.id, ak.account_id, ak.last_used_at INTO k
        FROM api_keys ak WHERE ak.key_hash = p_key_hash AND ak.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid_key'::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '10 seconds' THEN
        UPDATE api_keys SET last_used_at = now() WHERE id = k.id;
    END IF;
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = k.account_id FOR UPDATE;
    SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
        WHERE h.account_id = k.account_id AND h.expires_at > now();
    IF bal - held <= 0 THEN
        RETURN QUERY SELECT 'no_credits'::text, k.account_id, k.id, NULL::bigint, 0::bigint, bal - held;
        RETURN;
    END IF;
    amt := LEAST(bal - held, p_max_hold);
    INSERT INTO holds (account_id, amount, instance_id, expires_at)
        VALUES (k.account_id, amt, p_instance, now() + make_interval(secs => p_ttl_s))
        RETURNING id INTO hid;
    RETURN QUERY SELECT 'ok'::text, k.account_id, k.id, hid, amt, bal - held - amt;
END $$;

-- Extend a live hold by up to p_add credits; returns the new hold amount
-- (unchanged when nothing is available: the caller stops the run).
CREATE FUNCTION cinch_extend_hold(p_hold_id bigint, p_add bigint, p_ttl_s integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    acc bigint;
    bal bigint;
    held bigint;
    cur bigint;
    amt bigint;
BEGIN
    SELECT h.account_id, h.amount INTO acc, cur FROM holds h WHERE h.id = p_hold_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = acc FOR UPDATE;
    SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
        WHERE h.account_id = acc AND h.expires_at > now();
    amt := GREATEST(LEAST(bal - held, p_add), 0);
    UPDATE holds SET amount = amount + amt, expires_at = now() + make_interval(secs => p_ttl_s)
        WHERE id = p_hold_id RETURNING amount INTO cur;
    RETURN cur;
END $$;

-- Settle a run: charge at most what was held, release the hold, record the run.
-- Returns the credits charged and what the account has available afterwards.
CREATE FUNCTION cinch_settle(p_hold_id bigint, p_account_id bigint, p_key_id bigint,
                             p_run_id text, p_language text, p_termination text,
                             p_exit_code integer, p_duration_ms integer, p_queue_ms integer,
                             p_billable boolean)
RETURNS TABLE (charged bigint, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    held_amt bigint;
    chg bigint;
    bal bigint;
    held bigint;
BEGIN
    PERFORM 1 FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    DELETE FROM holds h WHERE h.id = p_hold_id RETURNING h.amount INTO held_amt;
    chg := 0;
    IF p_billable THEN
        -- A lost hold (expired and reaped) still charges, capped by the balance.
        SELECT a.balance INTO bal FROM accounts a WHERE a.id = p_account_id;
        chg := LEAST(GREATEST(p_duration_ms, 0), COALESCE(held_amt, bal), bal);
    END IF;
    IF chg > 0 THEN
        INSERT INTO ledger (account_id, amount, kind, ref) VALUES (p_account_id, -chg, 'charge', p_run_id);
        UPDATE accounts SET balance = balance - chg WHERE id = p_account_id;
    END IF;
    INSERT INTO runs (id, account_id, key_id, language, termination, exit_code, duration_ms, queue_ms, credits_charged)
        VALUES (p_run_id, p_account_id, p_key_id, p_language, p_termination, p_exit_code, p_duration_ms, p_queue_ms, chg);
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = p_account_id;
    SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
        WHERE h.account_id = p_account_id AND h.expires_at > now();
    RETURN QUERY SELECT chg, bal - held;
END $$;
