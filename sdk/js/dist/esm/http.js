/**
 * Transport-independent pieces of a `POST /run` exchange.
 * @internal
 * @module
 */
import { decodeBase64, encodeBase64, isBytes } from "./base64.js";
import { CinchError, errorForStatus } from "./errors.js";
import { parseRetryAfter } from "./retry.js";
import { VERSION } from "./version.js";
export const EVENT_STREAM = "text/event-stream";
/**
 * Validates the arguments of a run and builds its request. Only types are
 * checked: the limits (sizes, counts, paths, names) are the server's, and it
 * names what it refuses. Options left `undefined` are not sent, so a server
 * that predates them sees the body it always did.
 */
export function prepareRun(input) {
    const { baseUrl, apiKey, code, language, stdin } = input;
    if (typeof code !== "string" || code.length === 0) {
        throw new TypeError("code must be a non-empty string");
    }
    if (typeof language !== "string")
        throw new TypeError("language must be a string");
    if (stdin !== undefined && typeof stdin !== "string") {
        throw new TypeError("stdin must be a string");
    }
    const idempotencyKey = input.idempotencyKey ?? randomUUID();
    if (typeof idempotencyKey !== "string" || idempotencyKey.length === 0) {
        throw new TypeError("idempotencyKey must be a non-empty string");
    }
    const body = { code, language };
    if (stdin !== undefined)
        body.stdin = stdin;
    if (input.files !== undefined)
        body.files = filesToJson(input.files);
    if (input.args !== undefined)
        body.args = argsToJson(input.args);
    if (input.env !== undefined)
        body.env = envToJson(input.env);
    if (input.timeoutMs !== undefined)
        body.timeoutMs = integer("timeoutMs", input.timeoutMs);
    if (input.maxCredits !== undefined)
        body.maxCredits = integer("maxCredits", input.maxCredits);
    return {
        url: `${baseUrl}/run`,
        headers: {
            Authorization: `Bearer ${apiKey}`,
            "Content-Type": "application/json",
            Accept: input.stream ? EVENT_STREAM : "application/json",
            "User-Agent": `cinch-sdk-js/${VERSION}`,
            "Idempotency-Key": idempotencyKey,
        },
        body: JSON.stringify(body),
    };
}
const FILES_TYPE = "files must be an object of path to content, or an array of { path, content }";
function filesToJson(files) {
    if (Array.isArray(files))
        return files.map((file, index) => fileToJson(file, index));
    if (!isPlainObject(files))
        throw new TypeError(FILES_TYPE);
    return Object.entries(files).map(([path, content], index) => fileToJson({ path, content }, index));
}
function fileToJson(file, index) {
    if (!isObject(file))
        throw new TypeError(`files[${index}] must be { path, content }`);
    const { path, content, encoding } = file;
    if (typeof path !== "string")
        throw new TypeError(`files[${index}].path must be a string`);
    const name = JSON.stringify(path);
    if (typeof content === "string") {
        if (encoding !== undefined && encoding !== "utf-8" && encoding !== "base64") {
            throw new TypeError(`file ${name}: encoding must be "utf-8" or "base64"`);
        }
        return { path, content, encoding: encoding ?? "utf-8" };
    }
    if (isBytes(content)) {
        if (encoding !== undefined && encoding !== "base64") {
            throw new TypeError(`file ${name}: bytes are sent as base64; pass a string for utf-8 text`);
        }
        return { path, content: encodeBase64(content), encoding: "base64" };
    }
    throw new TypeError(`file ${name}: content must be a string or a Uint8Array`);
}
function argsToJson(args) {
    if (!Array.isArray(args))
        throw new TypeError("args must be an array of strings");
    args.forEach((arg, index) => {
        if (typeof arg !== "string")
            throw new TypeError(`args[${index}] must be a string`);
    });
    return [...args];
}
function envToJson(env) {
    if (!isPlainObject(env))
        throw new TypeError("env must be an object of names to strings");
    for (const [name, value] of Object.entries(env)) {
        if (typeof value !== "string") {
            throw new TypeError(`env[${JSON.stringify(name)}] must be a string`);
        }
    }
    return { ...env };
}
function integer(name, value) {
    if (typeof value !== "number" || !Number.isInteger(value)) {
        throw new TypeError(`${name} must be an integer`);
    }
    return value;
}
/** Turns a `/run` response into a result, or throws the matching error. */
export function parseResponse(status, headers, text) {
    const requestId = headers.get("x-request-id");
    const data = parseJson(text);
    if (status < 200 || status >= 300) {
        const message = isObject(data) && typeof data.error === "string" ? data.error : `HTTP ${status}`;
        throw errorForStatus(status, message, {
            requestId,
            retryAfter: parseRetryAfter(headers.get("retry-after")),
        });
    }
    if (!isObject(data)) {
        throw new CinchError("invalid response from server: expected a JSON object", {
            status,
            requestId,
        });
    }
    // Every 200 carries these two; without them the body is not a run result.
    const exitCode = toInt(data.exitCode);
    if (exitCode === null || typeof data.termination !== "string") {
        throw new CinchError("invalid response from server: no exitCode or termination", {
            status,
            requestId,
        });
    }
    return {
        stdout: typeof data.stdout === "string" ? data.stdout : "",
        stderr: typeof data.stderr === "string" ? data.stderr : "",
        exitCode,
        timedOut: data.timedOut === true,
        durationMs: toInt(data.durationMs) ?? 0,
        termination: data.termination,
        signal: typeof data.signal === "string" ? data.signal : null,
        truncated: data.truncated === true,
        queueMs: toInt(data.queueMs),
        creditsCharged: toInt(data.creditsCharged),
        creditsRemaining: toInt(headers.get("x-credits-remaining")),
        requestId,
        files: outputFiles(data.files, status, requestId),
        filesTruncated: data.filesTruncated === true,
    };
}
function outputFiles(value, status, requestId) {
    const invalid = (what) => new CinchError(`invalid response from server: ${what}`, { status, requestId });
    if (value === undefined || value === null)
        return []; // a server that predates output files
    if (!Array.isArray(value))
        throw invalid("'files' is not a list");
    return value.map((item) => {
        if (!isObject(item) || typeof item.path !== "string")
            throw invalid("a file without a path");
        const { path, mimeType } = item;
        let content = null;
        if (item.content !== undefined && item.content !== null) {
            content = typeof item.content === "string" ? decodeBase64(item.content) : null;
            if (content === null)
                throw invalid(`the content of ${JSON.stringify(path)} is not base64`);
        }
        return {
            path,
            size: toInt(item.size) ?? content?.length ?? 0,
            mimeType: typeof mimeType === "string" ? mimeType : null,
            content,
        };
    });
}
/**
 * Server-sent events from the body's text, fed in pieces as they arrive. Lines
 * end at LF, CR or CRLF only.
 */
