"use strict";
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
Object.defineProperty(exports, "__esModule", { value: true });
exports.ServiceUnavailableError = exports.RateLimitError = exports.InsufficientCreditsError = exports.AuthenticationError = exports.ConflictError = exports.BadRequestError = exports.RequestTimeoutError = exports.NetworkError = exports.CinchError = void 0;
exports.errorForStatus = errorForStatus;
/** Base class of every error thrown for a failed request. */
class CinchError extends Error {
    name = "CinchError";
    /** HTTP status, or `null` when no response was received. */
    status;
    /** The server's `X-Request-Id`, useful in support requests. */
    requestId;
    constructor(message, options = {}) {
        super(message, options.cause === undefined ? undefined : { cause: options.cause });
        this.status = options.status ?? null;
        this.requestId = options.requestId ?? null;
    }
}
exports.CinchError = CinchError;
/** No HTTP response was received (connection refused, reset, DNS failure). */
class NetworkError extends CinchError {
    name = "NetworkError";
}
exports.NetworkError = NetworkError;
/**
 * The server did not answer within `timeoutMs`. The run may still have
 * completed; it is not retried automatically, but retrying with the same
 * `idempotencyKey` is safe.
 */
class RequestTimeoutError extends NetworkError {
    name = "RequestTimeoutError";
}
exports.RequestTimeoutError = RequestTimeoutError;
/** The request was invalid (HTTP 400) or the code too large (HTTP 413). */
class BadRequestError extends CinchError {
    name = "BadRequestError";
}
exports.BadRequestError = BadRequestError;
/** The idempotency key was already used with a different body (HTTP 409). */
class ConflictError extends BadRequestError {
    name = "ConflictError";
}
exports.ConflictError = ConflictError;
/** The API key is missing, malformed or revoked (HTTP 401). */
class AuthenticationError extends CinchError {
    name = "AuthenticationError";
}
exports.AuthenticationError = AuthenticationError;
/** The account has no credits left (HTTP 402). */
class InsufficientCreditsError extends CinchError {
    name = "InsufficientCreditsError";
}
exports.InsufficientCreditsError = InsufficientCreditsError;
/** Too many requests for this API key (HTTP 429). Retried automatically. */
class RateLimitError extends CinchError {
    name = "RateLimitError";
    /** Seconds the server asked the client to wait, if it said. */
    retryAfter;
    constructor(message, options = {}) {
        super(message, options);
        this.retryAfter = options.retryAfter ?? null;
    }
}
exports.RateLimitError = RateLimitError;
/** No sandbox capacity right now (HTTP 503). Retried automatically. */
class ServiceUnavailableError extends CinchError {
    name = "ServiceUnavailableError";
    /** Seconds the server asked the client to wait, if it said. */
    retryAfter;
    constructor(message, options = {}) {
        super(message, options);
        this.retryAfter = options.retryAfter ?? null;
    }
}
exports.ServiceUnavailableError = ServiceUnavailableError;
/**
 * Builds the error matching an HTTP error status.
 * @internal
 */
function errorForStatus(status, message, options) {
    const { requestId, retryAfter } = options;
    switch (status) {
        case 400:
        case 413:
            return new BadRequestError(message, { status, requestId });
        case 401:
            return new AuthenticationError(message, { status, requestId });
        case 402:
            return new InsufficientCreditsError(message, { status, requestId });
        case 409:
            return new ConflictError(message, { status, requestId });
        case 429:
            return new RateLimitError(message, { status, requestId, retryAfter });
        case 503:
            return new ServiceUnavailableError(message, { status, requestId, retryAfter });
        default:
            return new CinchError(message, { status, requestId });
    }
}
