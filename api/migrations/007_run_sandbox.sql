-- Which sandbox served each run: its container id (random, 256 bits, so unique
-- across hosts), NULL when none was reported.  No sandbox serves two runs (each
-- is destroyed after its run); with this the drills check it in SQL:
--   SELECT sandbox_id FROM runs WHERE sandbox_id IS NOT NULL
--       GROUP BY sandbox_id HAVING count(*) > 1
-- Not a unique constraint: a violation would then fail the settle of a run
-- whose answer is already on its way, and lose its charge.
ALTER TABLE runs ADD COLUMN sandbox_id text;

-- The settle stays migration 004's cinch_finish_run; this overload settles through
-- it and names the sandbox in the row it wrote, in the same call.  A replica still
-- on the 12-argument call (a rolling update) settles as before, with no sandbox id.
CREATE FUNCTION cinch_finish_run(
    p_run_id text, p_hold_id bigint, p_account_id bigint, p_key_id bigint,
    p_language text, p_termination text, p_exit_code integer, p_duration_ms integer,
    p_queue_ms integer, p_billable boolean, p_idem_key text, p_response jsonb,
    p_sandbox_id text)
RETURNS TABLE (charged bigint, available bigint, response jsonb, first boolean)
LANGUAGE plpgsql AS $$
DECLARE
    f record;
BEGIN
    SELECT * INTO f FROM cinch_finish_run(p_run_id, p_hold_id, p_account_id, p_key_id,
        p_language, p_termination, p_exit_code, p_duration_ms, p_queue_ms, p_billable,
        p_idem_key, p_response);
    IF f.first AND p_sandbox_id <> '' THEN
        UPDATE runs r SET sandbox_id = p_sandbox_id WHERE r.id = p_run_id;
    END IF;
    RETURN QUERY SELECT f.charged, f.available, f.response, f.first;
END $$;