export class EventReader {
    #buffer = "";
    #event = "";
    #data = [];
    feed(text) {
        this.#buffer += text;
        const events = [];
        for (;;) {
            const match = /\r\n|\r|\n/.exec(this.#buffer);
            // A CR at the very end may be the first half of a CRLF: wait for more.
            if (!match || (match[0] === "\r" && match.index === this.#buffer.length - 1))
                break;
            const line = this.#buffer.slice(0, match.index);
            this.#buffer = this.#buffer.slice(match.index + match[0].length);
            const event = this.#line(line);
            if (event)
                events.push(event);
        }
        return events;
    }
    #line(line) {
        if (line === "") {
            const event = this.#data.length
                ? [this.#event || "message", this.#data.join("\n")]
                : null;
            this.#event = "";
            this.#data = [];
            return event;
        }
        if (line.startsWith(":"))
            return null;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" "))
            value = value.slice(1);
        if (field === "event")
            this.#event = value;
        else if (field === "data")
            this.#data.push(value);
        return null;
    }
}
/**
 * One server-sent event of a streamed run as an SDK value; `null` for an event
 * this SDK does not know. Throws a {@link CinchError} for an `error` event.
 */
export function streamEvent(name, data, status, headers) {
    const requestId = headers.get("x-request-id");
    const payload = parseJson(data);
    if (!isObject(payload)) {
        throw new CinchError(`invalid ${JSON.stringify(name)} event from server`, {
            status,
            requestId,
        });
    }
    if (name === "stdout" || name === "stderr") {
        return { type: name, text: typeof payload.text === "string" ? payload.text : "" };
    }
    if (name === "result") {
        const result = parseResponse(status, headers, data);
        return { type: "result", result: { ...result, creditsRemaining: null } };
    }
    if (name === "error") {
        const message = typeof payload.error === "string" ? payload.error : "the run failed";
        throw new CinchError(message, { status, requestId });
    }
    return null;
}
/** A random UUID v4, from Web Crypto where available. */
export function randomUUID() {
    const webCrypto = globalThis.crypto;
    if (typeof webCrypto?.randomUUID === "function")
        return webCrypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (typeof webCrypto?.getRandomValues === "function") {
        webCrypto.getRandomValues(bytes);
    }
    else {
        for (let i = 0; i < bytes.length; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
function parseJson(text) {
    try {
        return JSON.parse(text);
    }
    catch {
        return undefined;
    }
}
function isObject(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
}
/** An object literal (or `Object.create(null)`): not a Map, whose entries Object.entries misses. */
function isPlainObject(value) {
    if (!isObject(value))
        return false;
    const proto = Object.getPrototypeOf(value);
    return proto === Object.prototype || proto === null;
}
function toInt(value) {
    if (value === null || value === undefined || typeof value === "boolean")
        return null;
    const n = typeof value === "number" ? value : Number(value);
    return Number.isFinite(n) ? Math.trunc(n) : null;
}
