import { CinchError, NetworkError, RequestTimeoutError } from "./errors.js";
import { EVENT_STREAM, EventReader, parseResponse, prepareRun, streamEvent, } from "./http.js";
import { isRetryable, retryDelayMs, sleep } from "./retry.js";
/**
 * The hosted service's API root, used when neither `baseUrl` nor
 * `CINCH_BASE_URL` is given. Self-hosting? Set one of them, or your key is
 * sent here.
 */
export const DEFAULT_BASE_URL = "https://api.cinch.codes";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_RETRIES = 2;
/**
 * Runs code in Cinch sandboxes over HTTP, with `fetch`.
 *
 * ```ts
 * const box = new Sandbox(); // key from CINCH_API_KEY
 * const result = await box.run("print(2 + 2)");
 * result.stdout; // "4\n"
 * ```
 */
export class Sandbox {
    baseUrl;
    timeoutMs;
    maxRetries;
    #apiKey;
    /**
     * @throws {Error} In a browser: API keys must stay server-side, and the Cinch
     *   API sends no CORS headers, so a page could not call it anyway.
     * @throws {TypeError} If no API key is given or found in the environment, or the
     *   base URL is not an http(s) URL.
     */
    constructor(options = {}) {
        if (isBrowser()) {
            throw new Error("Cinch Sandbox does not run in a browser: API keys must stay server-side " +
                "(and the Cinch API sends no CORS headers). Call Cinch from your backend.");
        }
        const env = readEnv();
        const apiKey = options.apiKey || env.CINCH_API_KEY;
        if (!apiKey) {
            throw new TypeError("apiKey is required (pass it or set CINCH_API_KEY)");
        }
        const maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
        if (!Number.isInteger(maxRetries) || maxRetries < 0) {
            throw new TypeError("maxRetries must be a non-negative integer");
        }
        const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
        if (!(timeoutMs > 0))
            throw new TypeError("timeoutMs must be a positive number");
        const baseUrl = (options.baseUrl || env.CINCH_BASE_URL || DEFAULT_BASE_URL).replace(/\/+$/, "");
        if (!isHttpUrl(baseUrl)) {
            throw new TypeError(`baseUrl must be an http(s) URL, got ${JSON.stringify(baseUrl)}`);
        }
        this.#apiKey = apiKey;
        this.baseUrl = baseUrl;
        this.timeoutMs = timeoutMs;
        this.maxRetries = maxRetries;
    }
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
    async run(code, options = {}) {
        const request = this.#prepare(code, options, false);
        for (let attempt = 0;; attempt++) {
            try {
                return await this.#attempt(request, options.signal);
            }
            catch (error) {
                if (attempt >= this.maxRetries || !isRetryable(error))
                    throw error;
                await sleep(retryDelayMs(attempt, error), options.signal);
            }
        }
    }
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
    async *stream(code, options = {}) {
        const request = this.#prepare(code, options, true);
        const signal = options.signal;
        for (let attempt = 0;; attempt++) {
            const controller = new AbortController();
            let timedOut = false;
            let timer;
            const arm = () => {
                clearTimeout(timer);
                timer = setTimeout(() => {
                    timedOut = true;
                    controller.abort();
                }, this.timeoutMs);
            };
            const onAbort = () => controller.abort(signal?.reason);
            signal?.addEventListener("abort", onAbort, { once: true });
            let began = false;
            try {
                signal?.throwIfAborted();
                arm();
                const response = await fetch(request.url, {
                    method: "POST",
                    headers: request.headers,
                    body: request.body,
                    signal: controller.signal,
                });
                const type = response.headers.get("content-type") ?? "";
                if (!response.ok || !type.startsWith(EVENT_STREAM) || !response.body) {
                    // An error before the run started, or a server that does not stream.
                    const text = await response.text();
                    yield { type: "result", result: parseResponse(response.status, response.headers, text) };
                    return;
                }
                began = true;
                const reader = response.body.getReader();
                const decoder = new TextDecoder();
                const events = new EventReader();
                for (;;) {
                    const { done, value } = await reader.read();
                    if (done)
                        break;
                    arm();
                    for (const [name, data] of events.feed(decoder.decode(value, { stream: true }))) {
                        const event = streamEvent(name, data, response.status, response.headers);
                        if (event === null)
                            continue;
                        yield event;
                        if (event.type === "result")
                            return;
                    }
                }
                throw new CinchError("the stream ended without a result", {
                    status: response.status,
                    requestId: response.headers.get("x-request-id"),
                });
            }
            catch (error) {
                const failure = fetchFailure(error, timedOut, this.timeoutMs, signal);
                if (began || attempt >= this.maxRetries || !isRetryable(failure))
                    throw failure;
                await sleep(retryDelayMs(attempt, failure), signal);
            }
            finally {
                clearTimeout(timer);
                signal?.removeEventListener("abort", onAbort);
                controller.abort(); // left early: hang up, which stops the run
            }
        }
    }
    /** The public settings; the API key is a private field and never serialised. */
    toJSON() {
        return { baseUrl: this.baseUrl, timeoutMs: this.timeoutMs, maxRetries: this.maxRetries };
    }
    #prepare(code, options, stream) {
        return prepareRun({
            baseUrl: this.baseUrl,
            apiKey: this.#apiKey,
            code,
            language: options.language ?? "python",
            stdin: options.stdin,
            idempotencyKey: options.idempotencyKey,
            stream,
            files: options.files,
            args: options.args,
            env: options.env,
            timeoutMs: options.timeoutMs,
            maxCredits: options.maxCredits,
        });
    }
    async #attempt(request, signal) {
        signal?.throwIfAborted();
        const controller = new AbortController();
        let timedOut = false;
        const timer = setTimeout(() => {
            timedOut = true;
            controller.abort();
        }, this.timeoutMs);
        const onAbort = () => controller.abort(signal?.reason);
        signal?.addEventListener("abort", onAbort, { once: true });
        try {
            const response = await fetch(request.url, {
                method: "POST",
                headers: request.headers,
                body: request.body,
                signal: controller.signal,
            });
            const text = await response.text();
            return parseResponse(response.status, response.headers, text);
        }
        catch (error) {
            if (error instanceof CinchError)
                throw error; // an HTTP error status, already mapped
            if (timedOut) {
                throw new RequestTimeoutError(`request timed out after ${this.timeoutMs} ms`, {
                    cause: error,
                });
            }
            if (signal?.aborted)
                throw signal.reason;
            if (error instanceof TypeError) {
                throw new NetworkError(`network error: ${describe(error)}`, { cause: error });
            }
            throw error;
        }
        finally {
            clearTimeout(timer);
            signal?.removeEventListener("abort", onAbort);
        }
    }
}
/** A failure of `fetch` or of reading its body, as the SDK reports it. */
function fetchFailure(error, timedOut, timeoutMs, signal) {
    if (error instanceof CinchError)
        return error;
    if (timedOut) {
        return new RequestTimeoutError(`request timed out after ${timeoutMs} ms`, { cause: error });
    }
    if (signal?.aborted)
        return signal.reason;
    if (error instanceof TypeError) {
        return new NetworkError(`network error: ${describe(error)}`, { cause: error });
    }
    return error;
}
function isBrowser() {
    return typeof window !== "undefined" && typeof document !== "undefined";
}
function isHttpUrl(value) {
    try {
        const { protocol, host } = new URL(value);
        return (protocol === "http:" || protocol === "https:") && host !== "";
    }
    catch {
        return false;
    }
}
function readEnv() {
    const proc = globalThis.process;
    return proc?.env ?? {};
}
/** The most specific message of a fetch failure (Node puts it in `cause`). */
function describe(error) {
    const cause = error.cause;
    if (cause instanceof Error && cause.message)
        return cause.message;
    return error.message;
}
