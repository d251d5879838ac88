-- Which sandbox served each run: its container id (random, 256 bits, so unique
-- across hosts), NULL when none was reported.  No sandbox serves two runs (each
-- is destroyed after its run); with this the drills check it in SQL:
--   SELECT sandbox_id FROM runs WHERE sandbox_id IS NOT NULL
--       GROUP BY sandbox_id HAVING count(*) > 1
-- Not a unique constraint: a violation would then fail the settle of a run
-- whose answer is already on its way, and lose its charge.
ALTER TABLE runs ADD COLUMN sandbox_id text;

DROP FUNCTION cinch_finish_run(text, bigint, bigint, bigint, text, text, integer, integer,
                               integer, boolean, text, jsonb);

CREATE FUNCTION cinch_finish_run(
    p_run_id text, p_hold_id bigint, p_account_id bigint, p_key_id bigint,
    p_language text, p_termination text, p_exit_code integer, p_duration_ms integer,
    p_queue_ms integer, p_billable boolean, p_idem_key text, p_response jsonb,
    p_sandbox_id text DEFAULT NULL)
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
    INSERT INTO runs (id, account_id, key_id, language, termination, exit_code, duration_ms, queue_ms,
                      credits_charged, sandbox_id)
        VALUES (p_run_id, p_account_id, p_key_id, p_language, p_termination, p_exit_code, p_duration_ms,
                p_queue_ms, chg, NULLIF(p_sandbox_id, ''));
    body := p_response || jsonb_build_object('creditsCharged', chg);
    IF p_idem_key IS NOT NULL THEN
        -- Only the claim this run holds: a claim taken over by a retry is the retry's.
        UPDATE idempotency i SET state = 'done', status_code = 200, response = body,
               lease_expires_at = NULL
            WHERE i.account_id = p_account_id AND i.key = p_idem_key AND i.run_id = p_run_id;
    END IF;
    RETURN QUERY SELECT chg, bal - chg - held, body, true;
END $$;
