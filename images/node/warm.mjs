// Loaded once while the sandbox warms up, to exercise the ES module loader.
import { join } from "node:path";
export const joined = join("a", "b");
