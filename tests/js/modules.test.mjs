// The layout of rusty_ws/static/: one concern per module, who may import whom, and the
// public names that rusty_ws.js (and the older paths protocol.js, jwt_utils.js) still export.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { describe, test } from "node:test";

const STATIC = new URL("../../rusty_ws/static/", import.meta.url);

/** Each module, and the only modules of static/ it may import (the layers, bottom first). */
const LAYERS = {
  "errors.js": [],
  "backoff.js": [],
  "protocol.js": ["backoff.js", "errors.js"],
  "transport.js": ["errors.js"],
  "jwt_utils.js": ["errors.js", "transport.js"],
  "recovery.js": ["protocol.js"],
  "replies.js": ["errors.js", "protocol.js"],
  "client.js": ["backoff.js", "errors.js", "jwt_utils.js", "protocol.js", "recovery.js", "replies.js", "transport.js"],
  "rusty_ws.js": ["client.js", "jwt_utils.js", "protocol.js", "recovery.js", "transport.js"],
  "page.js": ["rusty_ws.js"],
};

/** Where each public name is defined: rusty_ws.js re-exports exactly these. */
const HOMES = {
  "errors.js": ["AuthError", "ConnectionClosedError", "RustyWsError", "ServerError"],
  "backoff.js": [
    "CloseCode", "ClosePolicy", "MAX_RETRY_AFTER_MS", "RECONNECT_JITTER_MS", "backoffDelays", "closePolicy", "firstDelay",
    "reconnectWindow", "retryAfterDelay",
  ],
  "protocol.js": [
    "MAX_EPOCH_LENGTH", "MAX_NAME_LENGTH", "MAX_OFFSET", "MAX_PUBLISH_ID_LENGTH", "MAX_SESSION_LENGTH",
    "MAX_TOPIC_LENGTH", "PING", "PONG", "ReplyKind", "authCommand",
    "checkLimit", "checkName", "checkPublishId", "checkSession", "checkSince", "checkTopic", "historyCommand",
    "isErrorReply", "parseAck", "parseAuthenticated", "parseDelivery", "parseError", "parseHistory",
    "parseRefreshed", "parseSubscribed", "positionOf", "publishCommand", "refreshCommand", "registerNameCommand", "registerSessionCommand", "replyKind", "subscribeCommand",
    "subscribeJsonCommand", "unsubscribeCommand",
  ],
  "recovery.js": ["RecoveryFailure"],
  "transport.js": ["authUrlFor", "openWebSocket", "withToken"],
  "jwt_utils.js": ["JwtManager", "REFRESH_THRESHOLD_MS", "createAuthenticatedWebSocket", "jwtManager", "refreshUrlFor"],
  "client.js": ["RustyWsClient", "State"],
};

/** What protocol.js and jwt_utils.js exported before the split: other code imports these from there. */
const KEPT = {
  "protocol.js": [
    "CloseCode", "ClosePolicy", "ConnectionClosedError", "MAX_NAME_LENGTH", "MAX_SESSION_LENGTH",
    "MAX_TOPIC_LENGTH", "PONG", "RustyWsError", "ServerError", "backoffDelays", "checkName", "checkSession",
    "checkTopic", "closePolicy", "isErrorReply", "parseDelivery", "parseError", "publishCommand",
    "subscribeCommand", "unsubscribeCommand",
  ],
  "jwt_utils.js": [
    "AuthError", "JwtManager", "REFRESH_THRESHOLD_MS", "authUrlFor", "createAuthenticatedWebSocket",
    "jwtManager", "openWebSocket", "refreshUrlFor", "withToken",
  ],
};

const load = (file) => import(new URL(file, STATIC).href);
const source = (file) => readFileSync(new URL(file, STATIC), "utf8");

/** The source without comments (line comments, JSDoc blocks): usage examples may say console.log. */
function code(file) {
  return source(file).replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

/** The static/ modules that `file` imports or re-exports from. */
function importsOf(file) {
  const found = [...code(file).matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']/g)]
    .map((match) => match[1]);
  for (const specifier of found) assert.match(specifier, /^\.\/[\w-]+\.js$/, `${file} imports ${specifier}`);
  return [...new Set(found.map((specifier) => specifier.slice(2)))].sort();
}

describe("modules", () => {
  test("every module of static/ has its place in the layers", () => {
    const modules = readdirSync(STATIC).filter((name) => name.endsWith(".js")).sort();
    assert.deepEqual(modules, Object.keys(LAYERS).sort());
  });

  for (const [file, allowed] of Object.entries(LAYERS)) {
    test(allowed.length ? `${file} imports only ${allowed.join(", ")}` : `${file} imports nothing`, () => {
      assert.deepEqual(importsOf(file), allowed);
    });
  }

  test("rusty_ws.js exports the whole public API, each name the binding of its home module", async () => {
    const api = await load("rusty_ws.js");
    const expected = Object.values(HOMES).flat().sort();
    assert.deepEqual(Object.keys(api).sort(), expected);
    for (const [file, names] of Object.entries(HOMES)) {
      const home = await load(file);
      for (const name of names) assert.equal(api[name], home[name], `${name} from ${file}`);
    }
  });

  test("rusty_ws.js only re-exports, and keeps its usage example", () => {
    assert.equal(code("rusty_ws.js").match(/\b(?:class|function|const|let|var)\b/), null);
    assert.match(source("rusty_ws.js"), /import \{ RustyWsClient \} from "http:\/\/127\.0\.0\.1:8081\/rusty_ws\/rusty_ws\.js"/);
  });

  test("protocol.js and jwt_utils.js still export what they did, as the same bindings", async () => {
    const api = await load("rusty_ws.js");
    for (const [file, names] of Object.entries(KEPT)) {
      const module = await load(file);
      for (const name of names) {
        assert.ok(name in module, `${file} no longer exports ${name}`);
        assert.equal(module[name], api[name], `${file}'s ${name}`);
      }
    }
  });

  test("protocol.js is the wire grammar only: no client, no tokens, no sockets, no classes", async () => {
    const protocol = await load("protocol.js");
    for (const name of ["RustyWsClient", "State", "JwtManager", "openWebSocket", "AuthError"]) {
      assert.ok(!(name in protocol), `protocol.js exports ${name}`);
    }
    const text = code("protocol.js");
    assert.equal(text.match(/\bclass\b|\bWebSocket\b|setTimeout|setInterval|\bfetch\b|EventTarget/), null);
  });

  test("each concern lives in one module", () => {
    const defines = (file, pattern) => new RegExp(pattern).test(code(file));
    for (const file of Object.keys(LAYERS)) {
      assert.equal(defines(file, String.raw`class RustyWsClient\b`), file === "client.js", file);
      assert.equal(defines(file, String.raw`class JwtManager\b`), file === "jwt_utils.js", file);
      assert.equal(defines(file, String.raw`class \w*Error\b`), file === "errors.js", file);
      assert.equal(defines(file, String.raw`function openWebSocket\b`), file === "transport.js", file);
      assert.equal(defines(file, String.raw`function\*? ?(?:closePolicy|backoffDelays)\b`), file === "backoff.js", file);
      assert.equal(defines(file, String.raw`new \w*WebSocket\w*\(`), file === "transport.js", file);
    }
  });

  test("the library never writes to the console", () => {
    for (const file of Object.keys(LAYERS).filter((name) => name !== "page.js")) {
      assert.equal(code(file).match(/\bconsole\./), null, file);
    }
  });
});
