// Reconnection, close-code policies, keepalive and hostile frames, against a scripted hub.
//
// The scripted hub (ws's server on 127.0.0.1) answers `ping` with `pong` and records every
// command, so a test can close a connection with any code, stay silent, or send garbage.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { WebSocketServer } from "ws";

import { ConnectionClosedError, State } from "../../rusty_ws/static/rusty_ws.js";
import { Inbox, MS, WAIT, connected, nextEvent, within } from "./helpers.mjs";

/** Fast backoff for tests: 0-20 MS first, at most 80 MS. */
const FAST = { backoff: { initial: 20 * MS, cap: 80 * MS } };

class ScriptedHub {
  constructor() {
    this.server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    this.sockets = [];
    this.commands = []; // [connection number, text]
    this.silent = false; // stop answering pings (a hub that hangs)
    this.refuse = false; // refuse upgrades (a hub that is down)
    this._connected = [];
    this.server.on("connection", (socket) => {
      if (this.refuse) {
        socket.terminate();
        return;
      }
      const number = this.sockets.push(socket);
      socket.on("message", (data) => {
        const text = data.toString();
        this.commands.push([number, text]);
        if (text === "ping" && !this.silent) socket.send("pong");
      });
      for (const resolve of this._connected.splice(0)) resolve(socket);
    });
  }

  get url() {
    return `ws://127.0.0.1:${this.server.address().port}/ws`;
  }

  /** The last connection, or the next one if none is newer than `count` connections. */
  connection(count) {
    if (this.sockets.length > count) return Promise.resolve(this.sockets[count]);
    return within(new Promise((resolve) => this._connected.push(resolve)), WAIT, "a connection");
  }

  commandsOf(number) {
    return this.commands.filter(([n]) => n === number).map(([, text]) => text);
  }

