// Test helpers: the hub's address, and waits on events with timeouts (never sleeps).

import net from "node:net";

import WebSocket from "ws";

import { RustyWsClient } from "../../rusty_ws/static/rusty_ws.js";

/** One millisecond, scaled like the Python tests' MS: every timing a test sets is a multiple of it. */
export const MS = Number(process.env.RUSTY_WS_TESTS_TIMEOUT_FACTOR ?? "1");
/** The usual wait, in ms, scaled like the Python tests' WAIT. */
export const WAIT = 3000 * MS;

/**
 * The hub that tests/js/test_node.py started: {http, ws} base URLs.
 * @param {string} variable the environment variable holding its http:// URL
 */
export function hub(variable = "RUSTY_WS_HTTP_URL") {
  const http = process.env[variable];
  if (!http) {
    throw new Error(`${variable} is not set: run these tests through pytest (tests/js/test_node.py)`);
  }
  return { http, ws: `${http.replace(/^http/, "ws")}/ws`, authUrl: `${http}/auth/token`, port: Number(new URL(http).port) };
}

/** Resolve with `promise`, or reject if it takes longer than `ms`. */
export function within(promise, ms = WAIT, label = "the awaited event") {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `type` event of `target` whose detail passes `accept`. */
export function nextEvent(target, type, accept = () => true, ms = WAIT) {
  let listener;
  const seen = new Promise((resolve) => {
    listener = (event) => {
      if (accept(event.detail)) resolve(event.detail);
    };
    target.addEventListener(type, listener);
  });
  return within(seen, ms, `a ${type} event`).finally(() => target.removeEventListener(type, listener));
}

/** Payloads of `topic` as they arrive; `next()` waits for the next one. */
export class Inbox {
  constructor(client, topic) {
    this.items = [];
    this._waiting = [];
    client.onMessage(topic, (payload, message) => {
      const waiter = this._waiting.shift();
      if (waiter) waiter({ payload, message });
      else this.items.push({ payload, message });
    });
  }

  next(ms = WAIT) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return within(new Promise((resolve) => this._waiting.push(resolve)), ms, "a message");
  }
}

/** A connected client on the `ws` package; the caller closes it. */
export async function connected(url, options = {}) {
  const client = new RustyWsClient(url, { WebSocket, timeout: WAIT, ...options });
  await client.connect();
  return client;
}

/**
 * A TCP proxy in front of a hub, to cut connections the way a network does: `cut()` resets
 * both sides' sockets, so no WebSocket close frame is ever sent. It can also refuse new
 * connections (a network that is still down), drop what the hub sends (replies lost on the
 * way), and send new connections to another hub (a restarted one).
 */
export class CutProxy {
  /** A listening proxy to the hub on 127.0.0.1:`targetPort`. */
  static async to(targetPort) {
    const proxy = new CutProxy(targetPort);
    await new Promise((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.refuse = false; // reset new connections at once
    this.dropReplies = false; // drop the hub's bytes to the clients connected now
    this.connections = 0; // accepted so far
    this._sockets = new Set();
    this.server = net.createServer((client) => this._accept(client));
  }

  get port() {
    return this.server.address().port;
  }

  /** The hub's WebSocket URL, through this proxy. */
  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  _accept(client) {
    if (this.refuse) {
      client.resetAndDestroy();
      return;
    }
    this.connections += 1;
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const dropping = { replies: false };
    this._track(client, upstream);
    this._track(upstream, client);
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (this.dropReplies) dropping.replies = true; // from now on, for this connection
      if (!dropping.replies) client.write(data);
    });
  }

  _track(socket, peer) {
    this._sockets.add(socket);
    socket.on("error", () => {}); // a reset peer is what this proxy is for
    socket.on("close", () => {
      this._sockets.delete(socket);
      peer.destroy();
    });
  }

  /** Reset every connection through the proxy (TCP RST both ways, no close frame); new ones get through. */
  cut() {
    this.dropReplies = false;
    for (const socket of this._sockets) socket.resetAndDestroy();
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}
