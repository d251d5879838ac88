"use strict";
Object.defineProperty(exports, "__esModule", { value: true });
exports.VERSION = exports.ServiceUnavailableError = exports.RequestTimeoutError = exports.RateLimitError = exports.NetworkError = exports.InsufficientCreditsError = exports.ConflictError = exports.CinchError = exports.BadRequestError = exports.AuthenticationError = exports.Sandbox = exports.DEFAULT_BASE_URL = void 0;
/**
 * The official JavaScript/TypeScript SDK for Cinch: run untrusted code in
 * disposable sandboxes with one call.
 * @module
 */
var sandbox_js_1 = require("./sandbox.js");
Object.defineProperty(exports, "DEFAULT_BASE_URL", { enumerable: true, get: function () { return sandbox_js_1.DEFAULT_BASE_URL; } });
Object.defineProperty(exports, "Sandbox", { enumerable: true, get: function () { return sandbox_js_1.Sandbox; } });
var errors_js_1 = require("./errors.js");
Object.defineProperty(exports, "AuthenticationError", { enumerable: true, get: function () { return errors_js_1.AuthenticationError; } });
Object.defineProperty(exports, "BadRequestError", { enumerable: true, get: function () { return errors_js_1.BadRequestError; } });
Object.defineProperty(exports, "CinchError", { enumerable: true, get: function () { return errors_js_1.CinchError; } });
Object.defineProperty(exports, "ConflictError", { enumerable: true, get: function () { return errors_js_1.ConflictError; } });
Object.defineProperty(exports, "InsufficientCreditsError", { enumerable: true, get: function () { return errors_js_1.InsufficientCreditsError; } });
Object.defineProperty(exports, "NetworkError", { enumerable: true, get: function () { return errors_js_1.NetworkError; } });
Object.defineProperty(exports, "RateLimitError", { enumerable: true, get: function () { return errors_js_1.RateLimitError; } });
Object.defineProperty(exports, "RequestTimeoutError", { enumerable: true, get: function () { return errors_js_1.RequestTimeoutError; } });
Object.defineProperty(exports, "ServiceUnavailableError", { enumerable: true, get: function () { return errors_js_1.ServiceUnavailableError; } });
var version_js_1 = require("./version.js");
Object.defineProperty(exports, "VERSION", { enumerable: true, get: function () { return version_js_1.VERSION; } });
