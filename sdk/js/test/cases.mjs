// The unit-test suite, run once against each build (ESM and CommonJS).
import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";

import { FakeApi, refusedUrl, successBody } from "./fake-api.mjs";

const KEY = "cinch_live_0123456789abcdef";
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/**
 * Defines the suite for one build of the SDK.
 * @param {string} label Name of the build.
 * @param {typeof import("../dist/esm/index.js")} sdk The loaded module.
 */
export function defineSuite(label, sdk) {
  const {
    AuthenticationError,
    BadRequestError,
    CinchError,
    ConflictError,
    InsufficientCreditsError,
    NetworkError,
    RateLimitError,
    RequestTimeoutError,
    Sandbox,
    ServiceUnavailableError,
  } = sdk;

  describe(`@cinch/sdk (${label})`, () => {
    /** @type {FakeApi} */
    let api;
    const box = (options = {}) => new Sandbox({ apiKey: KEY, baseUrl: api.baseUrl, ...options });

    before(async () => {
      api = await new FakeApi().start();
    });
    after(() => api.stop());
    beforeEach(() => {
      api.replies.length = 0;
      api.requests.length = 0;
    });

    describe("success", () => {
      it("maps every field", async () => {
        api.script({
          body: successBody({ stdout: "hi\n", stderr: "warn\n", durationMs: 17, queueMs: 5 }),
          headers: { "X-Request-Id": "req_1", "X-Credits-Remaining": "9950" },
        });

        const result = await box().run("print('hi')", { stdin: "input\n" });

        assert.deepEqual(result, {
          stdout: "hi\n",
          stderr: "warn\n",
          exitCode: 0,
          timedOut: false,
          durationMs: 17,
          termination: "exited",
          signal: null,
          truncated: false,
          queueMs: 5,
          creditsCharged: 1,
          creditsRemaining: 9950,
          requestId: "req_1",
          files: [],
          filesTruncated: false,
        });
      });

      it("sends the documented request", async () => {
        api.script({ body: successBody() });

        await box().run("console.log(1)", { language: "javascript", stdin: "x" });

        const [request] = api.requests;
        assert.equal(request.method, "POST");
        assert.equal(request.path, "/run");
        assert.equal(request.headers.authorization, `Bearer ${KEY}`);
        assert.equal(request.headers["content-type"], "application/json");
        assert.match(request.headers["idempotency-key"], UUID_V4);
        assert.deepEqual(request.body, { code: "console.log(1)", language: "javascript", stdin: "x" });
      });

      it("omits stdin and defaults to python", async () => {
        api.script({ body: successBody() });
        await box().run("print(1)");
        assert.deepEqual(api.requests[0].body, { code: "print(1)", language: "python" });
      });

      it("uses a fresh idempotency key per run, or the caller's", async () => {
        api.script({ body: successBody() }, { body: successBody() }, { body: successBody() });
        const sandbox = box();
        await sandbox.run("print(1)");
        await sandbox.run("print(1)");
        await sandbox.run("print(1)", { idempotencyKey: "order-42" });
        const keys = api.requests.map((r) => r.headers["idempotency-key"]);
        assert.notEqual(keys[0], keys[1]);
        assert.equal(keys[2], "order-42");
      });

      it("treats a non-zero exit as a result", async () => {
        api.script({
          body: successBody({
            stdout: "",
            exitCode: 137,
            termination: "signal",
            signal: "SIGKILL",
            truncated: true,
          }),
        });
        const result = await box().run("import os; os.abort()");
        assert.equal(result.exitCode, 137);
        assert.equal(result.signal, "SIGKILL");
        assert.equal(result.truncated, true);
      });

      it("defaults missing optional fields to null", async () => {
        api.script({
          body: { stdout: "", stderr: "", exitCode: 137, timedOut: true, durationMs: 5, termination: "timeout" },
        });
        const result = await box().run("while True: pass");
        assert.equal(result.exitCode, 137);
        assert.equal(result.timedOut, true);
        assert.equal(result.termination, "timeout");
        assert.equal(result.signal, null);
        assert.equal(result.queueMs, null);
        assert.equal(result.creditsCharged, null);
        assert.equal(result.creditsRemaining, null);
        assert.equal(result.requestId, null);
      });

      it("rejects a 200 without exitCode or termination", async () => {
        for (const missing of ["exitCode", "termination"]) {
          const body = successBody();
          delete body[missing];
          api.script({ body });
          await assert.rejects(box().run("print(1)"), (err) => {
            assert.ok(err instanceof CinchError);
            assert.match(err.message, /invalid response/);
            return true;
          });
        }
      });

      it("rejects a malformed success body", async () => {
        api.script({ body: "not json" });
        await assert.rejects(box().run("print(1)"), (err) => {
          assert.ok(err instanceof CinchError);
          assert.equal(err.status, 200);
          assert.match(err.message, /invalid response/);
          return true;
        });
      });
    });

    describe("errors", () => {
      const cases = [
        [400, BadRequestError],
        [401, AuthenticationError],
        [402, InsufficientCreditsError],
        [404, CinchError],
        [405, CinchError],
        [409, ConflictError],
        [413, BadRequestError],
        [500, CinchError],
      ];
      for (const [status, ErrorClass] of cases) {
        it(`maps HTTP ${status} to ${ErrorClass.name} without retrying`, async () => {
          api.script({ status, body: { error: `nope ${status}` }, headers: { "X-Request-Id": "req_e" } });
          await assert.rejects(box().run("print(1)"), (err) => {
            assert.equal(Object.getPrototypeOf(err), ErrorClass.prototype);
            assert.ok(err instanceof CinchError && err instanceof Error);
            assert.equal(err.name, ErrorClass.name);
            assert.equal(err.message, `nope ${status}`);
            assert.equal(err.status, status);
            assert.equal(err.requestId, "req_e");
            return true;
          });
          assert.equal(api.requests.length, 1);
        });
      }

      it("makes ConflictError a BadRequestError", () => {
        assert.ok(new ConflictError("x") instanceof BadRequestError);
      });

      it("falls back to the status when the body has no error", async () => {
        api.script({ status: 500, body: "<html>oops</html>" });
        await assert.rejects(box().run("print(1)"), { name: "CinchError", message: "HTTP 500" });
      });

      for (const [status, ErrorClass] of [
        [429, RateLimitError],
        [503, ServiceUnavailableError],
      ]) {
        it(`exposes retryAfter on HTTP ${status}`, async () => {
          api.script({ status, body: { error: "later" }, headers: { "Retry-After": "7" } });
          await assert.rejects(box({ maxRetries: 0 }).run("print(1)"), (err) => {
            assert.ok(err instanceof ErrorClass);
            assert.equal(err.retryAfter, 7);
            assert.equal(err.status, status);
            return true;
          });
          assert.equal(api.requests.length, 1);
        });
      }
    });

    describe("retries", () => {
      it("retries 503 then succeeds, with the same idempotency key", async () => {
        api.script(
          { status: 503, body: { error: "no capacity" }, headers: { "Retry-After": "0" } },
          { body: successBody(), headers: { "X-Credits-Remaining": "99" } },
        );
        const result = await box().run("print(2 + 2)");
        assert.equal(result.stdout, "4\n");
        assert.equal(result.creditsRemaining, 99);
        const [first, second] = api.requests;
        assert.equal(first.headers["idempotency-key"], second.headers["idempotency-key"]);
        assert.deepEqual(first.body, second.body);
      });

      it("waits for Retry-After on 429", async () => {
        api.script(
          { status: 429, body: { error: "slow down" }, headers: { "Retry-After": "1" } },
          { body: successBody() },
        );
        const started = Date.now();
        await box().run("print(1)");
        assert.ok(Date.now() - started >= 950, "waited less than Retry-After");
        assert.equal(api.requests.length, 2);
      });

      it("gives up after maxRetries", async () => {
        const busy = { status: 503, body: { error: "busy" }, headers: { "Retry-After": "0" } };
        api.script(busy, busy, busy);
        await assert.rejects(box().run("print(1)"), ServiceUnavailableError);
        assert.equal(api.requests.length, 3);
        assert.equal(new Set(api.requests.map((r) => r.headers["idempotency-key"])).size, 1);
      });

      it("retries a refused connection, then throws NetworkError", async () => {
        const sandbox = new Sandbox({ apiKey: KEY, baseUrl: await refusedUrl(), maxRetries: 1 });
        const started = Date.now();
        await assert.rejects(sandbox.run("print(1)"), (err) => {
          assert.ok(err instanceof NetworkError);
          assert.ok(!(err instanceof RequestTimeoutError));
          assert.equal(err.status, null);
          assert.match(err.message, /^network error: /);
          return true;
        });
        assert.ok(Date.now() - started >= 240, "no back-off before the retry");
      });

      it("does not retry a timeout", async () => {
        api.script({ body: successBody(), delayMs: 500 });
        await assert.rejects(box({ timeoutMs: 100 }).run("print(1)"), RequestTimeoutError);
        assert.equal(api.requests.length, 1);
      });

      it("stops when the caller aborts", async () => {
        api.script({ body: successBody(), delayMs: 500 });
        const controller = new AbortController();
        setTimeout(() => controller.abort(), 50);
        await assert.rejects(box().run("print(1)", { signal: controller.signal }), {
          name: "AbortError",
        });
      });
    });

    describe("stream", () => {
      it("yields output as it comes, then the result, and asks for events", async () => {
        api.script({
          events: [
            ["stdout", { text: "a\n" }],
            ["stderr", { text: "é\u2028" }],
            ["result", successBody({ stdout: "a\n", stderr: "é\u2028" })],
          ],
          headers: { "X-Request-Id": "req-s" },
          gapMs: 20,
        });
        const seen = [];
        for await (const event of box().stream("print(1)")) seen.push(event);
        assert.deepEqual(seen.slice(0, 2), [
          { type: "stdout", text: "a\n" },
          { type: "stderr", text: "é\u2028" },
        ]);
        assert.equal(seen.length, 3);
        assert.equal(seen[2].type, "result");
        assert.equal(seen[2].result.stdout, "a\n");
        assert.equal(seen[2].result.requestId, "req-s");
        assert.equal(seen[2].result.creditsRemaining, null);
        assert.equal(api.requests[0].headers.accept, "text/event-stream");
      });

      it("throws an error event as a CinchError", async () => {
        api.script({ events: [["stdout", { text: "x" }], ["error", { error: "boom" }]] });
        const seen = [];
        await assert.rejects(async () => {
          for await (const event of box().stream("x")) seen.push(event);
        }, (error) => error instanceof CinchError && error.message === "boom");
        assert.deepEqual(seen, [{ type: "stdout", text: "x" }]);
      });

      it("retries a 503 before the start, with the same Idempotency-Key", async () => {
        api.script(
          { status: 503, body: { error: "busy" }, headers: { "Retry-After": "0" } },
          { events: [["result", successBody()]] },
        );
        const seen = [];
        for await (const event of box().stream("x")) seen.push(event);
        assert.equal(seen.length, 1);
        assert.equal(seen[0].result.stdout, "4\n");
        assert.equal(api.requests.length, 2);
        assert.equal(
          api.requests[0].headers["idempotency-key"],
          api.requests[1].headers["idempotency-key"],
        );
      });

      it("rejects an error before the start like run()", async () => {
        api.script({ status: 402, body: { error: "out of credits" } });
        await assert.rejects(async () => {
          for await (const _ of box().stream("x"));
        }, InsufficientCreditsError);
      });

      it("hangs up when the loop is left early", async () => {
        api.script({
          events: Array.from({ length: 50 }, (_, i) => ["stdout", { text: `${i}\n` }]),
          gapMs: 10,
        });
        for await (const event of box().stream("x")) {
          assert.equal(event.text, "0\n");
          break;
        }
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(api.hungUp, true);
      });
    });

    describe("files, args, env, timeoutMs, maxCredits", () => {
      const PNG = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff]);
      const b64 = (bytes) => Buffer.from(bytes).toString("base64");
      const filesBody = successBody({
        files: [
          { path: "out/chart.png", size: PNG.length, mimeType: "image/png", content: b64(PNG) },
          { path: "out/empty.txt", size: 0, mimeType: "text/plain", content: "" },
          { path: "out/big.bin", size: 9_000_000, mimeType: "application/octet-stream" },
          { path: "out/big2.bin", size: 7, mimeType: null, content: null },
        ],
        filesTruncated: true,
      });
      const checkFiles = (result) => {
        assert.deepEqual(result.files, [
          { path: "out/chart.png", size: PNG.length, mimeType: "image/png", content: PNG },
          { path: "out/empty.txt", size: 0, mimeType: "text/plain", content: new Uint8Array() },
          { path: "out/big.bin", size: 9_000_000, mimeType: "application/octet-stream", content: null },
          { path: "out/big2.bin", size: 7, mimeType: null, content: null },
        ]);
        // A plain Uint8Array, not a Buffer: the SDK does not depend on Node.
        assert.equal(Object.getPrototypeOf(result.files[0].content), Uint8Array.prototype);
        assert.equal(result.filesTruncated, true);
      };

      it("sends none of them unless given, from run() and stream()", async () => {
        api.script({ body: successBody() }, { events: [["result", successBody()]] });
        await box().run("print(1)");
        for await (const _ of box().stream("print(1)"));
        for (const request of api.requests) {
          assert.deepEqual(request.body, { code: "print(1)", language: "python" });
        }
      });

      it("sends each one, in camelCase; text as utf-8 and bytes as base64", async () => {
        api.script({ body: successBody() });
        await box().run("import sys", {
          stdin: "in",
          files: { "data.csv": "a,b\n1,2\n", "img/logo.png": PNG },
          args: ["--rows", "2", ""],
          env: { MODE: "fast", EMPTY: "" },
          timeoutMs: 500,
          maxCredits: 50,
        });
        assert.deepEqual(api.requests[0].body, {
          code: "import sys",
          language: "python",
          stdin: "in",
          files: [
            { path: "data.csv", content: "a,b\n1,2\n", encoding: "utf-8" },
            { path: "img/logo.png", content: b64(PNG), encoding: "base64" },
          ],
          args: ["--rows", "2", ""],
          env: { MODE: "fast", EMPTY: "" },
          timeoutMs: 500,
          maxCredits: 50,
        });
      });

      it("takes an array of { path, content, encoding? }, Buffers too", async () => {
        api.script({ events: [["result", successBody()]] });
        const files = [
          { path: "a.txt", content: "héllo" },
          { path: "b.bin", content: Buffer.from([0, 1]) },
          { path: "c.bin", content: b64(Buffer.from("pre-encoded")), encoding: "base64" },
          { path: "d.txt", content: "text", encoding: "utf-8" },
          { path: "e.bin", content: new Uint8Array() },
          { path: "../x", content: "" }, // paths are the server's to refuse
          { path: "../x", content: "" },
        ];
        for await (const _ of box().stream("x", { files, timeoutMs: 0, maxCredits: -1 }));
        const { body } = api.requests[0];
        assert.deepEqual(body.files, [
          { path: "a.txt", content: "héllo", encoding: "utf-8" },
          { path: "b.bin", content: "AAE=", encoding: "base64" },
          { path: "c.bin", content: b64(Buffer.from("pre-encoded")), encoding: "base64" },
          { path: "d.txt", content: "text", encoding: "utf-8" },
          { path: "e.bin", content: "", encoding: "base64" },
          { path: "../x", content: "", encoding: "utf-8" },
          { path: "../x", content: "", encoding: "utf-8" },
        ]);
        assert.deepEqual([body.timeoutMs, body.maxCredits], [0, -1]);
      });

      it("encodes large and odd-sized bytes exactly", async () => {
        const sizes = [1, 2, 3, 0x8000 - 1, 0x8000, 0x8000 + 1, 1_000_003];
        const files = sizes.map((n, i) => ({
          path: `f${i}`,
          content: Uint8Array.from({ length: n }, (_, j) => (j * 7 + i) & 0xff),
        }));
        api.script({ body: successBody() });
        await box().run("x", { files });
        assert.deepEqual(
          api.requests[0].body.files.map((f) => f.content),
          files.map((f) => b64(f.content)),
        );
      });

      const bad = [
        [{ files: "data.csv" }, /files must be an object/],
        [{ files: new Map([["a", "b"]]) }, /files must be an object/],
        [{ files: [3] }, /files\[0\] must be \{ path, content \}/],
        [{ files: [{ content: "x" }] }, /files\[0\]\.path must be a string/],
        [{ files: { "a.txt": 3 } }, /file "a.txt": content must be a string or a Uint8Array/],
        [{ files: { "a.txt": [1, 2] } }, /content must be a string or a Uint8Array/],
        [{ files: [{ path: "a", content: PNG, encoding: "utf-8" }] }, /bytes are sent as base64/],
        [{ files: [{ path: "a", content: "x", encoding: "latin1" }] }, /"utf-8" or "base64"/],
        [{ args: "--verbose" }, /args must be an array/],
        [{ args: ["a", 1] }, /args\[1\] must be a string/],
        [{ env: new Map() }, /env must be an object/],
        [{ env: { A: 1 } }, /env\["A"\] must be a string/],
        [{ timeoutMs: 1.5 }, /timeoutMs must be an integer/],
        [{ timeoutMs: "500" }, /timeoutMs must be an integer/],
        [{ maxCredits: Number.NaN }, /maxCredits must be an integer/],
      ];
      for (const [options, message] of bad) {
        it(`throws a TypeError before sending ${JSON.stringify(options)}`, async () => {
          await assert.rejects(box().run("x", options), { name: "TypeError", message });
          await assert.rejects(box().stream("x", options).next(), { name: "TypeError", message });
          assert.equal(api.requests.length, 0);
        });
      }

      for (const [status, message] of [
        [400, "files[1] 'a/../b': a path must not contain '..'"],
        [400, "env: 'PATH' may not be set"],
        [413, "files are 11534336 bytes decoded; the limit is 10485760"],
      ]) {
        it(`passes the server's ${status} on as it is`, async () => {
          api.script({ status, body: { error: message }, headers: { "X-Request-Id": "req_f" } });
          await assert.rejects(box().run("x", { files: { a: "b" } }), (err) => {
            assert.ok(err instanceof BadRequestError);
            assert.deepEqual([err.message, err.status, err.requestId], [message, status, "req_f"]);
            return true;
          });
        });
      }

      it("decodes the output files", async () => {
        api.script({ body: filesBody });
        checkFiles(await box().run("x"));
      });

      it("gives the output files in a stream's result", async () => {
        api.script({ events: [["stdout", { text: "4\n" }], ["result", filesBody]] });
        const seen = [];
        for await (const event of box().stream("x")) seen.push(event);
        assert.equal(seen.at(-1).type, "result");
        checkFiles(seen.at(-1).result);
      });

      it("takes a missing size from the content", async () => {
        api.script({ body: successBody({ files: [{ path: "out/a", content: b64([1, 2, 3]) }] }) });
        const { files } = await box().run("x");
        assert.deepEqual(files, [
          { path: "out/a", size: 3, mimeType: null, content: new Uint8Array([1, 2, 3]) },
        ]);
      });

      for (const [files, message] of [
        [{ path: "out/a" }, /'files' is not a list/],
        [[{ path: "out/a", content: "not base64!" }], /content of "out\/a" is not base64/],
        [[{ path: "out/a", content: "QUJD\n" }], /content of "out\/a" is not base64/],
        [[{ path: "out/a", content: "QUJ" }], /content of "out\/a" is not base64/],
        [[{ path: "out/a", content: 5 }], /content of "out\/a" is not base64/],
        [[{ size: 1 }], /a file without a path/],
        [["out/a"], /a file without a path/],
      ]) {
        it(`rejects malformed output files: ${JSON.stringify(files)}`, async () => {
          api.script({ body: successBody({ files }), headers: { "X-Request-Id": "req_m" } });
          await assert.rejects(box().run("x"), (err) => {
            assert.ok(err instanceof CinchError);
            assert.match(err.message, /^invalid response from server: /);
            assert.match(err.message, message);
            assert.deepEqual([err.status, err.requestId], [200, "req_m"]);
            return true;
          });
        });
      }
    });

    describe("configuration", () => {
      const saved = { ...process.env };
      afterEach(() => {
        for (const name of ["CINCH_API_KEY", "CINCH_BASE_URL"]) {
          if (saved[name] === undefined) delete process.env[name];
          else process.env[name] = saved[name];
        }
      });

      it("reads CINCH_API_KEY and CINCH_BASE_URL", async () => {
        process.env.CINCH_API_KEY = "cinch_live_fromenv";
        process.env.CINCH_BASE_URL = `${api.baseUrl}/`;
        api.script({ body: successBody() });
        const sandbox = new Sandbox();
        await sandbox.run("print(1)");
        assert.equal(sandbox.baseUrl, api.baseUrl);
        assert.equal(api.requests[0].headers.authorization, "Bearer cinch_live_fromenv");
      });

      it("prefers explicit options", () => {
        process.env.CINCH_API_KEY = "cinch_live_fromenv";
        process.env.CINCH_BASE_URL = "http://127.0.0.1:1";
        const sandbox = new Sandbox({ apiKey: KEY, baseUrl: "http://127.0.0.1:2" });
        assert.equal(sandbox.baseUrl, "http://127.0.0.1:2");
      });

      it("defaults the base URL", () => {
        delete process.env.CINCH_BASE_URL;
        assert.equal(new Sandbox({ apiKey: KEY }).baseUrl, "https://api.cinch.codes");
      });

      it("requires an API key", () => {
        delete process.env.CINCH_API_KEY;
        assert.throws(() => new Sandbox(), { name: "TypeError", message: /CINCH_API_KEY/ });
      });

      it("validates arguments", async () => {
        const sandbox = new Sandbox({ apiKey: KEY });
        await assert.rejects(sandbox.run(""), TypeError);
        await assert.rejects(sandbox.run(undefined), TypeError);
        await assert.rejects(sandbox.run("print(1)", { stdin: 5 }), TypeError);
        assert.throws(() => new Sandbox({ apiKey: KEY, maxRetries: -1 }), TypeError);
        assert.throws(() => new Sandbox({ apiKey: KEY, timeoutMs: 0 }), TypeError);
        for (const baseUrl of ["api.cinch.codes", "ftp://127.0.0.1", "http://"]) {
          assert.throws(() => new Sandbox({ apiKey: KEY, baseUrl }), /baseUrl must be/);
        }
      });

      it("keeps the key out of JSON", () => {
        assert.ok(!JSON.stringify(new Sandbox({ apiKey: KEY })).includes(KEY));
      });

      it("refuses to run in a browser, whatever the options", () => {
        globalThis.window = {};
        globalThis.document = {};
        try {
          assert.throws(() => new Sandbox({ apiKey: KEY }), /API keys must stay server-side/);
          // allowBrowser was removed: the server sends no CORS headers.
          assert.throws(() => new Sandbox({ apiKey: KEY, allowBrowser: true }), /server-side/);
        } finally {
          delete globalThis.window;
          delete globalThis.document;
        }
      });
    });
  });
}
