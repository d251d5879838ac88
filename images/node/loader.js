// Cinch Node loader: a warmed-up Node that runs one program.
//
// The supervisor (PID 1) starts this with stdin, stdout and stderr as pipes,
// fd 3 as the status pipe and fd 4 as the code pipe.  We warm up the CommonJS
// and ES module loaders and the stdout/stderr streams, say we are ready ('r' on
// fd 3), block until the code arrives on fd 4 (the supervisor has written the
// program file by then), then run /tmp/work/main.js the way `node main.js` would:
// Module.runMain picks CommonJS or ES modules (syntax detection is on by
// default from Node 20.19), sets require.main, and leaves the rest of stdin,
// unhandled rejections and exit codes to Node itself.  When the program is
// done (the 'exit' event, once every 'exit' listener of its own has run), we report the
// exit code on fd 3, so the result does not wait for Node's own teardown.
"use strict";
const fs = require("node:fs");
const Module = require("node:module");
const util = require("node:util");
require("node:path");
require("node:events");

const PATH = "/tmp/work/main.js";
const STATUS_FD = 3;
const CODE_FD = 4;

async function warmUp() {
  // First use of each costs milliseconds: do it before the program arrives.
  // Creating the stdio streams puts pipe fds 1 and 2 in non-blocking mode (libuv);
  // `node main.js` leaves them blocking until the program touches them, so a
  // program that writes with fs.writeSync(1, ...) faster than we read would get
  // EAGAIN here and not there.  Blocking writes are what Node does for pipes anyway.
  for (const stream of [process.stdout, process.stderr]) stream._handle?.setBlocking?.(true);
  // The first write to each stream runs the stream's write path for the first
  // time (lazily compiled, page faults under gVisor): 6-26 ms of a first
  // console.log. The supervisor drops what is written before our 'r'.
  console.log("%s", "cinch warm-up");
  console.error("%s", "cinch warm-up");
  process.stdout.write("\n");
  util.format("%s %d %j", "a", 1, { b: [2] });
  util.inspect({ a: [1, "x", { b: null }], c: new Map([[1, 2]]) });
  require("/opt/cinch/warm.js");
  // The first program file under /tmp/work pays package-scope lookups and a
  // cold module path (~1 ms in gVisor): pay them now with throwaway files there.
  const warmCjs = "/tmp/work/.cinch-warm.js";
  fs.writeFileSync(warmCjs, "module.exports = require('node:path').join('a', 'b');\n");
  require(warmCjs);
  delete require.cache[warmCjs];
  fs.unlinkSync(warmCjs);
  const warmEsm = "/tmp/work/.cinch-warm.mjs";
  fs.writeFileSync(warmEsm, "import { join } from 'node:path';\nexport default join('a', 'b');\n");
  await import(warmEsm);
  fs.unlinkSync(warmEsm);
  await import("/opt/cinch/warm.mjs");
}

// Node emits 'exit' *before* it prints an uncaught exception (or an unhandled
// rejection) and dies.  Reporting from 'exit' then would end the run before the
// error reaches stderr, so a fatal error is left to the supervisor's waitpid.
let fatal = false;
function onUncaught() {
  if (
    process.listenerCount("uncaughtException") === 0 &&
    !process.hasUncaughtExceptionCaptureCallback()
  ) {
    fatal = true;
  }
}

function reportExit(code) {
  if (fatal) return;
  const final = process.exitCode ?? code;
  const buf = Buffer.alloc(9); // 'x' | u32 code | u32 0: no stdout tail (it is flushed)
  buf.write("x");
  buf.writeUInt32BE((final ?? 0) & 0xff, 1);
  try {
    fs.writeSync(STATUS_FD, buf);
  } catch {
    // The supervisor falls back to waitpid.
  }
}

// Report once the program's own 'exit' listeners have all run, whenever they were
// added.  Not a listener of our own: EventEmitter calls a copy of the listener
// list, so a listener of ours that ran the others first (to go last) had them
// all run twice.  Node looks `process.emit` up on the object both for a natural
// end and for process.exit(), so wrapping it sees every exit.
function watchExit() {
  const emit = process.emit;
  process.emit = function (event, ...args) {
    const result = Reflect.apply(emit, this, [event, ...args]);
    if (event === "exit") reportExit(args[0]);
    return result;
  };
}

const STREAMED = 0x80000000; // the length's top bit: Node writes each line at once anyway
const EXTRA = 0x40000000; // the next bit: u32 length | the program's args and env follow

// Read exactly `want` bytes from the code pipe into buf at off (the supervisor is gone: exit).
function readExactly(buf, off, want) {
  let got = 0;
  while (got < want) {
    let n;
    try {
      n = fs.readSync(CODE_FD, buf, off + got, want - got, null);
    } catch (err) {
      if (err.code === "EAGAIN" || err.code === "EINTR") continue;
      throw err;
    }
    if (n === 0) process.reallyExit(70);
    got += n;
  }
}

// `u32 n | {u32 len | bytes}*` at `at`: [strings, next offset].
function strings(data, at) {
  const count = data.readUInt32BE(at);
  at += 4;
  const items = [];
  for (let i = 0; i < count; i++) {
    const len = data.readUInt32BE(at);
    at += 4;
    items.push(data.toString("utf8", at, at + len));
    at += len;
  }
  return [items, at];
}

function runProgram() {
  fs.writeSync(STATUS_FD, "r");
  // The code itself is read back from the file by Module.runMain; its arrival
  // here is the signal to go: read the 4-byte length, then drain the code.
  const buf = Buffer.alloc(65536);
  readExactly(buf, 0, 4);
  const word = buf.readUInt32BE(0);
  let left = word & ~(STREAMED | EXTRA) >>> 0;
  while (left > 0) {
    const n = Math.min(left, buf.length);
    readExactly(buf, 0, n);
    left -= n;
  }
  let args = [];
  if (word & EXTRA) {
    readExactly(buf, 0, 4);
    const extra = Buffer.alloc(buf.readUInt32BE(0));
    readExactly(extra, 0, extra.length);
    let env, at;
    [args, at] = strings(extra, 0);
    [env] = strings(extra, at);
    for (const item of env) {
      const eq = item.indexOf("=");
      process.env[item.slice(0, eq)] = item.slice(eq + 1);
    }
  }
  fs.closeSync(CODE_FD);
  process.on("uncaughtExceptionMonitor", onUncaught);
  watchExit();
  process.argv.splice(1, process.argv.length - 1, PATH, ...args);
  Module.runMain(PATH);
}

// setImmediate, not the promise callback: a synchronous throw from the program
// must be an ordinary uncaught exception, not a rejected promise.
warmUp().then(() => setImmediate(runProgram));
