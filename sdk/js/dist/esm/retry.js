/**
 * Retry policy: HTTP 429, HTTP 503 and network failures are retried; timeouts
 * are not (the code may still be running). Every attempt of a run carries the
 * same Idempotency-Key, so a retry is charged once.
 * @internal
 * @module
 */
import { NetworkError, RateLimitError, RequestTimeoutError, ServiceUnavailableError, } from "./errors.js";
/** First back-off delay; doubled on every further attempt. */
export const BASE_DELAY_MS = 500;
/** Upper bound of the exponential back-off. */
export const MAX_BACKOFF_MS = 8_000;
/** Longest Retry-After the client honours. */
export const MAX_RETRY_AFTER_MS = 30_000;
/** Parses a Retry-After header (seconds or HTTP date) into seconds, or `null`. */
export function parseRetryAfter(value) {
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
export function isRetryable(error) {
    if (error instanceof RateLimitError || error instanceof ServiceUnavailableError)
        return true;
    return error instanceof NetworkError && !(error instanceof RequestTimeoutError);
}
/**
 * Delay before the next attempt: the server's Retry-After (capped), or else
 * exponential back-off with equal jitter (half fixed, half random).
 */
export function retryDelayMs(attempt, error, random = Math.random) {
    if ((error instanceof RateLimitError || error instanceof ServiceUnavailableError) &&
        error.retryAfter !== null) {
        return Math.min(error.retryAfter * 1000, MAX_RETRY_AFTER_MS);
    }
    const backoff = Math.min(MAX_BACKOFF_MS, BASE_DELAY_MS * 2 ** attempt);
    return backoff / 2 + (random() * backoff) / 2;
}
/** Resolves after `ms`, or rejects with the signal's reason when it aborts. */
export function sleep(ms, signal) {
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
