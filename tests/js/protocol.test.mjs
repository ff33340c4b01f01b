// The pure parts of the browser modules: grammar checks, error parsing, close policy, backoff, URLs.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ClosePolicy,
  RustyWsError,
  ServerError,
  backoffDelays,
  checkName,
  checkSession,
  checkTopic,
  closePolicy,
  isErrorReply,
  parseDelivery,
  parseError,
  publishCommand,
  registerNameCommand,
  registerSessionCommand,
  subscribeCommand,
} from "../../rusty_ws/static/protocol.js";
import { authUrlFor, refreshUrlFor, withToken } from "../../rusty_ws/static/jwt_utils.js";

describe("checks", () => {
  test("accepts what the hub accepts", () => {
    assert.equal(checkTopic("NetworkConnectedEvent"), "NetworkConnectedEvent");
    assert.equal(checkTopic("x".repeat(256)), "x".repeat(256));
    assert.equal(checkTopic("🦀".repeat(256)), "🦀".repeat(256)); // code points, as Python counts
    assert.equal(checkSession("session-A"), "session-A");
    assert.equal(checkName("a|b"), "a|b"); // a name may hold a bar; it never shares a frame with a session
  });

  for (const [what, check, code] of [["topic", checkTopic, "invalid_topic"], ["session", checkSession, "invalid_session"]]) {
    test(`refuses a bad ${what}`, () => {
      for (const bad of ["", "a|b", "x".repeat(257), "tab\there", "nl\n", "del\u007f", null, 5, undefined]) {
        assert.throws(() => check(bad), (error) => error instanceof RustyWsError && error.code === code, String(bad));
      }
    });
  }

  test("refuses a bad name", () => {
    for (const bad of ["", "x".repeat(257), "a\u0000b"]) {
      assert.throws(() => checkName(bad), { code: "invalid_name" });
    }
  });

  test("commands are built only from good parts", () => {
    assert.equal(subscribeCommand("T", "s"), "subscribe:T|s");
    assert.throws(() => subscribeCommand("T|other-session", "s"), { code: "invalid_topic" });
    const message = { publisher_name: "c", topic: "T", payload: { "</script>": [1] }, timestamp: "t", session_id: "s" };
    assert.equal(publishCommand(message), `publish-json:${JSON.stringify(message)}`);
    assert.throws(() => publishCommand({ ...message, session_id: "a|b" }), { code: "invalid_session" });
  });

  test("registrations are checked as the hub checks them (protocol.py's encoders)", () => {
    assert.equal(registerNameCommand("a|b"), "register-name:a|b");
    assert.equal(registerSessionCommand("session-A"), "register-session:session-A");
    assert.throws(() => registerNameCommand("a\nb"), { code: "invalid_name" });
    assert.throws(() => registerSessionCommand("session-a|b"), { code: "invalid_session" });
    assert.throws(() => registerSessionCommand(null), { code: "invalid_session" });
  });
});

describe("replies", () => {
  test("error replies become ServerErrors, even malformed ones", () => {
    const error = parseError('error:{"code":"forbidden_session","message":"no","command":"subscribe"}');
    assert.ok(error instanceof ServerError);
    assert.deepEqual([error.code, error.message, error.command], ["forbidden_session", "no", "subscribe"]);
    for (const text of ["error:", "error:not json", "error:[1]", "error:null", 'error:{"message":"x"}']) {
      assert.equal(parseError(text).code, "unknown", text);
    }
    assert.ok(isErrorReply("error:x") && !isErrorReply('{"topic":"error:"}'));
  });

  test("deliveries must be objects with a string topic", () => {
    assert.deepEqual(parseDelivery('{"topic":"T","payload":1}'), { topic: "T", payload: 1 });
    for (const text of ["", "pong", "[1]", "null", '"T"', '{"topic":5}', "{", '{"payload":1}']) {
      assert.equal(parseDelivery(text), null, text);
    }
    assert.equal(parseDelivery('{"topic":"__proto__"}').topic, "__proto__");
  });
});

describe("close policy", () => {
  test("the three rusty_ws ranges", () => {
    assert.equal(closePolicy(4000), ClosePolicy.DO_NOT_RECONNECT);
    assert.equal(closePolicy(4099), ClosePolicy.DO_NOT_RECONNECT);
    assert.equal(closePolicy(4100), ClosePolicy.BACK_OFF);
    assert.equal(closePolicy(4199), ClosePolicy.BACK_OFF);
    assert.equal(closePolicy(4200), ClosePolicy.RECONNECT_NOW);
    assert.equal(closePolicy(4299), ClosePolicy.RECONNECT_NOW);
  });

  test("standard codes, and unknown ones back off", () => {
    assert.equal(closePolicy(1001), ClosePolicy.RECONNECT_NOW);
    assert.equal(closePolicy(1012), ClosePolicy.RECONNECT_NOW);
    assert.equal(closePolicy(1008), ClosePolicy.DO_NOT_RECONNECT);
    for (const code of [1000, 1006, 1011, 1013, 3000, 4300, 4999, 0]) {
      assert.equal(closePolicy(code), ClosePolicy.BACK_OFF, String(code));
    }
  });
});

describe("backoff", () => {
  function take(generator, n) {
    return Array.from({ length: n }, () => generator.next().value);
  }

  test("random first delay, then doubling up to the cap, shortened by the jitter", () => {
    assert.deepEqual(take(backoffDelays({ initial: 100, cap: 500, random: () => 1 }), 6), [100, 50, 100, 200, 250, 250]);
    assert.deepEqual(take(backoffDelays({ initial: 100, cap: 500, random: () => 0 }), 6), [0, 100, 200, 400, 500, 500]);
  });

  test("every delay stays within its bounds", () => {
    const delays = take(backoffDelays({ initial: 500, cap: 30000 }), 50);
    assert.ok(delays.every((delay) => delay >= 0 && delay <= 30000));
    assert.ok(delays[0] <= 500);
  });

  test("refuses settings that cannot work", () => {
    assert.throws(() => backoffDelays({ factor: 0.5 }).next(), RangeError);
    assert.throws(() => backoffDelays({ jitter: 2 }).next(), RangeError);
  });
});

describe("urls", () => {
  test("auth and refresh URLs come from the hub's URLs, prefix included", () => {
    assert.equal(authUrlFor("ws://127.0.0.1:8081/ws"), "http://127.0.0.1:8081/auth/token");
    assert.equal(authUrlFor("wss://hub.example/realtime/ws?x=1"), "https://hub.example/realtime/auth/token");
    assert.equal(refreshUrlFor("http://127.0.0.1:8081/auth/token"), "http://127.0.0.1:8081/auth/refresh");
    assert.equal(refreshUrlFor("http://h/realtime/auth/token/"), "http://h/realtime/auth/refresh");
  });

  test("the token goes in the query, encoded, replacing an old one", () => {
    assert.equal(withToken("ws://h/ws", "a.b.c"), "ws://h/ws?token=a.b.c");
    assert.equal(withToken("ws://h/ws?token=old&x=1", "a&b"), "ws://h/ws?token=a%26b&x=1");
  });
});
