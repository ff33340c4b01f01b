// RustyWsClient and jwt_utils.js in Node, against a real hub started by tests/js/test_node.py.
// That hub allows 8 subscriptions per connection; a second one issues 4-second tokens.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import WebSocket from "ws";

import { JwtManager, createAuthenticatedWebSocket, jwtManager } from "../../rusty_ws/static/jwt_utils.js";
import {
  AuthError,
  ConnectionClosedError,
  RustyWsClient,
  RustyWsError,
  ServerError,
  State,
} from "../../rusty_ws/static/rusty_ws.js";
import { Inbox, WAIT, connected, hub, nextEvent, within } from "./helpers.mjs";

const HUB = hub();
const open = [];

/** A connected client that is closed after the file's tests. */
async function client(options) {
  const made = await connected(HUB.ws, options);
  open.push(made);
  return made;
}

after(() => Promise.all(open.map((c) => c.close())));

describe("anonymous clients", () => {
  test("subscribe resolves once registered: a publish right after it arrives", async () => {
    const reader = await client({ name: "Reader", sessionId: "js-session-1" });
    const writer = await client({ name: "Writer", sessionId: "js-session-1" });
    const inbox = new Inbox(reader, "NetworkConnectedEvent");
    await reader.subscribe("NetworkConnectedEvent");
    const ack = await writer.publish("NetworkConnectedEvent", { up: true });
    assert.equal(ack.delivered, 1); // the reader: the hub says how many subscribers it was handed to
    const { payload, message } = await inbox.next();
    assert.deepEqual(payload, { up: true });
    assert.equal(message.publisher_name, "Writer");
    assert.equal(message.session_id, "js-session-1");
    assert.ok(!Number.isNaN(Date.parse(message.timestamp)));
    assert.deepEqual(reader.subscriptions, ["NetworkConnectedEvent"]);
  });

  test("default session is session-{name}, and sessions do not mix", async () => {
    const inA = await client({ name: "js-iso" });
    assert.equal(inA.sessionId, "session-js-iso");
    const inB = await client({ name: "other", sessionId: "js-elsewhere" });
    const seenA = new Inbox(inA, "Iso");
    const seenB = new Inbox(inB, "Iso");
    await inA.subscribe("Iso");
    await inB.subscribe("Iso");
    await inB.publish("Iso", "for B only");
    assert.equal((await seenB.next()).payload, "for B only");
    await inA.publish("Iso", "for A");
    // B's message was fanned out before B saw it, so before A published: A got only its own.
    assert.equal((await seenA.next()).payload, "for A");
    assert.equal(seenA.items.length, 0);
  });

  test("unsubscribe stops deliveries", async () => {
    const c = await client({ sessionId: "js-unsub" });
    const inbox = new Inbox(c, "Gone");
    const marker = new Inbox(c, "Marker");
    await c.subscribe("Gone");
    await c.subscribe("Marker");
    await c.unsubscribe("Gone");
    await c.publish("Gone", 1);
    await c.publish("Marker", 2);
    assert.equal((await marker.next()).payload, 2);
    assert.equal(inbox.items.length, 0);
    assert.deepEqual(c.subscriptions, ["Marker"]);
  });

  test("bad topics reject before anything is sent; the connection stays usable", async () => {
    const c = await client({ sessionId: "js-bad" });
    for (const topic of ["", "a|b", "x".repeat(257), "line\nbreak", 42]) {
      await assert.rejects(c.subscribe(topic), { code: "invalid_topic" });
      await assert.rejects(c.publish(topic, 1), { code: "invalid_topic" });
    }
    await c.ping();
    assert.equal(c.state, State.OPEN);
  });

  test("the hub's error: replies reject the call that caused them", async () => {
    const c = await client({ sessionId: "js-limit" });
    for (let i = 0; i < 8; i += 1) await c.subscribe(`T${i}`);
    const refused = await c.subscribe("T8").then(() => null, (error) => error);
    assert.ok(refused instanceof ServerError);
    assert.equal(refused.code, "too_many_subscriptions");
    assert.equal(refused.command, "subscribe-json");
    assert.equal(c.subscriptions.length, 8);
    await c.publish("T0", "still fine");
  });

  test("payloads of every JSON kind, and hostile text, arrive unchanged", async () => {
    const c = await client({ sessionId: "js-kinds" });
    const inbox = new Inbox(c, "Kinds");
    await c.subscribe("Kinds");
    const payloads = [null, 0, -1.5, "", "<img src=x onerror=alert(1)>", "🦀 \u2028", [1, [2]], { a: { b: null } }, true];
    for (const payload of payloads) await c.publish("Kinds", payload);
    for (const payload of payloads) assert.deepEqual((await inbox.next()).payload, payload);
    await c.publish("Kinds", undefined); // no payload: null on the wire
    assert.equal((await inbox.next()).payload, null);
  });

  test("a throwing handler is reported and does not stop the others", async () => {
    const c = await client({ sessionId: "js-throw" });
    c.onMessage("Boom", () => {
      throw new Error("handler bug");
    });
    const inbox = new Inbox(c, "Boom");
    const reported = nextEvent(c, "error");
    await c.subscribe("Boom");
    await c.publish("Boom", "x");
    assert.equal((await inbox.next()).payload, "x");
    assert.equal((await reported).error.message, "handler bug");
  });

  test("removing a handler, and the message event for every topic", async () => {
    const c = await client({ sessionId: "js-off" });
    const calls = [];
    const off = c.onMessage("Off", (payload) => calls.push(payload));
    await c.subscribe("Off");
    const first = nextEvent(c, "message");
    await c.publish("Off", 1);
    assert.equal((await first).message.payload, 1);
    off();
    const second = nextEvent(c, "message");
    await c.publish("Off", 2);
    assert.equal((await second).message.payload, 2);
    assert.deepEqual(calls, [1]);
  });

  test("close() is idempotent, ends in closed, and later calls reject", async () => {
    const c = await connected(HUB.ws, { sessionId: "js-close" });
    const states = [];
    c.addEventListener("statechange", (event) => states.push(event.detail.state));
    const closedEvent = nextEvent(c, "close");
    await c.close();
    await c.close();
    assert.equal(c.state, State.CLOSED);
    assert.deepEqual(states, [State.CLOSED]);
    assert.equal((await closedEvent).willReconnect, false);
    await assert.rejects(c.publish("T", 1), ConnectionClosedError);
    await c.connect(); // a closed client may connect again
    assert.equal(c.state, State.OPEN);
    await c.close();
  });

  test("connect() on a hub that is not there rejects", async () => {
    const c = new RustyWsClient("ws://127.0.0.1:9/ws", { WebSocket, timeout: WAIT });
    await assert.rejects(c.connect(), ConnectionClosedError);
    assert.equal(c.state, State.CLOSED);
  });
});

