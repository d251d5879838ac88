"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.VERSION = void 0;
/** The SDK version, sent in the User-Agent header. */
exports.VERSION = "0.4.0";
