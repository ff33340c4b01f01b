// The pure parts of the browser modules: grammar checks, error parsing, close policy, backoff, URLs.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ClosePolicy,
  MAX_OFFSET,
  ReplyKind,
  RustyWsError,
  ServerError,
  backoffDelays,
  checkName,
  checkSession,
  checkTopic,
  closePolicy,
  firstDelay,
  historyCommand,
  isErrorReply,
  parseAck,
  parseDelivery,
  parseError,
  parseHistory,
  parseSubscribed,
  positionOf,
  publishCommand,
  reconnectWindow,
  registerNameCommand,
  retryAfterDelay,
  registerSessionCommand,
  replyKind,
  subscribeCommand,
  subscribeJsonCommand,
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

describe("history commands", () => {
  test("subscribe-json and history, with and without since (protocol.py's encoders)", () => {
    assert.equal(subscribeJsonCommand("T", "s"), 'subscribe-json:{"topic":"T","session_id":"s"}');
    assert.equal(subscribeJsonCommand("T"), 'subscribe-json:{"topic":"T"}');
    assert.equal(subscribeJsonCommand("T", "s", { offset: 41, epoch: "3f-4", extra: 1 }),
      'subscribe-json:{"topic":"T","session_id":"s","since":{"offset":41,"epoch":"3f-4"}}');
    assert.equal(historyCommand("T", "s", { limit: 2 }), 'history:{"topic":"T","session_id":"s","limit":2}');
    assert.equal(historyCommand("T", "s", { since: { offset: 0, epoch: "e" }, limit: 5 }),
      'history:{"topic":"T","session_id":"s","limit":5,"since":{"offset":0,"epoch":"e"}}');
    assert.equal(historyCommand("T"), 'history:{"topic":"T"}');
  });

  test("since, limit and publish ids are checked as the hub checks them", () => {
    for (const since of [{ offset: -1, epoch: "e" }, { offset: 1.5, epoch: "e" }, { offset: MAX_OFFSET + 1, epoch: "e" },
      { offset: "1", epoch: "e" }, { offset: 1, epoch: "" }, { offset: 1, epoch: "x".repeat(257) }, { offset: 1 }, 5]) {
      assert.throws(() => subscribeJsonCommand("T", "s", since), { code: "invalid_since" }, JSON.stringify(since));
    }
    assert.ok(subscribeJsonCommand("T", "s", { offset: MAX_OFFSET, epoch: "🦀".repeat(256) }));
    for (const limit of [0, -1, 1.5, "2", true]) {
      assert.throws(() => historyCommand("T", "s", { limit }), { code: "invalid_limit" }, String(limit));
    }
    assert.throws(() => subscribeJsonCommand("a|b", "s"), { code: "invalid_topic" });
    const message = { publisher_name: "c", topic: "T", payload: 1, timestamp: "t", session_id: "s" };
    assert.equal(publishCommand({ ...message, id: "i-1" }), `publish-json:${JSON.stringify({ ...message, id: "i-1" })}`);
    for (const id of ["", "x".repeat(129), 7]) {
      assert.throws(() => publishCommand({ ...message, id }), { code: "invalid_id" }, String(id));
    }
    assert.ok(publishCommand({ ...message, id: "🦀".repeat(128) }));
  });
});

