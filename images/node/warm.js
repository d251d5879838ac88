// Loaded once while the sandbox warms up, to exercise the CommonJS loader.
"use strict";
const path = require("node:path");
module.exports = { joined: path.join("a", "b"), json: JSON.stringify({ a: [1, 2] }) };
