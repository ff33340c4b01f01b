// Tokens on live connections (issue 13), against real hubs: first-frame auth:, in-band refresh:,
// and 4002 -> a new token -> a reconnection. The hubs come from tests/js/test_node.py: one with
// 4-second tokens (RUSTY_WS_SHORT_TOKEN_HTTP_URL), one that requires auth: (RUSTY_WS_REQUIRE_AUTH_HTTP_URL).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import WebSocket from "ws";

import { AuthError, JwtManager, RustyWsClient, State } from "../../rusty_ws/static/rusty_ws.js";
import { Inbox, WAIT, hub, nextEvent } from "./helpers.mjs";

const SHORT = hub("RUSTY_WS_SHORT_TOKEN_HTTP_URL");
const REQUIRE = hub("RUSTY_WS_REQUIRE_AUTH_HTTP_URL");
const LOGIN = { username: "testuser", password: "password" };

/** A `ws` WebSocket that records every URL it opens and every frame it sends, in `Recording.log`. */
function recording() {
  const log = [];
  class Recording extends WebSocket {
    constructor(url, ...rest) {
      super(url, ...rest);
      this._entry = { url: String(url), sent: [] };
      log.push(this._entry);
    }

    send(data, ...rest) {
      this._entry.sent.push(String(data));
      return super.send(data, ...rest);
    }
  }
  Recording.log = log;
  return Recording;
}

/** Every "close" event of `client`, as it happens. */
function closes(client) {
  const seen = [];
  client.addEventListener("close", (event) => seen.push(event.detail));
  return seen;
}

describe("first-frame auth", () => {
  test("auth: is the first frame, and no token is in the URL", async () => {
    const Recording = recording();
    const c = new RustyWsClient(REQUIRE.ws, { WebSocket: Recording, auth: LOGIN, name: "first", timeout: WAIT });
    await c.connect();
    try {
      assert.equal(c.sessionId, "session-testuser");
      const [{ url, sent }] = Recording.log;
      assert.equal(url, REQUIRE.ws);
      assert.ok(!url.includes("token"), url);
      assert.match(sent[0], /^auth:eyJ/);
      assert.deepEqual(sent.slice(1, 4), ["register-name:first", "register-session:session-testuser", "ping"]);
      const inbox = new Inbox(c, "Authed");
      await c.subscribe("Authed");
      await c.publish("Authed", "hi");
      assert.equal((await inbox.next()).message.user, "testuser"); // the connection is the token's user
    } finally {
      await c.close();
    }
  });

  test("tokenInUrl keeps ?token= for old hubs, and sends no auth:", async () => {
    const Recording = recording();
    const c = new RustyWsClient(REQUIRE.ws, { WebSocket: Recording, auth: LOGIN, tokenInUrl: true, timeout: WAIT });
    await c.connect();
    await c.close();
    const [{ url, sent }] = Recording.log;
    assert.match(url, /[?&]token=eyJ/);
    assert.ok(!sent.some((frame) => frame.startsWith("auth:")), sent);
  });

  test("a token the hub refuses in auth: rejects connect() with its code, and 4001 follows", async () => {
    const tokens = new JwtManager({ autoRefresh: false });
    await tokens.authenticate(REQUIRE.authUrl, "testuser", "password");
    tokens._token = `${tokens._token.slice(0, -4)}AAAA`; // a bad signature
    const c = new RustyWsClient(REQUIRE.ws, { WebSocket, jwtManager: tokens, timeout: WAIT });
    const refused = await c.connect().then(() => null, (error) => error);
    assert.ok(refused instanceof AuthError, String(refused));
    assert.deepEqual([refused.code, refused.status, refused.inBand], ["token_invalid", 401, true]);
    assert.equal(c.state, State.CLOSED);
    tokens.clearToken();
  });
});

describe("tokens on a live connection", () => {
  test("in-band refresh keeps the connection open past the first token's expiry", async () => {
    // 4-second tokens (3 by expires_in): the JwtManager refreshes after about 1 s, the client sends refresh:.
    const Recording = recording();
    const c = new RustyWsClient(SHORT.ws, { WebSocket: Recording, auth: LOGIN, name: "inband", timeout: WAIT });
    const closed = closes(c);
    await c.connect();
    try {
      const inbox = new Inbox(c, "Live");
      await c.subscribe("Live");
      const until = Date.now() + 2 * 4000; // two lifetimes
      let refreshes = 0;
      while (Date.now() < until) {
        await nextEvent(c, "refreshed", () => true, 2 * WAIT);
        refreshes += 1;
        await c.publish("Live", refreshes);
        assert.equal((await inbox.next()).payload, refreshes);
      }
      assert.ok(refreshes >= 3, `${refreshes} refreshes`);
      assert.deepEqual(closed, []);
      assert.equal(Recording.log.length, 1); // one socket all along
      assert.equal(Recording.log[0].sent.filter((frame) => frame.startsWith("refresh:")).length, refreshes);
    } finally {
      await c.close();
    }
  });

  test("4002 (token expired) -> a new login -> a reconnection with auth:", async () => {
    // Its JwtManager does not refresh by itself: the hub closes the connection when the token expires.
    const tokens = new JwtManager({ autoRefresh: false });
    const Recording = recording();
    const c = new RustyWsClient(SHORT.ws, { WebSocket: Recording, auth: LOGIN, jwtManager: tokens, timeout: WAIT });
    await c.connect();
    try {
      const inbox = new Inbox(c, "Expiring");
      await c.subscribe("Expiring");
      const first = Recording.log[0].sent[0];
      const closed = await nextEvent(c, "close", () => true, 2 * WAIT);
      assert.deepEqual(closed, { code: 4002, reason: "token expired: reconnect with a new token", willReconnect: true });
      assert.deepEqual(await nextEvent(c, "open"), { reconnected: true });
      assert.equal(Recording.log.length, 2);
      const again = Recording.log[1].sent[0];
      assert.match(again, /^auth:eyJ/);
      assert.notEqual(again, first); // a new token
      assert.ok(!Recording.log[1].url.includes("token"));
      await c.publish("Expiring", "after");
      assert.equal((await inbox.next()).payload, "after");
    } finally {
      await c.close();
      tokens.clearToken();
    }
  });

  test("4002 without a password and without a valid token: closed, no reconnection", async () => {
    const tokens = new JwtManager({ autoRefresh: false });
    await tokens.authenticate(SHORT.authUrl, "testuser", "password");
    const c = new RustyWsClient(SHORT.ws, { WebSocket, jwtManager: tokens, timeout: WAIT });
    await c.connect();
    const closed = await nextEvent(c, "close", () => true, 2 * WAIT);
    assert.deepEqual([closed.code, closed.willReconnect], [4002, false]);
    assert.equal(c.state, State.CLOSED);
    tokens.clearToken();
  });
});