describe("logged-in clients", () => {
  test("auth logs in, binds the token's session, and deliveries carry the user", async () => {
    const c = await client({ name: "Client1", auth: { username: "testuser", password: "password" } });
    assert.equal(c.sessionId, "session-testuser");
    assert.ok(c.isAuthenticated());
    const inbox = new Inbox(c, "Signed");
    await c.subscribe("Signed");
    await c.publish("Signed", "hi");
    const { message } = await inbox.next();
    assert.equal(message.user, "testuser");
  });

  test("a session asked for is the token's session", async () => {
    const c = await client({ auth: { username: "testuser", password: "password" }, sessionId: "js-chosen" });
    assert.equal(c.sessionId, "js-chosen");
  });

  test("close() logs out a client that logged in itself; connect() logs in again", async () => {
    const c = await connected(HUB.ws, { auth: { username: "testuser", password: "password" } });
    await c.close();
    assert.ok(!c.isAuthenticated());
    await c.connect();
    assert.ok(c.isAuthenticated());
    await c.close();
  });

  test("a shared jwtManager keeps its token when a client closes", async () => {
    const tokens = new JwtManager();
    await tokens.authenticate(HUB.authUrl, "testuser", "password");
    const c = await connected(HUB.ws, { jwtManager: tokens });
    assert.equal(c.sessionId, "session-testuser");
    await c.close();
    assert.ok(tokens.isAuthenticated());
    tokens.clearToken();
  });

  test("wrong credentials reject connect() with the hub's code", async () => {
    const c = new RustyWsClient(HUB.ws, { WebSocket, auth: { username: "testuser", password: "nope" } });
    const refused = await c.connect().then(() => null, (error) => error);
    assert.ok(refused instanceof AuthError);
    assert.deepEqual([refused.code, refused.status], ["bad_credentials", 401]);
    assert.equal(c.state, State.CLOSED);
  });

  test("a session the token does not allow is refused by the hub: forbidden_session", async () => {
    const policy = hub("RUSTY_WS_POLICY_HTTP_URL"); // its users file grants testuser js-mine only
    const tokens = new JwtManager();
    await tokens.authenticate(policy.authUrl, "testuser", "password", "js-mine");
    const c = new RustyWsClient(policy.ws, { WebSocket, jwtManager: tokens, sessionId: "js-not-mine" });
    await assert.rejects(c.connect(), { name: "ServerError", code: "forbidden_session" });
    assert.equal(c.state, State.CLOSED);
    tokens.clearToken();
  });
});

