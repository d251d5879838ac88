/** Languages the server accepts; other strings are passed through unchanged. */
export type Language =
  | "python"
  | "python3"
  | "javascript"
  | "js"
  | "node"
  | (string & {});

/** Why a run ended. */
export type Termination =
  | "exited"
  | "signal"
  | "timeout"
  | "oom"
  | "output_limit"
  | "credit_limit"
  | "sandbox_error";

/** Options of the {@link Sandbox} constructor. */
export interface SandboxOptions {
  /** A `cinch_live_...` key. Defaults to `process.env.CINCH_API_KEY` where `process` exists. */
  apiKey?: string;
  /** The API root. Defaults to `process.env.CINCH_BASE_URL`, then `https://api.cinch.codes`. */
  baseUrl?: string;
  /** Milliseconds to wait for the server on each attempt. Default 30000. */
  timeoutMs?: number;
  /** Extra attempts after HTTP 429, HTTP 503 or a network failure. Default 2; 0 disables. */
  maxRetries?: number;
  /**
   * Allow construction in a web browser. Off by default because an API key
   * shipped to a browser is public; keep keys server-side.
   */
  allowBrowser?: boolean;
}

/** Options of {@link Sandbox.run}. */
export interface RunOptions {
  /** Default `"python"`. */
  language?: Language;
  /** Text fed to the program's standard input. */
  stdin?: string;
  /**
   * Makes the run idempotent for 24 hours: the same key and body return the
   * stored result and are charged once. A random key is generated when
   * omitted, and reused across this call's retries.
   */
  idempotencyKey?: string;
  /** Aborts the run (and any pending retry); the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The outcome of one run. Fields the server did not send are `null`. */
export interface RunResult {
  stdout: string;
  stderr: string;
  /** The exit status, or `null` if the process never exited. */
  exitCode: number | null;
  timedOut: boolean;
  durationMs: number;
  termination: Termination | null;
  /** Name of the signal that killed the process, if any. */
  signal: string | null;
  /** Whether stdout/stderr were cut at the output limit. */
  truncated: boolean;
  queueMs: number | null;
  creditsCharged: number | null;
  /** The account balance after this run (`X-Credits-Remaining`). */
  creditsRemaining: number | null;
  /** The server's `X-Request-Id`. */
  requestId: string | null;
}
