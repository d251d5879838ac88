/** The SDK version, sent in the User-Agent header. */
export declare const VERSION = "0.4.0";