describe("replies", () => {
  test("every frame of the hub has its kind", () => {
    const kinds = ["pong", "error:{}", "subscribed:{}", "history:{}", "ack:{}", '{"topic":"T"}', "garbage"].map(replyKind);
    assert.deepEqual(kinds, [ReplyKind.PONG, ReplyKind.ERROR, ReplyKind.SUBSCRIBED, ReplyKind.HISTORY, ReplyKind.ACK,
      ReplyKind.DELIVERY, ReplyKind.DELIVERY]);
  });

  test("subscribed:, history: and ack: replies, with history on and off", () => {
    assert.deepEqual(parseSubscribed('subscribed:{"topic":"T","session_id":"s","offset":43,"epoch":"E","recovered":true}'),
      { topic: "T", session_id: "s", offset: 43, epoch: "E", recovered: true });
    assert.deepEqual(parseSubscribed('subscribed:{"topic":"T","session_id":"s","recovered":false}'),
      { topic: "T", session_id: "s", recovered: false });
    const history = parseHistory('history:{"topic":"T","session_id":"s","offset":2,"epoch":"E","messages":'
      + '[{"topic":"T","payload":1,"offset":1,"epoch":"E"},5,{"payload":2},{"topic":"T","payload":3,"offset":2,"epoch":"E"}]}');
    assert.deepEqual(history.messages.map((m) => [m.payload, positionOf(m)]), [[1, { offset: 1, epoch: "E" }],
      [3, { offset: 2, epoch: "E" }]]);
    assert.deepEqual([history.offset, history.epoch], [2, "E"]);
    assert.deepEqual(parseHistory('history:{"topic":"T","session_id":"s","messages":[]}'),
      { topic: "T", session_id: "s", messages: [] });
    assert.deepEqual(parseAck('ack:{"id":"reg-7","offset":12,"epoch":"E"}'), { id: "reg-7", offset: 12, epoch: "E" });
    assert.deepEqual(parseAck('ack:{"id":"reg-7"}'), { id: "reg-7" });
    assert.deepEqual(parseAck('ack:{"id":"reg-7","offset":12,"epoch":"E","delivered":3}'),
      { id: "reg-7", offset: 12, epoch: "E", delivered: 3 });
    assert.deepEqual(parseAck('ack:{"id":"reg-7","delivered":"3"}'), { id: "reg-7" }); // not a count: left out
    for (const [parse, text] of [[parseSubscribed, "subscribed:[1]"], [parseSubscribed, "subscribed:"],
      [parseHistory, "history:null"], [parseAck, 'ack:{"offset":1}'], [parseAck, "pong"]]) {
      assert.equal(parse(text), null, text);
    }
    assert.equal(positionOf({ offset: 1 }), null);
    assert.equal(positionOf({ offset: "1", epoch: "E" }), null);
  });

  test("error replies become ServerErrors, even malformed ones", () => {
    const error = parseError('error:{"code":"forbidden_session","message":"no","command":"subscribe"}');
    assert.ok(error instanceof ServerError);
    assert.deepEqual([error.code, error.message, error.command, error.id], ["forbidden_session", "no", "subscribe", null]);
    assert.equal(parseError('error:{"code":"invalid_name","message":"no","command":"publish-json","id":"p-1"}').id, "p-1");
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

describe("Retry-After", () => {
  test("a whole number of seconds, plus up to one more at random (backoff.py's retry_after)", () => {
    assert.equal(retryAfterDelay("0", () => 0.5), 500);
    assert.equal(retryAfterDelay("1", () => 0.5), 1500);
    assert.equal(retryAfterDelay(" 7 ", () => 0.5), 7500);
    assert.equal(retryAfterDelay("3600", () => 0), 3600000);
  });

  test("absent, malformed, hostile or huge: null (back off as usual)", () => {
    for (const value of [null, undefined, "", "-1", "1.5", "3601", "99999999", "soon",
      "Wed, 21 Oct 2026 07:28:00 GMT", "١", "1e3", "0x10", "1 2", "9".repeat(10000), 5]) {
      assert.equal(retryAfterDelay(value), null, String(value));
    }
  });
});

describe("reconnect window", () => {
  test("a 4200's reason may name the window to spread a reconnection over", () => {
    assert.equal(reconnectWindow("server restarting; reconnect within 6.5 s"), 6500);
    assert.equal(reconnectWindow("server restarting; reconnect within 12 s"), 12000);
    assert.equal(reconnectWindow("server restarting"), 1000);
    assert.equal(reconnectWindow(""), 1000);
  });

  test("malformed, hostile and huge windows give the usual second, or an hour at most", () => {
    for (const window of ["s", "-5 s", "1e9 s", "5 ms", "5 s trailing", "٥ s", "123456789 s", "0.2 s", "nan s",
      "1.2.3 s", "5 s; reconnect within 9 s"]) {
      assert.equal(reconnectWindow(`server restarting; reconnect within ${window}`), 1000, window);
    }
    assert.equal(reconnectWindow(undefined), 1000);
    assert.equal(reconnectWindow("server restarting; reconnect within 99999999 s"), 3600000);
  });

  test("only a restart names a window: the reason is 'server restarting' alone or with it", () => {
    for (const reason of ["; reconnect within 5 s", "going away; reconnect within 5 s",
      "Server restarting; reconnect within 5 s", " server restarting; reconnect within 5 s"]) {
      assert.equal(reconnectWindow(reason), 1000, reason);
    }
  });

  test("the first delay: a random part of the window, or of twice the back-off's first delay up to 1 s", () => {
    assert.equal(firstDelay("server restarting; reconnect within 6.5 s", 500, () => 1), 6500);
    assert.equal(firstDelay("server restarting; reconnect within 6.5 s", 500, () => 0), 0);
    assert.equal(firstDelay("server restarting", 500, () => 1), 1000);
    assert.equal(firstDelay("server restarting", 50, () => 1), 100);
    assert.equal(firstDelay("server restarting", 5000, () => 1), 1000);
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
