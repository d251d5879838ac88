/**
 * Errors thrown for failed requests. All extend {@link CinchError}:
 *
 * | HTTP     | Error                                              |
 * | -------- | -------------------------------------------------- |
 * | 400, 413 | {@link BadRequestError}                            |
 * | 401      | {@link AuthenticationError}                        |
 * | 402      | {@link InsufficientCreditsError}                   |
 * | 409      | {@link ConflictError} (a {@link BadRequestError})  |
 * | 429      | {@link RateLimitError}                             |
 * | 503      | {@link ServiceUnavailableError}                    |
 * | other    | {@link CinchError}                                 |
 * | no reply | {@link NetworkError} / {@link RequestTimeoutError} |
 *
 * A program that exits non-zero is a result, never an error.
 * @module
 */
/** Details attached to a {@link CinchError}. */
export interface CinchErrorOptions {
    /** HTTP status, or `null` when no response was received. */
    status?: number | null;
    /** The server's `X-Request-Id`. */
    requestId?: string | null;
    /** The underlying error, if any. */
    cause?: unknown;
}
/** Base class of every error thrown for a failed request. */
export declare class CinchError extends Error {
    name: string;
    /** HTTP status, or `null` when no response was received. */
    readonly status: number | null;
    /** The server's `X-Request-Id`, useful in support requests. */
    readonly requestId: string | null;
    constructor(message: string, options?: CinchErrorOptions);
}
/** No HTTP response was received (connection refused, reset, DNS failure). */
export declare class NetworkError extends CinchError {
    name: string;
}
/**
 * The server did not answer within `timeoutMs`. The run may still have
 * completed; it is not retried automatically, but retrying with the same
 * `idempotencyKey` is safe.
 */
export declare class RequestTimeoutError extends NetworkError {
    name: string;
}
/** The request was invalid (HTTP 400) or the code too large (HTTP 413). */
export declare class BadRequestError extends CinchError {
    name: string;
}
/** The idempotency key was already used with a different body (HTTP 409). */
export declare class ConflictError extends BadRequestError {
    name: string;
}
/** The API key is missing, malformed or revoked (HTTP 401). */
export declare class AuthenticationError extends CinchError {
    name: string;
}
/** The account has no credits left (HTTP 402). */
export declare class InsufficientCreditsError extends CinchError {
    name: string;
}
/** Details of an error that carries a `Retry-After` hint. */
export interface RetryAfterErrorOptions extends CinchErrorOptions {
    /** Seconds the server asked the client to wait. */
    retryAfter?: number | null;
}
/** Too many requests for this API key (HTTP 429). Retried automatically. */
export declare class RateLimitError extends CinchError {
    name: string;
    /** Seconds the server asked the client to wait, if it said. */
    readonly retryAfter: number | null;
    constructor(message: string, options?: RetryAfterErrorOptions);
}
/** No sandbox capacity right now (HTTP 503). Retried automatically. */
export declare class ServiceUnavailableError extends CinchError {
    name: string;
    /** Seconds the server asked the client to wait, if it said. */
    readonly retryAfter: number | null;
    constructor(message: string, options?: RetryAfterErrorOptions);
}
