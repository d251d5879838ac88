// Compile-time checks of the published types (npm test runs tsc on this file; nothing runs it).
import {
  type InputFile,
  type InputFiles,
  type Language,
  type OutputFile,
  type RunOptions,
  type RunResult,
  Sandbox,
  type StreamEvent,
} from "../dist/esm/index.js";

declare const result: RunResult;

// Always present on a 200: no null to check for.
export const exitCode: number = result.exitCode;
export const termination:
  | "exited"
  | "signal"
  | "timeout"
  | "oom"
  | "output_limit"
  | "credit_limit"
  | "sandbox_error"
  | "cancelled" = result.termination;

// A stream's events are told apart by `type`: text for output, the result last.
declare const event: StreamEvent;
export const piece: string = event.type === "result" ? event.result.stdout : event.text;
export const events: AsyncGenerator<StreamEvent, void, undefined> = new Sandbox({
  apiKey: "cinch_live_x",
}).stream("print(1)");
// Optional fields stay nullable.
// @ts-expect-error signal may be null
export const signal: string = result.signal;

export const languages: Language[] = ["python", "python3", "py", "javascript", "js", "node", "nodejs"];
// @ts-expect-error not a language the server accepts
export const cobol: Language = "cobol";

// @ts-expect-error allowBrowser was removed: the server sends no CORS headers
export const box = new Sandbox({ apiKey: "cinch_live_x", allowBrowser: true });

// Files in: text or bytes, as an object or an array; the rest of the options typed.
declare const bytes: Uint8Array;
export const byName: InputFiles = { "data.csv": "a,b\n", "logo.png": bytes };
export const asList: InputFile[] = [
  { path: "data.csv", content: "a,b\n" },
  { path: "logo.png", content: bytes },
  { path: "logo.png", content: "iVBORw0K", encoding: "base64" },
];
export const options: RunOptions = {
  files: asList,
  args: ["--rows", "2"],
  env: { MODE: "fast" },
  timeoutMs: 500,
  maxCredits: 50,
};
// @ts-expect-error content is text or bytes
export const numeric: InputFiles = { "a.txt": 3 };
// @ts-expect-error no such encoding
export const latin1: InputFile = { path: "a", content: "x", encoding: "latin1" };
// @ts-expect-error args are strings
export const numbers: RunOptions = { args: [1, 2] };
// @ts-expect-error env values are strings
export const flags: RunOptions = { env: { DEBUG: true } };

// Files out: bytes or null (over the limit), always a list.
export const outputs: OutputFile[] = result.files;
export const truncated: boolean = result.filesTruncated;
// @ts-expect-error content may be null
export const firstBytes: Uint8Array = result.files[0]!.content;
export const maybeBytes: Uint8Array | null = result.files[0]!.content;
export const mime: string | null = result.files[0]!.mimeType;
