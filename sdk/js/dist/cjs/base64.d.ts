/**
 * Base64 for file contents, with `btoa`/`atob` (global in Node 16+, Deno, Bun,
 * workers and browsers), so the SDK needs no `Buffer`.
 * @internal
 * @module
 */
/** The standard, padded base64 of `bytes`. */
export declare function encodeBase64(bytes: Uint8Array): string;
/** The bytes of standard, padded base64 text; `null` if it is not that. */
export declare function decodeBase64(text: string): Uint8Array | null;
/** Whether `value` is a `Uint8Array` (a Node `Buffer` is one), from any realm. */
export declare function isBytes(value: unknown): value is Uint8Array;
