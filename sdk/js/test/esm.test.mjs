// Runs the suite against the ESM build, resolved through the package's "exports".
import assert from "node:assert/strict";
import { test } from "node:test";

import * as sdk from "@cinch/sdk";
import { defineSuite } from "./cases.mjs";

test("the import condition resolves to dist/esm", () => {
  assert.match(import.meta.resolve("@cinch/sdk"), /\/dist\/esm\/index\.js$/);
  assert.equal(sdk.VERSION, "0.4.0");
});

defineSuite("esm", sdk);
