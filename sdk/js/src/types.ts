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
  /** The run would have cost more than its `maxCredits`. */
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

/**
 * A file written into the program's working directory before it starts.
 *
 * ```ts
 * { path: "data.csv", content: csvText }              // sent as UTF-8
 * { path: "logo.png", content: pngBytes }             // a Uint8Array (or Buffer): sent as base64
 * { path: "logo.png", content: b64, encoding: "base64" } // already base64: sent as it is
 * ```
 */
export interface InputFile {
  /**
   * Where the program finds it: relative to its working directory and
   * `/`-separated, e.g. `"data/in.csv"`. The server refuses absolute paths,
   * `..` segments, NUL, paths over 255 bytes and duplicates (HTTP 400).
   */
  path: string;
  /** Text, sent as UTF-8, or bytes, sent as base64. */
  content: string | Uint8Array;
  /**
   * Leave it out to choose from the content's type. `"base64"` with a string
   * says the string is base64 already; bytes are always sent as base64.
   */
  encoding?: "utf-8" | "base64";
}

/**
 * What {@link RunOptions.files} accepts: `{ [path]: content }`, or a list of
 * {@link InputFile}. String content is sent as UTF-8, `Uint8Array` as base64.
 */
export type InputFiles = Record<string, string | Uint8Array> | readonly InputFile[];

/** A regular file the program left under `out/` in its working directory. */
export interface OutputFile {
  /**
   * Relative to the working directory, e.g. `"out/chart.png"`. It comes from
   * the sandbox: before using it as a path on your side, refuse absolute
   * paths and `..` segments.
   */
  path: string;
  /** Size in bytes, known even when the content was left out. */
  size: number;
  /** The server's guess, e.g. `"image/png"`. */
  mimeType: string | null;
  /**
   * The file's bytes, or `null` if it did not fit the output-files limit
   * (then {@link RunResult.filesTruncated} is true).
   */
  content: Uint8Array | null;
}

/** Options of {@link Sandbox.run} and {@link Sandbox.stream}. */
export interface RunOptions {
  /** Default `"python"`. */
  language?: Language;
  /** Text fed to the program's standard input. */
  stdin?: string;
  /**
   * Files written into the program's working directory before it starts. By
   * default the server takes at most 64 files and 10 MiB (decoded) in all:
   * over that, HTTP 413.
   */
  files?: InputFiles;
  /**
   * Command-line arguments: `sys.argv[1:]` in Python, `process.argv.slice(2)`
   * in JavaScript. At most 64, each at most 4 KiB.
   */
  args?: readonly string[];
  /**
   * Extra environment variables: names `[A-Za-z_][A-Za-z0-9_]*`, at most 64
   * and 64 KiB in all. `PATH`, `HOME`, `LANG`, `PYTHON*`, `NODE_*` and `LD_*`
   * are refused (HTTP 400).
   */
  env?: Record<string, string>;
  /**
   * A wall-clock limit for this run on the server, in milliseconds, from 1 to
   * the server's own limit (which it can only lower; above it, HTTP 400). A
   * run that hits it has `timedOut` set. Not to be confused with the
   * constructor's `timeoutMs`, how long the client waits for an answer: keep
   * that one above this.
   */
  timeoutMs?: number;
  /**
   * The most this run may cost, a positive integer: it is stopped with
   * `termination: "credit_limit"` before it would cost more, and charged at
   * most this.
   */
  maxCredits?: number;
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
  /**
   * Every regular file the program left under `out/`; empty when there were
   * none (or the server predates output files).
   */
  files: OutputFile[];
  /** Whether some of `files` came without content, over the output-files limit. */
  filesTruncated: boolean;
}

/**
 * What {@link Sandbox.stream} yields: output as the program writes it, then
 * one `result` (with the whole output again) as the last event.
 */
export type StreamEvent =
  | { type: "stdout"; text: string }
  | { type: "stderr"; text: string }
  | { type: "result"; result: RunResult };
