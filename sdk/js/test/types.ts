// Compile-time checks of the published types (npm test runs tsc on this file; nothing runs it).
import { type Language, type RunResult, Sandbox, type StreamEvent } from "../dist/esm/index.js";

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
