-- Settle charges the run's exact duration whenever the account can pay it.
--
-- 001 capped the charge at the run's own hold.  The hold is extended every half
-- second, after the fact, so a run that ended just past its hold (a 501 ms run on
-- a 500-credit hold, its first extension still in flight) was charged less than
-- its durationMs although the account had credits to spare.  Now the charge is
-- the duration, capped by what the account has that no other run holds: still
-- never below zero, never eating into another run's hold.
CREATE OR REPLACE FUNCTION cinch_settle(p_hold_id bigint, p_account_id bigint, p_key_id bigint,
                             p_run_id text, p_language text, p_termination text,
                             p_exit_code integer, p_duration_ms integer, p_queue_ms integer,
                             p_billable boolean)
RETURNS TABLE (charged bigint, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    chg bigint;
    bal bigint;
    held bigint;
BEGIN
    SELECT a.balance INTO bal FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    DELETE FROM holds h WHERE h.id = p_hold_id;
    -- What other runs hold is theirs; the rest of the balance may pay for this one.
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
    RETURN QUERY SELECT chg, bal - chg - held;
END $$;