  close() {
    for (const socket of this.sockets) socket.terminate();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

let hub;
let clients;

beforeEach(async () => {
  hub = new ScriptedHub();
  await new Promise((resolve) => hub.server.once("listening", resolve));
  clients = [];
});

afterEach(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await hub.close();
});

async function client(options = {}) {
  const made = await connected(hub.url, { name: "c", sessionId: "s", keepaliveInterval: 0, ...FAST, ...options });
  clients.push(made);
  return made;
}

describe("close codes", () => {
  test("4200 (server restarting): reconnect at once, restore name, session and subscriptions", async () => {
    const c = await client();
    await c.subscribe("A");
    await c.subscribe("B");
    const reconnecting = nextEvent(c, "reconnecting");
    const reopened = nextEvent(c, "open");
    const closed = nextEvent(c, "close");
    hub.sockets[0].close(4200, "server restarting");
    assert.deepEqual(await closed, { code: 4200, reason: "server restarting", willReconnect: true });
    assert.deepEqual(await reconnecting, { attempt: 1, delay: 0 });
    assert.deepEqual(await reopened, { reconnected: true });
    assert.deepEqual(hub.commandsOf(2), ["register-name:c", "register-session:s", "subscribe:A|s", "subscribe:B|s", "ping"]);
    assert.equal(c.state, State.OPEN);
  });

  test("4100 (slow consumer): back off before the first attempt", async () => {
    const c = await client();
    const reconnecting = nextEvent(c, "reconnecting");
    const reopened = nextEvent(c, "open");
    hub.sockets[0].close(4100, "slow");
    const { attempt, delay } = await reconnecting;
    assert.equal(attempt, 1);
    assert.ok(delay >= 0 && delay <= FAST.backoff.initial, String(delay));
    await reopened;
  });

  test("4003 (forbidden): do not reconnect, and waiting calls reject with the code", async () => {
    const c = await client();
    hub.silent = true;
    const pending = c.publish("T", 1);
    const closed = nextEvent(c, "close");
    (await hub.connection(0)).close(4003, "go away");
    assert.deepEqual(await closed, { code: 4003, reason: "go away", willReconnect: false });
    const error = await pending.then(() => null, (e) => e);
    assert.ok(error instanceof ConnectionClosedError);
    assert.deepEqual([error.closeCode, error.reason], [4003, "go away"]);
    assert.equal(c.state, State.CLOSED);
    await assert.rejects(c.ping(), { closeCode: 4003 });
    assert.equal(hub.sockets.length, 1);
  });

  test("a dropped connection (1006) backs off and retries until the hub is back", async () => {
    const c = await client();
    hub.refuse = true;
    const attempts = [];
    const third = new Promise((resolve) => {
      c.addEventListener("reconnecting", (event) => {
        attempts.push(event.detail);
        if (event.detail.attempt === 3) resolve();
      });
    });
    hub.sockets[0].terminate();
    await within(third, WAIT, "three attempts");
    assert.equal(c.state, State.RECONNECTING);
    assert.ok(attempts.every(({ delay }) => delay <= FAST.backoff.cap), JSON.stringify(attempts));
    const reopened = nextEvent(c, "open");
    hub.refuse = false;
    await reopened;
    assert.equal(c.state, State.OPEN);
  });

  test("calls made while reconnecting wait, then go out after the subscriptions are restored", async () => {
    const c = await client();
    await c.subscribe("A");
    hub.refuse = true;
    const reconnecting = nextEvent(c, "reconnecting");
    hub.sockets[0].terminate();
    await reconnecting;
    const published = c.publish("A", "queued");
    hub.refuse = false;
    await published;
    const second = hub.sockets.length;
    const commands = hub.commandsOf(second);
    assert.deepEqual(commands.slice(0, 4), ["register-name:c", "register-session:s", "subscribe:A|s", "ping"]);
    assert.match(commands[4], /^publish-json:\{"publisher_name":"c","topic":"A","payload":"queued",/);
  });

  test("close() during an outage stops the reconnection", async () => {
    const c = await client();
    hub.refuse = true;
    const reconnecting = nextEvent(c, "reconnecting");
    hub.sockets[0].terminate();
    await reconnecting;
    const closed = nextEvent(c, "close");
    await c.close();
    assert.equal((await closed).willReconnect, false);
    assert.equal(c.state, State.CLOSED);
    await assert.rejects(c.publish("A", 1), ConnectionClosedError);
  });

  test("reconnect: false stays closed after a drop", async () => {
    const c = await client({ reconnect: false });
    const closed = nextEvent(c, "close");
    hub.sockets[0].close(4200, "server restarting");
    assert.equal((await closed).willReconnect, false);
    assert.equal(c.state, State.CLOSED);
  });
});

describe("registration", () => {
  test("a default session the hub would refuse (a name with '|') fails connect() before any command", async () => {
    await assert.rejects(connected(hub.url, { name: "a|b", keepaliveInterval: 0 }),
      { name: "RustyWsError", code: "invalid_session" });
    assert.deepEqual(hub.commands, []);
  });
});

describe("waiting for the hub", () => {
  test("a call the hub never answers times out", async () => {
    const c = await client({ timeout: 100 * MS });
    hub.silent = true;
    await assert.rejects(c.ping(), { code: "timeout" });
  });

  test("keepalive notices a hub that stopped answering, and reconnects", async () => {
    const c = await client({ keepaliveInterval: 50 * MS, timeout: 200 * MS });
    const closed = nextEvent(c, "close");
    hub.silent = true;
    assert.deepEqual(await closed, { code: 1006, reason: "keepalive timeout", willReconnect: true });
    const reopened = nextEvent(c, "open");
    hub.silent = false;
    await reopened;
  });

  test("an error: before the pong rejects that call; one nobody waited for is an error event", async () => {
    const c = await client();
    const socket = await hub.connection(0);
    socket.removeAllListeners("message");
    socket.on("message", (data) => {
      if (data.toString() === "ping") socket.send("pong");
      else socket.send('error:{"code":"invalid_topic","message":"no","command":"subscribe"}');
    });
    await assert.rejects(c.subscribe("A"), { name: "ServerError", code: "invalid_topic" });
    assert.deepEqual(c.subscriptions, []);
    const unsolicited = nextEvent(c, "error");
    socket.send('error:{"code":"unavailable","message":"broker down"}');
    assert.equal((await unsolicited).error.code, "unavailable");
    await c.ping(); // the pong queue is still in step
  });
});

describe("hostile frames from the hub", () => {
  test("garbage is reported, never thrown, and deliveries go on", async () => {
    const c = await client();
    const errors = [];
    c.addEventListener("error", (event) => errors.push(event.detail.error.code));
    const proto = new Inbox(c, "__proto__");
    const normal = new Inbox(c, "T");
    const socket = await hub.connection(0);
    for (const text of ["not json", "[1,2]", "null", '{"topic":5}', "error:", "{"]) socket.send(text);
    socket.send(Buffer.from([1, 2, 3]), { binary: true });
    socket.send('{"topic":"__proto__","payload":"still a topic"}');
    socket.send('{"topic":"T","payload":{"constructor":{"prototype":{"polluted":true}}}}');
    assert.equal((await proto.next()).payload, "still a topic");
    assert.deepEqual((await normal.next()).payload, { constructor: { prototype: { polluted: true } } });
    assert.equal({}.polluted, undefined);
    assert.deepEqual(errors, ["invalid_message", "invalid_message", "invalid_message", "invalid_message", "unknown",
      "invalid_message", "invalid_message"]);
    await c.ping();
  });
});
