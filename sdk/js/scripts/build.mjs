// Builds dist/esm and dist/cjs (each with .d.ts) from src with two tsc runs.
// Each output folder gets a package.json naming its module format, so Node
// reads dist/cjs/*.js as CommonJS although this package is "type": "module".
//
// dist/ is committed, so that `npm install ./sdk/js` and `npm pack` work from a
// clean clone without a toolchain. With --if-typescript (the prepack script) a
// checkout without TypeScript installed packs the committed build unchanged.
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
let tsc;
try {
  tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
} catch {
  if (process.argv.includes("--if-typescript")) {
    console.log("TypeScript is not installed (npm ci): using the committed dist/ as it is");
    process.exit(0);
  }
  console.error("TypeScript is not installed: run npm ci first");
  process.exit(1);
}

const targets = [
  { config: "tsconfig.esm.json", outDir: "dist/esm", type: "module" },
  { config: "tsconfig.cjs.json", outDir: "dist/cjs", type: "commonjs" },
];

rmSync(join(root, "dist"), { recursive: true, force: true });
for (const { config, outDir, type } of targets) {
  execFileSync(process.execPath, [tsc, "-p", config], { cwd: root, stdio: "inherit" });
  writeFileSync(join(root, outDir, "package.json"), `${JSON.stringify({ type })}\n`);
  console.log(`built ${outDir} (${type})`);
}
