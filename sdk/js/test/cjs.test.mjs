// Runs the suite against the CommonJS build, resolved through the package's "exports".
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

import { defineSuite } from "./cases.mjs";

const require = createRequire(import.meta.url);
const sdk = require("@cinch/sdk");

test("the require condition resolves to dist/cjs", () => {
  assert.match(require.resolve("@cinch/sdk"), /[\\/]dist[\\/]cjs[\\/]index\.js$/);
  assert.equal(sdk.VERSION, "0.4.0");
});

defineSuite("cjs", sdk);