describe("jwt_utils.js", () => {
  test("createAuthenticatedWebSocket resolves to an open socket that speaks the seed's protocol", async () => {
    const ws = await createAuthenticatedWebSocket(HUB.ws, HUB.authUrl, "testuser", "password", "js-seed", { WebSocket });
    assert.equal(ws.readyState, WebSocket.OPEN);
    assert.ok(jwtManager.isAuthenticated());
    assert.equal(jwtManager.getSessionId(), "js-seed");
    const frames = [];
    const pong = new Promise((resolve) => {
      ws.onmessage = (event) => (event.data === "pong" ? resolve() : frames.push(JSON.parse(event.data)));
    });
    ws.send("register-session:js-seed");
    ws.send("subscribe:Seed|js-seed");
    ws.send(`publish-json:${JSON.stringify({ topic: "Seed", payload: "hi", session_id: "js-seed" })}`);
    ws.send("ping");
    await within(pong);
    assert.deepEqual(frames.map((f) => [f.topic, f.payload, f.user]), [["Seed", "hi", "testuser"]]);
    ws.close();
    jwtManager.clearToken();
    assert.ok(!jwtManager.isAuthenticated());
    assert.equal(jwtManager.getToken(), null);
  });

  test("bad logins and unreachable hubs reject with AuthError", async () => {
    const tokens = new JwtManager();
    await assert.rejects(tokens.authenticate(HUB.authUrl, "testuser", "wrong"), { code: "bad_credentials", status: 401 });
    await assert.rejects(tokens.authenticate(HUB.authUrl, "", "x"), { code: "missing_fields", status: 400 });
    await assert.rejects(tokens.authenticate(HUB.authUrl, "testuser", "password", "a|b"), { code: "invalid_session" });
    await assert.rejects(tokens.authenticate("http://127.0.0.1:9/auth/token", "u", "p"), { code: "unreachable" });
    await assert.rejects(tokens.authenticate(`${HUB.http}/healthz`, "u", "p"), AuthError); // not a login endpoint
    assert.ok(!tokens.isAuthenticated());
    await assert.rejects(tokens.refreshToken(), { code: "token_expired" });
  });

  test("refreshIfNeeded refreshes only near expiry (the clock is injected)", async () => {
    let now = 1_000_000;
    const tokens = new JwtManager({ now: () => now, autoRefresh: false });
    await tokens.authenticate(HUB.authUrl, "testuser", "password", "js-refresh");
    assert.equal(tokens.msLeft(), 3599 * 1000); // expires_in less a second: exp counts whole seconds
    assert.equal(await tokens.refreshIfNeeded(), false);
    now += 3400 * 1000; // 200 s left: under the seed's 5 minutes
    assert.equal(await tokens.refreshIfNeeded(), true);
    assert.equal(tokens.getSessionId(), "js-refresh");
    assert.ok(tokens.msLeft() > 3000 * 1000);
    now += 3700 * 1000; // expired
    assert.equal(tokens.getToken(), null);
    assert.ok(!tokens.isAuthenticated());
  });

  test("tokens are refreshed in the background before they expire", async () => {
    // Its tokens live 4 s, counted as 3 (exp has whole seconds): refreshed with 2 s left, after 1 s.
    const short = hub("RUSTY_WS_SHORT_TOKEN_HTTP_URL");
    const tokens = new JwtManager();
    const first = await tokens.authenticate(short.authUrl, "testuser", "password", "js-auto");
    const refreshed = await nextEvent(tokens, "token", () => true, 2 * WAIT);
    assert.notEqual(refreshed.token, first);
    assert.equal(refreshed.sessionId, "js-auto");
    assert.ok(tokens.isAuthenticated());
    tokens.clearToken(); // and stops the timer: the test runner would otherwise wait for it
    assert.throws(() => new RustyWsClient(short.ws, { sessionId: "a|b" }), RustyWsError);
  });
});
