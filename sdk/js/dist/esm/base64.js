/**
 * Base64 for file contents, with `btoa`/`atob` (global in Node 16+, Deno, Bun,
 * workers and browsers), so the SDK needs no `Buffer`.
 * @internal
 * @module
 */
// String.fromCharCode takes its bytes as arguments: keep each call well under
// the engines' argument limits.
const CHUNK = 0x8000;
// No groups: a repeated group overflows V8's regexp stack on a file of megabytes.
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** The standard, padded base64 of `bytes`. */
export function encodeBase64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += CHUNK) {
        binary += String.fromCharCode(...bytes.subarray(i, i + CHUNK));
    }
    return btoa(binary);
}
/** The bytes of standard, padded base64 text; `null` if it is not that. */
export function decodeBase64(text) {
    // atob forgives whitespace and missing padding; a server's answer need not be forgiven.
    if (text.length % 4 !== 0 || !BASE64.test(text))
        return null;
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++)
        bytes[i] = binary.charCodeAt(i);
    return bytes;
}
/** Whether `value` is a `Uint8Array` (a Node `Buffer` is one), from any realm. */
export function isBytes(value) {
    return (value instanceof Uint8Array || Object.prototype.toString.call(value) === "[object Uint8Array]");
}
