// Reconnection, close-code policies, keepalive and hostile frames, against a scripted hub.
//
// The scripted hub (ws's server on 127.0.0.1) answers as a hub with history off does (`ping`
// with `pong`, `subscribe-json` with `subscribed:`, a publish's id with `ack:`) and records every
// command, so a test can close a connection with any code, stay silent, or send garbage; a test
// may script the answers itself (`answer`) to send offsets, replays and duplicates.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { WebSocketServer } from "ws";

import { ConnectionClosedError, RecoveryFailure, State } from "../../rusty_ws/static/rusty_ws.js";
import { Inbox, MS, WAIT, connected, nextEvent, within } from "./helpers.mjs";

/** Fast backoff for tests: 0-20 MS first, at most 80 MS. */
const FAST = { backoff: { initial: 20 * MS, cap: 80 * MS } };

class ScriptedHub {
  constructor() {
    this.busy = null; // a Retry-After value: refuse upgrades with 503 and it (a hub pacing a storm)
    this.refused = 0; // upgrades refused with 503 so far
    this.server = new WebSocketServer({
      host: "127.0.0.1", port: 0,
      verifyClient: (_, done) => {
        if (this.busy === null) return done(true);
        this.refused += 1;
        return done(false, 503, "Service Unavailable", { "Retry-After": this.busy });
      },
    });
    this.sockets = [];
    this.commands = []; // [connection number, text]
    this.silent = false; // stop answering (a hub that hangs)
    this.refuse = false; // refuse upgrades (a hub that is down)
    this.answer = historyOff; // (socket, text, connection number) => void
    this._connected = [];
    this._awaited = []; // {accept, resolve}: tests waiting for a command
    this.urls = []; // the request URL of each connection, in order
    this.server.on("connection", (socket, request) => {
      if (this.refuse) {
        socket.terminate();
        return;
      }
      this.urls.push(request.url);
      const number = this.sockets.push(socket);
      socket.on("message", (data) => {
        const text = data.toString();
        this.commands.push([number, text]);
        for (const waiter of this._awaited.filter(({ accept }) => accept(text, number))) {
          this._awaited.splice(this._awaited.indexOf(waiter), 1);
          waiter.resolve(text);
        }
        if (!this.silent) this.answer(socket, text, number);
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

  /** The first command, come or to come, that passes `accept(text, connection number)`. */
  command(accept) {
    const found = this.commands.find(([number, text]) => accept(text, number));
    if (found) return Promise.resolve(found[1]);
    return within(new Promise((resolve) => this._awaited.push({ accept, resolve })), WAIT, "a command");
  }

  commandsOf(number) {
    return this.commands.filter(([n]) => n === number).map(([, text]) => text);
  }

  close() {
    for (const socket of this.sockets) socket.terminate();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/** The answers of a hub with RUSTY_WS_HISTORY_SIZE=0. */
function historyOff(socket, text) {
  if (text === "ping") socket.send("pong");
  const [verb, argument] = [text.slice(0, text.indexOf(":")), text.slice(text.indexOf(":") + 1)];
  if (verb === "subscribe-json") {
    const { topic, session_id: session, since } = JSON.parse(argument);
    socket.send(`subscribed:${JSON.stringify({ topic, session_id: session, ...(since ? { recovered: false } : {}) })}`);
  } else if (verb === "publish-json") {
    const { id } = JSON.parse(argument);
    if (id !== undefined) socket.send(`ack:${JSON.stringify({ id })}`);
  }
}

/** The JSON body of a recorded command (`verb:{...}`). */
const body = (command) => JSON.parse(command.slice(command.indexOf(":") + 1));

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

describe("first-frame auth, as the hub sees it", () => {
  test("auth: is the first frame, no token in the URL; 4002 -> a new login -> auth: with the new token", async () => {
    let logins = 0;
    const fetch = async () => ({
      ok: true, status: 200, json: async () => ({ token: `tok-${++logins}`, expires_in: 3600, session_id: "s" }),
    });
    hub.answer = (socket, text) => {
      if (text.startsWith("auth:")) socket.send(`authenticated:${JSON.stringify({ sub: "u", sid: "s", expires_in: 3600 })}`);
      else historyOff(socket, text);
    };
    const c = await client({ auth: { username: "u", password: "p", authUrl: "http://127.0.0.1:9/auth/token" }, fetch });
    await c.subscribe("A");
    assert.deepEqual(hub.commandsOf(1).slice(0, 4), ["auth:tok-1", "register-name:c", "register-session:s", "ping"]);
    assert.equal(hub.urls[0], "/ws");
    const closed = nextEvent(c, "close");
    const reopened = nextEvent(c, "open");
    hub.sockets[0].close(4002, "token expired: reconnect with a new token");
    assert.deepEqual(await closed, { code: 4002, reason: "token expired: reconnect with a new token", willReconnect: true });
    assert.deepEqual(await reopened, { reconnected: true });
    assert.equal(logins, 2);
    assert.deepEqual(hub.commandsOf(2), ["auth:tok-2", "register-name:c", "register-session:s", "ping",
      'subscribe-json:{"topic":"A","session_id":"s"}']);
    assert.equal(hub.urls[1], "/ws");
  });

  test("a new token from the JwtManager goes in-band as refresh:, answered by refreshed:", async () => {
    let logins = 0;
    const fetch = async () => ({
      ok: true, status: 200, json: async () => ({ token: `tok-${++logins}`, expires_in: 3600, session_id: "s" }),
    });
    hub.answer = (socket, text) => {
      if (text.startsWith("auth:")) socket.send(`authenticated:${JSON.stringify({ sub: "u", sid: "s", expires_in: 3600 })}`);
      else if (text.startsWith("refresh:")) socket.send(`refreshed:${JSON.stringify({ expires_in: 3600 })}`);
      else historyOff(socket, text);
    };
    const c = await client({ auth: { username: "u", password: "p", authUrl: "http://127.0.0.1:9/auth/token" }, fetch });
    const refreshed = nextEvent(c, "refreshed");
    await c._tokens.refreshToken(); // what its timer does before expiry
    assert.deepEqual(await refreshed, { expiresIn: 3600 });
    assert.deepEqual(hub.commandsOf(1).filter((text) => text.startsWith("refresh:")), ["refresh:tok-2"]);
    assert.equal(hub.sockets.length, 1);
  });
});

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
    const { attempt, delay } = await reconnecting; // up to twice the back-off's first delay, at most 1 s
    assert.equal(attempt, 1);
    assert.ok(delay >= 0 && delay <= Math.min(1000, 2 * FAST.backoff.initial), String(delay));
    assert.deepEqual(await reopened, { reconnected: true });
    assert.deepEqual(hub.commandsOf(2), ["register-name:c", "register-session:s", "ping",
      'subscribe-json:{"topic":"A","session_id":"s"}', 'subscribe-json:{"topic":"B","session_id":"s"}']);
    assert.equal(c.state, State.OPEN);
  });

  for (const [share, end] of [[1, "top"], [0, "bottom"]]) {
    test(`4200 naming a window: the first attempt waits a random part of it (the ${end} of it)`, async (t) => {
      const c = await client();
      const reconnecting = nextEvent(c, "reconnecting");
      const reopened = nextEvent(c, "open");
      let announced = null; // when the client said it would wait, and started to
      c.addEventListener("reconnecting", () => { announced ??= performance.now(); });
      const attempted = hub.connection(1).then(() => performance.now());
      t.mock.method(Math, "random", () => share); // the client's random draw, pinned: the wait is exact
      hub.sockets[0].close(4200, "server restarting; reconnect within 1.5 s");
      const { attempt, delay } = await reconnecting;
      assert.equal(attempt, 1);
      assert.equal(delay, share * 1500); // the hub's window, not twice the quick back-off's first delay
      const waited = (await attempted) - announced;
      assert.ok(waited >= delay - 2 && waited <= delay + 500 * MS, String(waited)); // (timers have ms steps)
      await reopened;
    });
  }

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

  test("a 503 with Retry-After waits what it says (plus up to a second), not the back-off", async (t) => {
    const c = await client();
    hub.busy = "1";
    const attempts = [];
    const second = new Promise((resolve) => {
      c.addEventListener("reconnecting", (event) => {
        attempts.push({ ...event.detail, at: performance.now() });
        if (event.detail.attempt === 2) resolve();
      });
    });
    t.mock.method(Math, "random", () => 0.5); // the client's random draws, pinned: the waits are exact
    hub.sockets[0].close(4200, "server restarting");
    await within(second, WAIT, "a second attempt");
    const attempted = hub.connection(1).then(() => performance.now());
    assert.equal(hub.refused, 1);
    const [first, paced] = attempts;
    assert.equal(first.delay, 0.5 * 2 * FAST.backoff.initial, JSON.stringify(attempts)); // "reconnect now"
    assert.equal(paced.delay, 1500, JSON.stringify(attempts)); // the hub's 1 s and half of one more, not the back-off
    const reopened = nextEvent(c, "open", () => true, 3 * WAIT);
    hub.busy = null;
    await reopened;
    assert.ok((await attempted) - paced.at >= paced.delay - 2, JSON.stringify(attempts)); // (timers have ms steps)
    assert.equal(c.state, State.OPEN);
  });

  test("a 503 whose Retry-After is not a small whole number backs off as usual", async () => {
    const c = await client();
    hub.busy = "Wed, 21 Oct 2026 07:28:00 GMT";
    const second = new Promise((resolve) => {
      c.addEventListener("reconnecting", (event) => {
        if (event.detail.attempt === 2) resolve(event.detail);
      });
    });
    hub.sockets[0].close(4200, "server restarting");
    const { delay } = await within(second, WAIT, "a second attempt");
    assert.ok(delay <= FAST.backoff.cap, `${delay}`);
    hub.busy = null;
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
    assert.deepEqual(commands.slice(0, 4), ["register-name:c", "register-session:s", "ping",
      'subscribe-json:{"topic":"A","session_id":"s"}']);
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
      else socket.send('error:{"code":"invalid_topic","message":"no","command":"subscribe-json"}');
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

describe("recovery and acknowledgements, scripted", () => {
  /** A delivery of `topic` in session "s" at `offset` of epoch "E". */
  const delivery = (topic, offset) => JSON.stringify({
    publisher_name: "p", topic, payload: offset, timestamp: "t", session_id: "s", offset, epoch: "E",
  });

  test("resubscribes from the last offset seen; drops duplicates; marks replayed messages", async () => {
    hub.answer = (socket, text, number) => {
      if (text === "ping") socket.send("pong");
      if (!text.startsWith("subscribe-json:")) return;
      const reply = { topic: "A", session_id: "s" };
      if (number === 1) {
        socket.send(`subscribed:${JSON.stringify({ ...reply, offset: 5, epoch: "E" })}`);
        for (const offset of [6, 7, 5]) socket.send(delivery("A", offset)); // 5: already before the top
      } else {
        for (const offset of [6, 7, 8]) socket.send(delivery("A", offset)); // 6 and 7 again: duplicates
        socket.send(`subscribed:${JSON.stringify({ ...reply, offset: 8, epoch: "E", recovered: true })}`);
        for (const offset of [8, 9]) socket.send(delivery("A", offset)); // 8 again
      }
    };
    const c = await client();
    const seen = [];
    c.onMessage("A", (payload, message, { replayed }) => seen.push([payload, replayed]));
    const nine = nextEvent(c, "message", ({ message }) => message.payload === 9);
    const seven = nextEvent(c, "message", ({ message }) => message.payload === 7);
    await c.subscribe("A");
    await seven;
    assert.deepEqual(c.position("A"), { offset: 7, epoch: "E" });
    const recovered = nextEvent(c, "recovered");
    hub.sockets[0].terminate();
    assert.deepEqual(await recovered, { topic: "A", sessionId: "s", count: 1 });
    await nine;
    assert.deepEqual(body(hub.commandsOf(2)[3]), { topic: "A", session_id: "s", since: { offset: 7, epoch: "E" } });
    assert.deepEqual(seen, [[6, false], [7, false], [8, true], [9, false]]);
  });

  test("recovered: false with the same epoch is messages_dropped; the subscription goes on", async () => {
    hub.answer = (socket, text, number) => {
      if (text === "ping") socket.send("pong");
      if (!text.startsWith("subscribe-json:")) return;
      const top = number === 1 ? 3 : 250;
      socket.send(`subscribed:${JSON.stringify({ topic: "A", session_id: "s", offset: top, epoch: "E",
        ...(number === 1 ? {} : { recovered: false }) })}`);
      if (number > 1) socket.send(delivery("A", 251));
    };
    const c = await client();
    await c.subscribe("A");
    const failed = nextEvent(c, "recoveryfailed");
    const live = nextEvent(c, "message");
    hub.sockets[0].terminate();
    assert.deepEqual(await failed, {
      topic: "A", sessionId: "s", reason: RecoveryFailure.MESSAGES_DROPPED, since: { offset: 3, epoch: "E" },
      offset: 250, epoch: "E", count: 0,
    });
    assert.equal((await live).message.offset, 251);
  });

  test("invalid_since on a resubscription: told, and subscribed again from the hub's top", async () => {
    hub.answer = (socket, text, number) => {
      if (text === "ping") socket.send("pong");
      if (!text.startsWith("subscribe-json:")) return;
      if (number > 1 && body(text).since) {
        socket.send('error:{"code":"invalid_since","message":"past the top","command":"subscribe-json"}');
      } else {
        socket.send(`subscribed:${JSON.stringify({ topic: "A", session_id: "s", offset: number === 1 ? 9 : 2, epoch: "E" })}`);
      }
    };
    const c = await client();
    await c.subscribe("A");
    const failed = nextEvent(c, "recoveryfailed");
    const reopened = nextEvent(c, "open");
    hub.sockets[0].terminate();
    assert.equal((await failed).reason, RecoveryFailure.UNKNOWN_POSITION);
    await reopened;
    assert.deepEqual(hub.commandsOf(2).slice(3).map(body), [
      { topic: "A", session_id: "s", since: { offset: 9, epoch: "E" } }, { topic: "A", session_id: "s" }]);
    assert.deepEqual(c.position("A"), { offset: 2, epoch: "E" });
  });

  test("a publish without its ack goes out again, the same frame, after the reconnection", async () => {
    hub.answer = (socket, text, number) => {
      if (text === "ping") socket.send("pong");
      if (text.startsWith("publish-json:") && number > 1) {
        socket.send(`ack:${JSON.stringify({ id: body(text).id, offset: 4, epoch: "E" })}`);
      }
    };
    const c = await client();
    const publishing = c.publish("A", "once");
    await hub.command((text) => text.startsWith("publish-json:"));
    hub.sockets[0].terminate();
    const ack = await publishing;
    const [first] = hub.commandsOf(1).filter((t) => t.startsWith("publish-json:"));
    const again = hub.commandsOf(2).filter((t) => t.startsWith("publish-json:"));
    assert.deepEqual(again, [first]);
    assert.deepEqual(ack, { id: body(first).id, offset: 4, epoch: "E" });
  });

  test("publishes waiting for acks reject when the client closes, or after the timeout", async () => {
    const c = await client({ timeout: 200 });
    hub.silent = true;
    await assert.rejects(c.publish("A", 1), { code: "timeout" });
    const rejected = assert.rejects(c.publish("A", 2), ConnectionClosedError);
    await hub.command((text) => text.includes('"payload":2'));
    await c.close();
    await rejected;
  });

  test("a pong proves the replies before it will not come: they reject, and the calls stay in step", async () => {
    hub.answer = (socket, text) => {
      if (text === "ping") socket.send("pong"); // a hub that never acknowledges a publish
    };
    const c = await client();
    const unacked = c.publish("A", 1);
    await c.ping();
    await assert.rejects(unacked, { code: "unanswered" });
    await c.ping();
  });

  test("a reply nothing waits for is reported, and the replies stay in step", async () => {
    const c = await client();
    const reported = nextEvent(c, "error");
    (await hub.connection(0)).send('ack:{"id":"nobody"}');
    assert.equal((await reported).error.code, "invalid_message");
    await c.ping();
    assert.deepEqual(await c.publish("A", 1, { id: "mine" }), { id: "mine", offset: null, epoch: null });
  });
});
