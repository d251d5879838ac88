-- The run ledger: a run's whole money path is two functions, one round trip each,
-- both idempotent by run id.
--
--   cinch_begin_run   key auth, idempotency claim (replay checked before credits),
--                     then the hold.  Everything happens under the account's row
--                     lock, so two requests with one Idempotency-Key serialize and
--                     exactly one of them claims it.
--   cinch_finish_run  settle exactly once (a second call with the same run id
--                     returns the first outcome), store the replayable response,
--                     release the hold.
--   cinch_abort_run   a run that never ran: drop its hold and its claim.
--
-- Instances heartbeat into `instances`; an idempotency claim whose owner stopped
-- heartbeating (or whose lease, the run's own deadline, is past) is taken over by
-- the next retry, so a crash never leaves a key stuck for its whole TTL.

CREATE TABLE instances (
    id         text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);

ALTER TABLE holds ADD COLUMN run_id text;
CREATE INDEX holds_run ON holds(run_id) WHERE run_id IS NOT NULL;

ALTER TABLE idempotency
    ADD COLUMN owner_instance text,
    ADD COLUMN run_id text,
    ADD COLUMN lease_expires_at timestamptz;
-- Claims made before this migration have no owner: the next retry takes them over.
UPDATE idempotency SET lease_expires_at = now() WHERE state = 'running';

-- Sign-ups remember the address they came from, so the per-address cap is
-- checked and recorded in one transaction (and holds across API replicas).
ALTER TABLE accounts ADD COLUMN signup_ip text;
CREATE INDEX accounts_signup_ip ON accounts(signup_ip, created_at) WHERE signup_ip IS NOT NULL;

-- An expired hold is gone: extending it must not revive it.
CREATE OR REPLACE FUNCTION cinch_extend_hold(p_hold_id bigint, p_add bigint, p_ttl_s integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    acc bigint;
    bal bigint;
    held bigint;
    cur bigint;
    amt bigint;
BEGIN
    SELECT h.account_id INTO acc FROM holds h WHERE h.id = p_hold_id AND h.expires_at > now();
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = acc FOR UPDATE;
    -- Read again under the account lock: a concurrent settle or reap may have won.
    SELECT h.amount INTO cur FROM holds h WHERE h.id = p_hold_id AND h.expires_at > now();
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
        WHERE h.account_id = acc AND h.expires_at > now();
    amt := GREATEST(LEAST(bal - held, p_add), 0);
    UPDATE holds SET amount = amount + amt, expires_at = now() + make_interval(secs => p_ttl_s)
        WHERE id = p_hold_id RETURNING amount INTO cur;
    RETURN cur;
END $$;

CREATE FUNCTION cinch_begin_run(
    p_key_hash bytea, p_run_id text, p_instance text, p_max_hold bigint, p_hold_ttl_s integer,
    p_idem_key text, p_body_hash bytea, p_idem_ttl_s integer, p_lease_s integer,
    p_dead_after_s integer)
RETURNS TABLE (status text, account_id bigint, key_id bigint, hold_id bigint,
               hold_amount bigint, available bigint, replay_status integer, replay_body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    r record;
    bal bigint;
    held bigint;
    amt bigint;
    hid bigint;
    have_row boolean := false;
BEGIN
    SELECT ak.id, ak.account_id, ak.last_used_at INTO k
        FROM api_keys ak WHERE ak.key_hash = p_key_hash AND ak.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid_key'::text, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::integer, NULL::jsonb;
        RETURN;
    END IF;
    IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '10 seconds' THEN
        UPDATE api_keys SET last_used_at = now() WHERE id = k.id;
    END IF;
    -- Every money move of this account queues here, in one order.
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = k.account_id FOR UPDATE;
    SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
        WHERE h.account_id = k.account_id AND h.expires_at > now();

    IF p_idem_key IS NOT NULL THEN
        SELECT i.* INTO r FROM idempotency i
            WHERE i.account_id = k.account_id AND i.key = p_idem_key;
        have_row := FOUND;
        IF have_row AND r.expires_at < now() THEN
            DELETE FROM idempotency i WHERE i.account_id = k.account_id AND i.key = p_idem_key;
            have_row := false;
        END IF;
        IF have_row THEN
            IF r.body_hash <> p_body_hash THEN
                RETURN QUERY SELECT 'conflict'::text, k.account_id, k.id, NULL::bigint,
                    0::bigint, bal - held, NULL::integer, NULL::jsonb;
                RETURN;
            END IF;
            -- A stored result is replayed whatever the balance is now.
            IF r.state = 'done' THEN
                RETURN QUERY SELECT 'replay'::text, k.account_id, k.id, NULL::bigint,
                    0::bigint, bal - held, r.status_code, r.response;
                RETURN;
            END IF;
            -- Running: wait for it, unless its owner is gone or its deadline passed.
            IF r.owner_instance IS NOT NULL
               AND r.lease_expires_at IS NOT NULL AND r.lease_expires_at > now()
               AND EXISTS (SELECT 1 FROM instances i WHERE i.id = r.owner_instance
                           AND i.stopped_at IS NULL
                           AND i.seen_at > now() - make_interval(secs => p_dead_after_s)) THEN
                RETURN QUERY SELECT 'running'::text, k.account_id, k.id, NULL::bigint,
                    0::bigint, bal - held, NULL::integer, NULL::jsonb;
                RETURN;
            END IF;
            -- Taken over below: the dead owner's hold (if any) is released first.
            DELETE FROM holds h WHERE h.run_id = r.run_id;
            SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
                WHERE h.account_id = k.account_id AND h.expires_at > now();
        END IF;
    END IF;

    IF bal - held <= 0 THEN
        RETURN QUERY SELECT 'no_credits'::text, k.account_id, k.id, NULL::bigint,
            0::bigint, bal - held, NULL::integer, NULL::jsonb;
        RETURN;
    END IF;
    amt := LEAST(bal - held, p_max_hold);
    INSERT INTO holds (account_id, amount, instance_id, expires_at, run_id)
        VALUES (k.account_id, amt, p_instance, now() + make_interval(secs => p_hold_ttl_s), p_run_id)
        RETURNING id INTO hid;
    IF p_idem_key IS NOT NULL THEN
        INSERT INTO idempotency AS i (account_id, key, body_hash, state, expires_at,
                                      owner_instance, run_id, lease_expires_at)
            VALUES (k.account_id, p_idem_key, p_body_hash, 'running',
                    now() + make_interval(secs => p_idem_ttl_s), p_instance, p_run_id,
                    now() + make_interval(secs => p_lease_s))
            ON CONFLICT ON CONSTRAINT idempotency_pkey DO UPDATE SET
                state = 'running', body_hash = EXCLUDED.body_hash, status_code = NULL,
                response = NULL, expires_at = EXCLUDED.expires_at,
                owner_instance = EXCLUDED.owner_instance, run_id = EXCLUDED.run_id,
                lease_expires_at = EXCLUDED.lease_expires_at;
    END IF;
    RETURN QUERY SELECT 'ok'::text, k.account_id, k.id, hid, amt, bal - held - amt,
        NULL::integer, NULL::jsonb;
END $$;

-- Settle a run exactly once.  The charge is the run's durationMs, capped by what
-- the account has that no other run holds (so never below zero, never another
-- run's credits).  A second call with the same run id changes nothing and
-- returns the first outcome (`first` is false then).
CREATE FUNCTION cinch_finish_run(
    p_run_id text, p_hold_id bigint, p_account_id bigint, p_key_id bigint,
    p_language text, p_termination text, p_exit_code integer, p_duration_ms integer,
    p_queue_ms integer, p_billable boolean, p_idem_key text, p_response jsonb)
RETURNS TABLE (charged bigint, available bigint, response jsonb, first boolean)
LANGUAGE plpgsql AS $$
DECLARE
    chg bigint;
    bal bigint;
    held bigint;
    body jsonb;
BEGIN
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    SELECT r.credits_charged INTO chg FROM runs r WHERE r.id = p_run_id;
    IF FOUND THEN
        SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
            WHERE h.account_id = p_account_id AND h.expires_at > now();
        body := NULL;
        IF p_idem_key IS NOT NULL THEN
            SELECT i.response INTO body FROM idempotency i
                WHERE i.account_id = p_account_id AND i.key = p_idem_key AND i.run_id = p_run_id;
        END IF;
        RETURN QUERY SELECT chg, bal - held,
            COALESCE(body, p_response || jsonb_build_object('creditsCharged', chg)), false;
        RETURN;
    END IF;
    DELETE FROM holds h WHERE h.id = p_hold_id OR h.run_id = p_run_id;
    SELECT COALESCE(sum(h.amount), 0) INTO held FROM holds h
        WHERE h.account_id = p_account_id AND h.expires_at > now();
    chg := 0;
    IF p_billable THEN
        chg := LEAST(GREATEST(p_duration_ms, 0), GREATEST(bal - held, 0));
    END IF;
    IF chg > 0 THEN
        INSERT INTO ledger (account_id, amount, kind, ref) VALUES (p_account_id, -chg, 'charge', p_run_id);
        UPDATE accounts SET balance = balance - chg WHERE id = p_account_id;
    END IF;
    INSERT INTO runs (id, account_id, key_id, language, termination, exit_code, duration_ms, queue_ms, credits_charged)
        VALUES (p_run_id, p_account_id, p_key_id, p_language, p_termination, p_exit_code, p_duration_ms, p_queue_ms, chg);
    body := p_response || jsonb_build_object('creditsCharged', chg);
    IF p_idem_key IS NOT NULL THEN
        -- Only the claim this run holds: a claim taken over by a retry is the retry's.
        UPDATE idempotency i SET state = 'done', status_code = 200, response = body,
               lease_expires_at = NULL
            WHERE i.account_id = p_account_id AND i.key = p_idem_key AND i.run_id = p_run_id;
    END IF;
    RETURN QUERY SELECT chg, bal - chg - held, body, true;
END $$;

CREATE FUNCTION cinch_abort_run(p_run_id text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM holds h WHERE h.run_id = p_run_id;
    DELETE FROM idempotency i WHERE i.run_id = p_run_id AND i.state = 'running';
END $$;
