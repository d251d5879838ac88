/**
 * The official JavaScript/TypeScript SDK for Cinch: run untrusted code in
 * disposable sandboxes with one call.
 * @module
 */
export { DEFAULT_BASE_URL, Sandbox } from "./sandbox.js";
export { AuthenticationError, BadRequestError, CinchError, ConflictError, InsufficientCreditsError, NetworkError, RateLimitError, RequestTimeoutError, ServiceUnavailableError, } from "./errors.js";
export type { CinchErrorOptions, RetryAfterErrorOptions } from "./errors.js";
export type { InputFile, InputFiles, Language, OutputFile, RunOptions, RunResult, SandboxOptions, StreamEvent, Termination, } from "./types.js";
export { VERSION } from "./version.js";
