/**
 * The language names the server accepts (it also accepts them in any case).
 * `python`, `python3` and `py` run Python; `javascript`, `js`, `node` and
 * `nodejs` run Node.js.
 */
export type Language = "python" | "python3" | "py" | "javascript" | "js" | "node" | "nodejs";

/** Why a run ended. */
export type Termination =
  | "exited"
  | "signal"
  | "timeout"
  | "oom"
  | "output_limit"
  | "credit_limit"
  | "sandbox_error"
  /** A streamed run whose client stopped reading: stopped and charged for what it used. */
  | "cancelled";

/** Options of the {@link Sandbox} constructor. */
export interface SandboxOptions {
  /** A `cinch_live_...` key. Defaults to `process.env.CINCH_API_KEY` where `process` exists. */
  apiKey?: string;
  /**
   * The API root, e.g. `http://127.0.0.1:8080` for a server of your own.
   * Defaults to `process.env.CINCH_BASE_URL`, and without it to the hosted
   * service, `https://api.cinch.codes`: a self-hosted setup that sets neither
   * sends its key there.
   */
  baseUrl?: string;
  /** Milliseconds to wait for the server on each attempt. Default 30000. */
  timeoutMs?: number;
  /** Extra attempts after HTTP 429, HTTP 503 or a network failure. Default 2; 0 disables. */
  maxRetries?: number;
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

/** The outcome of one run. Optional fields the server did not send are `null`. */
export interface RunResult {
  stdout: string;
  stderr: string;
  /**
   * The program's exit status; 128+n when it died of signal n; 137 when Cinch
   * stopped it (timeout, output or credit limit, out of memory); -1 for a
   * sandbox failure of the server's.
   */
  exitCode: number;
  timedOut: boolean;
  durationMs: number;
  /** Why the run ended. */
  termination: Termination;
  /** Name of the signal that killed the process, if any. */
  signal: string | null;
  /** Whether stdout/stderr were cut at the output limit. */
  truncated: boolean;
  queueMs: number | null;
  creditsCharged: number | null;
  /**
   * The account balance after this run (`X-Credits-Remaining`); `null` for a
   * streamed run, whose headers are sent before it runs.
   */
  creditsRemaining: number | null;
  /** The server's `X-Request-Id`. */
  requestId: string | null;
}

/**
 * What {@link Sandbox.stream} yields: output as the program writes it, then
 * one `result` (with the whole output again) as the last event.
 */
export type StreamEvent =
  | { type: "stdout"; text: string }
  | { type: "stderr"; text: string }
  | { type: "result"; result: RunResult };
