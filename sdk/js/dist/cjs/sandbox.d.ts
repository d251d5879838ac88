import type { RunOptions, RunResult, SandboxOptions, StreamEvent } from "./types.js";
/**
 * The hosted service's API root, used when neither `baseUrl` nor
 * `CINCH_BASE_URL` is given. Self-hosting? Set one of them, or your key is
 * sent here.
 */
export declare const DEFAULT_BASE_URL = "https://api.cinch.codes";
/**
 * Runs code in Cinch sandboxes over HTTP, with `fetch`.
 *
 * ```ts
 * const box = new Sandbox(); // key from CINCH_API_KEY
 * const result = await box.run("print(2 + 2)");
 * result.stdout; // "4\n"
 * ```
 */
export declare class Sandbox {
    #private;
    readonly baseUrl: string;
    readonly timeoutMs: number;
    readonly maxRetries: number;
    /**
     * @throws {Error} In a browser: API keys must stay server-side, and the Cinch
     *   API sends no CORS headers, so a page could not call it anyway.
     * @throws {TypeError} If no API key is given or found in the environment, or the
     *   base URL is not an http(s) URL.
     */
    constructor(options?: SandboxOptions);
    /**
     * Runs `code` in a fresh sandbox and resolves with its output.
     *
     * A program that fails (non-zero exit, timeout, killed) still resolves;
     * only a failed request rejects, with a {@link CinchError} subclass.
     * HTTP 429, HTTP 503 and network failures are retried up to `maxRetries`
     * times with the same Idempotency-Key.
     *
     * ```ts
     * const { stdout, files } = await box.run(code, {
     *   files: { "data.csv": csvText, "logo.png": pngBytes }, // text as UTF-8, bytes as base64
     *   args: ["--rows", "10"],
     *   env: { MODE: "fast" },
     *   timeoutMs: 5_000,
     *   maxCredits: 100,
     * });
     * files[0]; // { path: "out/chart.png", size, mimeType: "image/png", content: Uint8Array }
     * ```
     *
     * Wrong option types throw a `TypeError` before anything is sent; the server
     * enforces the limits, answering HTTP 400 (a bad path, encoding, variable or
     * limit, naming it) or 413 (files too large), both a `BadRequestError`.
     */
    run(code: string, options?: RunOptions): Promise<RunResult>;
    /**
     * Runs `code` like {@link Sandbox.run}, yielding its output as it is written.
     *
     * ```ts
     * for await (const event of box.stream("for i in range(3): print(i)")) {
     *   if (event.type === "result") console.log("exit", event.result.exitCode);
     *   else process.stdout.write(event.text);
     * }
     * ```
     *
     * Yields `stdout` and `stderr` events while the program runs, then one
     * `result`, the last. Leaving the loop early (or aborting `signal`) hangs
     * up: the server stops the run and charges what it used. Failures before
     * the run starts are retried as in `run`; once the stream has begun, nothing
     * is. `timeoutMs` bounds the wait for the answer and each silence after it.
     * The options are those of `run`; the output files come in the `result`.
     */
    stream(code: string, options?: RunOptions): AsyncGenerator<StreamEvent, void, undefined>;
    /** The public settings; the API key is a private field and never serialised. */
    toJSON(): Record<string, unknown>;
}
