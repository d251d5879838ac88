/** The SDK version, sent in the User-Agent header. */
export const VERSION = "0.4.0";
