// Test helpers: the hub's address, and waits on events with timeouts (never sleeps).

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
  return { http, ws: `${http.replace(/^http/, "ws")}/ws`, authUrl: `${http}/auth/token` };
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
