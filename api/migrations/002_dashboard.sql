-- The dashboard: log-in sessions, log-in attempts (for rate limiting) and payments.
-- Credits still move only through the ledger; a payment is credited at most once
-- because its ledger row carries ref 'stripe:<checkout session id>' or 'dev:<payment id>'
-- and ledger(kind, ref) is unique.

-- E-mail addresses are unique whatever their case (log-in looks them up by lower(email)).
CREATE UNIQUE INDEX accounts_email_lower ON accounts (lower(email));

-- Server-side sessions: the cookie holds a random token, the table only its SHA-256.
CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_account ON sessions(account_id);
CREATE INDEX sessions_expiry ON sessions(expires_at);

CREATE TABLE login_attempts (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL,          -- lower-cased as typed, whether or not it exists
    ip         text NOT NULL,
    succeeded  boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_email ON login_attempts(email, created_at);
CREATE INDEX login_attempts_ip ON login_attempts(ip, created_at);

-- One row per top-up started.  Stripe rows are created (pending) when the Checkout
-- session is made; only the verified webhook moves them to 'paid'.
CREATE TABLE payments (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts(id),
    provider     text NOT NULL CHECK (provider IN ('dev', 'stripe')),
    provider_ref text,                  -- the Checkout session id (cs_...) for Stripe
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),   -- asked for at the start
    currency     text NOT NULL DEFAULT 'usd',
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'paid', 'refused', 'failed', 'expired')),
    paid_cents   bigint,                -- amount_total of the event that credited it
    credits      bigint,                -- credits granted
    event_id     text,                  -- the event that credited (or refused) it
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_ref)
);
CREATE INDEX payments_account ON payments(account_id, id DESC);

-- Every webhook event handled, by id: a redelivered event is recognised and skipped.
CREATE TABLE payment_events (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    session_id  text,
    outcome     text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
