-- Per-key concurrency across API replicas (many hosts, SCALE-OUT.md section 4).
--
-- Each replica's in-memory limiter only sees its own requests; N replicas behind a
-- load balancer would allow N times CINCH_MAX_CONCURRENT_PER_KEY.  A run's hold now
-- names its key, and cinch_begin_run counts the key's live holds under the
-- account's row lock (which every money move of the account already takes), so
-- all replicas together allow at most p_max_running.  Same round trip as before.
ALTER TABLE holds ADD COLUMN key_id bigint;
CREATE INDEX holds_key ON holds(key_id) WHERE key_id IS NOT NULL;

DROP FUNCTION cinch_begin_run(bytea, text, text, bigint, integer, text, bytea, integer,
                              integer, integer);

CREATE FUNCTION cinch_begin_run(
    p_key_hash bytea, p_run_id text, p_instance text, p_max_hold bigint, p_hold_ttl_s integer,
    p_idem_key text, p_body_hash bytea, p_idem_ttl_s integer, p_lease_s integer,
    p_dead_after_s integer, p_max_running integer DEFAULT NULL)
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

    -- The key's runs in flight on every replica: its live holds, but not those of
    -- an instance known to be dead or stopped (they only wait for the reaper).
    IF p_max_running IS NOT NULL AND (
        SELECT count(*) FROM holds h
        WHERE h.key_id = k.id AND h.expires_at > now()
          AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = h.instance_id
                          AND (i.stopped_at IS NOT NULL
                               OR i.seen_at < now() - make_interval(secs => p_dead_after_s)))
    ) >= p_max_running THEN
        RETURN QUERY SELECT 'limited'::text, k.account_id, k.id, NULL::bigint,
            0::bigint, bal - held, NULL::integer, NULL::jsonb;
        RETURN;
    END IF;

    IF bal - held <= 0 THEN
        RETURN QUERY SELECT 'no_credits'::text, k.account_id, k.id, NULL::bigint,
            0::bigint, bal - held, NULL::integer, NULL::jsonb;
        RETURN;
    END IF;
    amt := LEAST(bal - held, p_max_hold);
    INSERT INTO holds (account_id, amount, instance_id, expires_at, run_id, key_id)
        VALUES (k.account_id, amt, p_instance, now() + make_interval(secs => p_hold_ttl_s),
                p_run_id, k.id)
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
