import type { InputFiles, RunResult, StreamEvent } from "./types.js";
/** A prepared request, sent unchanged on every attempt. */
export interface RunRequest {
    url: string;
    headers: Record<string, string>;
    body: string;
}
export interface RunRequestInput {
    baseUrl: string;
    apiKey: string;
    code: string;
    language: string;
    stdin: string | undefined;
    idempotencyKey: string | undefined;
    /** Ask for server-sent events instead of one JSON answer. */
    stream?: boolean;
    files?: InputFiles | undefined;
    args?: readonly string[] | undefined;
    env?: Record<string, string> | undefined;
    timeoutMs?: number | undefined;
    maxCredits?: number | undefined;
}
export declare const EVENT_STREAM = "text/event-stream";
/**
 * Validates the arguments of a run and builds its request. Only types are
 * checked: the limits (sizes, counts, paths, names) are the server's, and it
 * names what it refuses. Options left `undefined` are not sent, so a server
 * that predates them sees the body it always did.
 */
export declare function prepareRun(input: RunRequestInput): RunRequest;
/** Turns a `/run` response into a result, or throws the matching error. */
export declare function parseResponse(status: number, headers: Headers, text: string): RunResult;
/**
 * Server-sent events from the body's text, fed in pieces as they arrive. Lines
 * end at LF, CR or CRLF only.
 */
export declare class EventReader {
    #private;
    feed(text: string): Array<[string, string]>;
}
/**
 * One server-sent event of a streamed run as an SDK value; `null` for an event
 * this SDK does not know. Throws a {@link CinchError} for an `error` event.
 */
export declare function streamEvent(name: string, data: string, status: number, headers: Headers): StreamEvent | null;
/** A random UUID v4, from Web Crypto where available. */
export declare function randomUUID(): string;
