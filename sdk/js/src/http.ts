/**
 * Transport-independent pieces of a `POST /run` exchange.
 * @internal
 * @module
 */
import { CinchError, errorForStatus } from "./errors.js";
import { parseRetryAfter } from "./retry.js";
import type { RunResult, StreamEvent, Termination } from "./types.js";
import { VERSION } from "./version.js";

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
}

export const EVENT_STREAM = "text/event-stream";

/** Validates the arguments of a run and builds its request. */
export function prepareRun(input: RunRequestInput): RunRequest {
  const { baseUrl, apiKey, code, language, stdin } = input;
  if (typeof code !== "string" || code.length === 0) {
    throw new TypeError("code must be a non-empty string");
  }
  if (typeof language !== "string") throw new TypeError("language must be a string");
  if (stdin !== undefined && typeof stdin !== "string") {
    throw new TypeError("stdin must be a string");
  }
  const idempotencyKey = input.idempotencyKey ?? randomUUID();
  if (typeof idempotencyKey !== "string" || idempotencyKey.length === 0) {
    throw new TypeError("idempotencyKey must be a non-empty string");
  }
  const body: Record<string, string> = { code, language };
  if (stdin !== undefined) body.stdin = stdin;
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

/** Turns a `/run` response into a result, or throws the matching error. */
export function parseResponse(status: number, headers: Headers, text: string): RunResult {
  const requestId = headers.get("x-request-id");
  const data = parseJson(text);
  if (status < 200 || status >= 300) {
    const message =
      isObject(data) && typeof data.error === "string" ? data.error : `HTTP ${status}`;
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
    termination: data.termination as Termination,
    signal: typeof data.signal === "string" ? data.signal : null,
    truncated: data.truncated === true,
    queueMs: toInt(data.queueMs),
    creditsCharged: toInt(data.creditsCharged),
    creditsRemaining: toInt(headers.get("x-credits-remaining")),
    requestId,
  };
}

/**
 * Server-sent events from the body's text, fed in pieces as they arrive. Lines
 * end at LF, CR or CRLF only.
 */
export class EventReader {
  #buffer = "";
  #event = "";
  #data: string[] = [];

  feed(text: string): Array<[string, string]> {
    this.#buffer += text;
    const events: Array<[string, string]> = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.#buffer);
      // A CR at the very end may be the first half of a CRLF: wait for more.
      if (!match || (match[0] === "\r" && match.index === this.#buffer.length - 1)) break;
      const line = this.#buffer.slice(0, match.index);
      this.#buffer = this.#buffer.slice(match.index + match[0].length);
      const event = this.#line(line);
      if (event) events.push(event);
    }
    return events;
  }

  #line(line: string): [string, string] | null {
    if (line === "") {
      const event: [string, string] | null = this.#data.length
        ? [this.#event || "message", this.#data.join("\n")]
        : null;
      this.#event = "";
      this.#data = [];
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") this.#data.push(value);
    return null;
  }
}

/**
 * One server-sent event of a streamed run as an SDK value; `null` for an event
 * this SDK does not know. Throws a {@link CinchError} for an `error` event.
 */
export function streamEvent(
  name: string,
  data: string,
  status: number,
  headers: Headers,
): StreamEvent | null {
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
export function randomUUID(): string {
  const webCrypto = (globalThis as { crypto?: Crypto }).crypto;
  if (typeof webCrypto?.randomUUID === "function") return webCrypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (typeof webCrypto?.getRandomValues === "function") {
    webCrypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function toInt(value: unknown): number | null {
  if (value === null || value === undefined || typeof value === "boolean") return null;
  const n = typeof value === "number" ? value : Number(value);
  return Number.isFinite(n) ? Math.trunc(n) : null;
}
