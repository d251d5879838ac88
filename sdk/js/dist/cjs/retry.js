"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.MAX_RETRY_AFTER_MS = exports.MAX_BACKOFF_MS = exports.BASE_DELAY_MS = void 0;
exports.parseRetryAfter = parseRetryAfter;
exports.isRetryable = isRetryable;
exports.retryDelayMs = retryDelayMs;
exports.sleep = sleep;
/**
 * Retry policy: HTTP 429, HTTP 503 and network failures are retried; timeouts
 * are not (the code may still be running). Every attempt of a run carries the
 * same Idempotency-Key, so a retry is charged once.
 * @internal
 * @module
 */
const errors_js_1 = require("./errors.js");
/** First back-off delay; doubled on every further attempt. */
exports.BASE_DELAY_MS = 500;
/** Upper bound of the exponential back-off. */
exports.MAX_BACKOFF_MS = 8_000;
/** Longest Retry-After the client honours. */
exports.MAX_RETRY_AFTER_MS = 30_000;
/** Parses a Retry-After header (seconds or HTTP date) into seconds, or `null`. */
function parseRetryAfter(value) {
    if (value === null || value.trim() === "")
        return null;
    const trimmed = value.trim();
    let seconds = Number(trimmed);
    if (Number.isNaN(seconds)) {
        const when = Date.parse(trimmed);
        if (Number.isNaN(when))
            return null;
        seconds = (when - Date.now()) / 1000;
    }
    return Math.max(0, seconds);
}
/** Whether a failed attempt may be retried. */
function isRetryable(error) {
    if (error instanceof errors_js_1.RateLimitError || error instanceof errors_js_1.ServiceUnavailableError)
        return true;
    return error instanceof errors_js_1.NetworkError && !(error instanceof errors_js_1.RequestTimeoutError);
}
/**
 * Delay before the next attempt: the server's Retry-After (capped), or else
 * exponential back-off with equal jitter (half fixed, half random).
 */
function retryDelayMs(attempt, error, random = Math.random) {
    if ((error instanceof errors_js_1.RateLimitError || error instanceof errors_js_1.ServiceUnavailableError) &&
        error.retryAfter !== null) {
        return Math.min(error.retryAfter * 1000, exports.MAX_RETRY_AFTER_MS);
    }
    const backoff = Math.min(exports.MAX_BACKOFF_MS, exports.BASE_DELAY_MS * 2 ** attempt);
    return backoff / 2 + (random() * backoff) / 2;
}
/** Resolves after `ms`, or rejects with the signal's reason when it aborts. */
function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
        if (signal?.aborted) {
            reject(signal.reason);
            return;
        }
        const onAbort = () => {
            clearTimeout(timer);
            reject(signal?.reason);
        };
        const timer = setTimeout(() => {
            signal?.removeEventListener("abort", onAbort);
            resolve();
        }, ms);
        signal?.addEventListener("abort", onAbort, { once: true });
    });
}
