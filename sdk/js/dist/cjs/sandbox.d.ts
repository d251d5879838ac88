import type { RunOptions, RunResult, SandboxOptions } from "./types.js";
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
     */
    run(code: string, options?: RunOptions): Promise<RunResult>;
    /** The public settings; the API key is a private field and never serialised. */
    toJSON(): Record<string, unknown>;
}
