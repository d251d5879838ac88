// Checks the built SDK against a live Cinch server.
//
//   CINCH_BASE_URL=http://127.0.0.1:8000 CINCH_API_KEY=cinch_live_... node test/live.mjs
//
// Needs `npm run build` first. Spends a few credits. Exits non-zero on failure.
import assert from "node:assert/strict";

import { AuthenticationError, Sandbox } from "@cinch/sdk";

if (!process.env.CINCH_BASE_URL || !process.env.CINCH_API_KEY) {
  console.error("live.mjs: set CINCH_BASE_URL and CINCH_API_KEY");
  process.exit(2);
}

const box = new Sandbox({ timeoutMs: 120_000 });
const CSV = "month,revenue\njan,10\nfeb,32\n";
const BLOB = Uint8Array.from({ length: 1024 }, (_, i) => i & 0xff); // every byte value

const checks = {
  async "python prints 4"() {
    const result = await box.run("print(2 + 2)");
    assert.equal(result.stdout, "4\n", result.stderr);
    assert.equal(result.exitCode, 0);
    assert.equal(result.timedOut, false);
    assert.equal(result.termination, "exited");
    assert.equal(typeof result.requestId, "string");
    assert.equal(typeof result.creditsRemaining, "number");
  },

  async "javascript prints 4"() {
    const result = await box.run("console.log(2 + 2)", { language: "javascript" });
    assert.equal(result.stdout, "4\n", result.stderr);
    assert.equal(result.exitCode, 0);
  },

  async "stdin reaches the program"() {
    const result = await box.run("print(input()[::-1])", { stdin: "abc\n" });
    assert.equal(result.stdout, "cba\n", result.stderr);
  },

  async "a non-zero exit is a result"() {
    const result = await box.run("import sys; sys.exit(3)");
    assert.equal(result.exitCode, 3);
  },

  async "an idempotent repeat is charged once"() {
    const idempotencyKey = `live-js-${Date.now()}-${Math.random().toString(16).slice(2)}`;
    const first = await box.run("print('once')", { idempotencyKey });
    const second = await box.run("print('once')", { idempotencyKey });
    assert.equal(second.stdout, first.stdout);
    assert.equal(second.creditsRemaining, first.creditsRemaining);
  },

  async "files, args and env reach the program; out/ comes back byte for byte"() {
    const code = [
      "import csv, os, shutil, sys",
      "with open('data.csv', newline='') as f:",
      "    rows = list(csv.DictReader(f))",
      "print(sum(int(row['revenue']) for row in rows), sys.argv[1:], os.environ['GREETING'])",
      "os.makedirs('out', exist_ok=True)",
      "shutil.copyfile('in/blob.bin', 'out/blob.bin')",
    ].join("\n");
    const result = await box.run(code, {
      files: { "data.csv": CSV, "in/blob.bin": BLOB },
      args: ["a b", "--flag", ""],
      env: { GREETING: "hello wörld" },
    });
    assert.equal(result.stdout, "42 ['a b', '--flag', ''] hello wörld\n", result.stderr);
    assert.equal(result.filesTruncated, false);
    assert.deepEqual(
      result.files.map((f) => [f.path, f.size]),
      [["out/blob.bin", BLOB.length]],
    );
    assert.deepEqual(result.files[0].content, BLOB);
  },

  async "javascript gets process.argv, env and files, in a stream too"() {
    const code = [
      "const fs = require('node:fs');",
      "console.log(fs.readFileSync('data.csv', 'utf8').split('\\n')[1]);",
      "console.log(JSON.stringify(process.argv.slice(2)), process.env.GREETING);",
      "fs.mkdirSync('out', { recursive: true });",
      "fs.writeFileSync('out/report.txt', 'done\\n');",
    ].join("\n");
    let result;
    const files = [{ path: "data.csv", content: CSV }];
    const options = { language: "javascript", files, args: ["x", "y z"], env: { GREETING: "hi" } };
    for await (const event of box.stream(code, options)) {
      if (event.type === "result") result = event.result;
    }
    assert.equal(result.stdout, 'jan,10\n["x","y z"] hi\n', result.stderr);
    assert.deepEqual(
      result.files.map((f) => [f.path, new TextDecoder().decode(f.content)]),
      [["out/report.txt", "done\n"]],
    );
  },

  async "a bad key is an AuthenticationError"() {
    const bad = new Sandbox({ apiKey: "cinch_live_not_a_real_key", maxRetries: 0 });
    await assert.rejects(bad.run("print(1)"), (err) => {
      assert.ok(err instanceof AuthenticationError, String(err));
      assert.equal(err.status, 401);
      return true;
    });
  },
};

let passed = 0;
let failed = 0;
for (const [name, check] of Object.entries(checks)) {
  try {
    await check();
    passed++;
    console.log(`ok - ${name}`);
  } catch (error) {
    failed++;
    console.log(`not ok - ${name}`);
    console.log(String(error?.stack ?? error).replace(/^/gm, "    "));
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
