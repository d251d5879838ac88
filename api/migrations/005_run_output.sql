-- The head of each run's output, for the dashboard's run page only (never logged).
-- At most CINCH_KEPT_OUTPUT_BYTES of stdout and of stderr each; 0 keeps nothing.
-- It goes with its run: deleting an account's runs deletes their output.
CREATE TABLE run_output (
    run_id     text PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    stdout     text NOT NULL,
    stderr     text NOT NULL,
    cut        boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
