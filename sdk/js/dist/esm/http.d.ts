import type { RunResult } from "./types.js";
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
}
/** Validates the arguments of a run and builds its request. */
export declare function prepareRun(input: RunRequestInput): RunRequest;
/** Turns a `/run` response into a result, or throws the matching error. */
export declare function parseResponse(status: number, headers: Headers, text: string): RunResult;
/** A random UUID v4, from Web Crypto where available. */
export declare function randomUUID(): string;
