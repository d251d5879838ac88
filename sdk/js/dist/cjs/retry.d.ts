/** First back-off delay; doubled on every further attempt. */
export declare const BASE_DELAY_MS = 500;
/** Upper bound of the exponential back-off. */
export declare const MAX_BACKOFF_MS = 8000;
/** Longest Retry-After the client honours. */
export declare const MAX_RETRY_AFTER_MS = 30000;
/** Parses a Retry-After header (seconds or HTTP date) into seconds, or `null`. */
export declare function parseRetryAfter(value: string | null): number | null;
/** Whether a failed attempt may be retried. */
export declare function isRetryable(error: unknown): error is CinchError;
/**
 * Delay before the next attempt: the server's Retry-After (capped), or else
 * exponential back-off with equal jitter (half fixed, half random).
 */
export declare function retryDelayMs(attempt: number, error: CinchError, random?: () => number): number;
/** Resolves after `ms`, or rejects with the signal's reason when it aborts. */
export declare function sleep(ms: number, signal?: AbortSignal): Promise<void>;
