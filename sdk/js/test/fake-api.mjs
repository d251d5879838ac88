// A scripted local HTTP server that stands in for the Cinch API in unit tests.
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";

/** Answers with scripted replies in order and records every request. */
export class FakeApi {
  /** @type {{status?: number, body?: unknown, headers?: Record<string,string>, delayMs?: number}[]} */
  replies = [];
  /** @type {{method: string, path: string, headers: Record<string,string>, body: unknown}[]} */
  requests = [];
  /** Whether the client closed the last stream before its end. */
  hungUp = false;
  #server = createServer((req, res) => this.#handle(req, res));

  get baseUrl() {
    return `http://127.0.0.1:${this.#server.address().port}`;
  }

  /** Appends replies to the queue. */
  script(...replies) {
    this.replies.push(...replies);
  }

  async start() {
    await new Promise((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    return this;
  }

  async stop() {
    this.#server.closeAllConnections();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  async #handle(req, res) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const raw = Buffer.concat(chunks).toString("utf8");
    let body;
    try {
      body = raw ? JSON.parse(raw) : null;
    } catch {
      body = raw;
    }
    this.requests.push({ method: req.method, path: req.url, headers: req.headers, body });
    const reply = this.replies.shift() ?? { status: 500, body: { error: "unscripted request" } };
    if (reply.delayMs) await new Promise((r) => setTimeout(r, reply.delayMs));
    if (reply.events) {
      // A stream: each [name, data] as one server-sent event, `gapMs` apart.
      res.writeHead(200, { "Content-Type": "text/event-stream; charset=utf-8", ...reply.headers });
      for (const [name, data] of reply.events) {
        if (res.destroyed) break;
        res.write(`event: ${name}\r\ndata: ${JSON.stringify(data)}\r\n\r\n`);
        if (reply.gapMs) await new Promise((r) => setTimeout(r, reply.gapMs));
      }
      this.hungUp = res.destroyed || !res.writable;
      res.end();
      return;
    }
    const isText = typeof reply.body === "string";
    const payload = isText ? reply.body : JSON.stringify(reply.body ?? {});
    if (res.destroyed) return;
    res.writeHead(reply.status ?? 200, {
      "Content-Type": isText ? "text/plain" : "application/json",
      ...reply.headers,
    });
    res.end(payload);
  }
}

/** A complete `/run` success body, with optional overrides. */
export function successBody(overrides = {}) {
  return {
    stdout: "4\n",
    stderr: "",
    exitCode: 0,
    timedOut: false,
    durationMs: 42,
    termination: "exited",
    signal: null,
    truncated: false,
    queueMs: 3,
    creditsCharged: 1,
    ...overrides,
  };
}

/** A loopback URL on which nothing listens, so connecting is refused. */
export async function refusedUrl() {
  const server = createNetServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}
