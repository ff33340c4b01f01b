// History, recovery and acknowledged publishes, against real hubs started by tests/js/test_node.py:
// one keeping 2,000 messages per stream, one with history off, and the default one (another
// process as far as epochs go: a hub restart is the client's URL moving to it). Connections are
// cut by a TCP proxy (CutProxy) that resets them: no close frame, as when a network fails.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { RecoveryFailure, RustyWsError, ServerError } from "../../rusty_ws/static/rusty_ws.js";
import { CutProxy, Inbox, WAIT, connected, hub, nextEvent, within } from "./helpers.mjs";

const HISTORY = hub("RUSTY_WS_HISTORY_HTTP_URL");
const NO_HISTORY = hub("RUSTY_WS_NO_HISTORY_HTTP_URL");
const OTHER = hub();
/** Fast reconnections: 0-20 ms first, at most 80 ms; no keepalive pings in the way. */
const FAST = { backoff: { initial: 20, cap: 80 }, keepaliveInterval: 0 };

const open = [];
const proxies = [];

async function client(url, options) {
  const made = await connected(url, { ...FAST, ...options });
  open.push(made);
  return made;
}

async function proxyTo(target) {
  const proxy = await CutProxy.to(target.port);
  proxies.push(proxy);
  return proxy;
}

/** A promise and its resolve function. */
function signal() {
  let resolve;
  const promise = new Promise((done) => {
    resolve = done;
  });
  return { promise, resolve };
}

after(async () => {
  await Promise.all(open.map((c) => c.close()));
  await Promise.all(proxies.map((p) => p.close()));
});

describe("recovery after a cut connection", () => {
  test("a subscriber cut off mid-stream ends with all 1,000 messages, in order, once each", async () => {
    const proxy = await proxyTo(HISTORY);
    const subscriber = await client(proxy.ws, { sessionId: "rec-1000" });
    const publisher = await client(HISTORY.ws, { sessionId: "rec-1000" });
    const received = [];
    let replayed = 0;
    const cutDone = signal();
    const ended = signal();
    subscriber.onMessage("Numbers", (n, message, info) => {
      if (info.replayed) replayed += 1; // "end" too: it may come in the replay, if it was published meanwhile
      if (n === "end") {
        ended.resolve();
        return;
      }
      received.push(n);
      if (n === 200) {
        proxy.refuse = true; // the network stays down until the publisher is well past it
        proxy.cut();
        cutDone.resolve();
      }
    });
    const failures = [];
    subscriber.addEventListener("recoveryfailed", (event) => failures.push(event.detail));
    const recovered = nextEvent(subscriber, "recovered", () => true, 10 * WAIT);
    const closed = nextEvent(subscriber, "close", () => true, 10 * WAIT);
    await subscriber.subscribe("Numbers");

    for (let first = 1; first <= 1000; first += 50) {
      const batch = [];
      for (let n = first; n < first + 50; n += 1) batch.push(publisher.publish("Numbers", n));
      const acks = await Promise.all(batch);
      assert.ok(acks.every((ack) => Number.isInteger(ack.offset)));
      if (first + 49 === 600) {
        await within(cutDone.promise, WAIT, "the cut at message 200");
        proxy.refuse = false; // the subscriber gets back in while 601-1000 are published
      }
    }
    await publisher.publish("Numbers", "end");
    await within(ended.promise, 10 * WAIT, "the end marker");

    assert.equal((await closed).code, 1006); // cut, not closed: no close frame came
    assert.equal(received.length, 1000);
    assert.deepEqual(received, Array.from({ length: 1000 }, (_, i) => i + 1));
    const { topic, count } = await recovered;
    assert.equal(topic, "Numbers");
    assert.ok(count >= 100, `replayed ${count}`); // cut at 200 and kept out until 600 was acked
    assert.equal(replayed, count);
    assert.deepEqual(failures, []);
    assert.ok(proxy.connections >= 2);
  });

  test("a hub restart (another epoch): recoveryfailed with new_epoch, then new messages arrive", async () => {
    const proxy = await proxyTo(HISTORY);
    const subscriber = await client(proxy.ws, { sessionId: "rec-restart" });
    const inbox = new Inbox(subscriber, "Restart");
    const first = await subscriber.subscribe("Restart");
    assert.ok(Number.isInteger(first.offset) && typeof first.epoch === "string", JSON.stringify(first));
    const before = await client(HISTORY.ws, { sessionId: "rec-restart" });
    for (const n of [1, 2, 3]) await before.publish("Restart", n);
    for (const n of [1, 2, 3]) assert.equal((await inbox.next()).payload, n);
    const seen = subscriber.position("Restart");
    assert.deepEqual(seen, { offset: first.offset + 3, epoch: first.epoch });

    const failed = nextEvent(subscriber, "recoveryfailed", () => true, 10 * WAIT);
    const reopened = nextEvent(subscriber, "open", () => true, 10 * WAIT);
    proxy.targetPort = OTHER.port; // the hub "restarted": a new process, new epochs
    proxy.cut();
    const detail = await failed;
    assert.equal(detail.reason, RecoveryFailure.NEW_EPOCH);
    assert.deepEqual([detail.topic, detail.sessionId, detail.since, detail.count], ["Restart", "rec-restart", seen, 0]);
    assert.notEqual(detail.epoch, seen.epoch);
    await reopened;

    const afterRestart = await client(OTHER.ws, { sessionId: "rec-restart" });
    const ack = await afterRestart.publish("Restart", "after");
    assert.equal(ack.epoch, detail.epoch);
    const { payload, message } = await inbox.next(); // a lower offset, but a new epoch: not a duplicate
    assert.equal(payload, "after");
    assert.equal(message.epoch, detail.epoch);
    assert.deepEqual(subscriber.position("Restart"), { offset: ack.offset, epoch: ack.epoch });
  });

  test("with history off the client behaves as before: no positions, no recovery events", async () => {
    const proxy = await proxyTo(NO_HISTORY);
    const subscriber = await client(proxy.ws, { sessionId: "rec-off" });
    const inbox = new Inbox(subscriber, "Off");
    const reply = await subscriber.subscribe("Off");
    assert.deepEqual(reply, { topic: "Off", session_id: "rec-off" });
    const events = [];
    for (const type of ["recovered", "recoveryfailed"]) subscriber.addEventListener(type, () => events.push(type));
    const publisher = await client(NO_HISTORY.ws, { sessionId: "rec-off" });
    assert.deepEqual(await publisher.publish("Off", 1, { id: "off-1" }),
      { id: "off-1", offset: null, epoch: null, delivered: 1 });
    const { message } = await inbox.next();
    assert.equal("offset" in message, false);
    assert.equal(subscriber.position("Off"), null);

    const reopened = nextEvent(subscriber, "open", () => true, 10 * WAIT);
    proxy.cut();
    await reopened;
    await publisher.publish("Off", 2);
    assert.equal((await inbox.next()).payload, 2);
    assert.deepEqual(events, []);
  });
});

describe("acknowledged publishes", () => {
  test("publish resolves on the ack, at the offset its delivery carries", async () => {
    const subscriber = await client(HISTORY.ws, { sessionId: "ack-1" });
    const inbox = new Inbox(subscriber, "Acked");
    const { offset: top, epoch } = await subscriber.subscribe("Acked");
    const publisher = await client(HISTORY.ws, { sessionId: "ack-1" });
    const ack = await publisher.publish("Acked", "one");
    assert.match(ack.id, /^js-[0-9a-f]{18}-\d+$/);
    assert.deepEqual([ack.offset, ack.epoch], [top + 1, epoch]);
    const { message } = await inbox.next();
    assert.deepEqual([message.offset, message.epoch], [ack.offset, ack.epoch]);
    const second = await publisher.publish("Acked", "two");
    assert.equal(second.offset, ack.offset + 1);
    assert.notEqual(second.id, ack.id);
  });

  test("a publish whose ack was lost is sent again after the reconnection and delivered once", async () => {
    const subscriber = await client(HISTORY.ws, { sessionId: "ack-retry" });
    const inbox = new Inbox(subscriber, "Once");
    await subscriber.subscribe("Once");
    const proxy = await proxyTo(HISTORY);
    const publisher = await client(proxy.ws, { sessionId: "ack-retry" });
    const reopened = nextEvent(publisher, "open", () => true, 10 * WAIT);

    proxy.dropReplies = true; // the ack will be lost on the way
    const publishing = publisher.publish("Once", "exactly once");
    const { message } = await inbox.next(); // the hub has it
    assert.equal(message.payload, "exactly once");
    proxy.cut();
    const ack = await within(publishing, 10 * WAIT, "the ack of the retried publish");
    await reopened;
    assert.equal(proxy.connections, 2);
    assert.deepEqual([ack.offset, ack.epoch], [message.offset, message.epoch]); // the first one's place

    await publisher.publish("Once", "marker");
    assert.equal((await inbox.next()).payload, "marker"); // no second "exactly once" before it
    assert.equal(inbox.items.length, 0);
  });

  test("a publish the hub refuses rejects with its error, which names the id", async () => {
    const c = await client(HISTORY.ws, { sessionId: "ack-refused" });
    await assert.rejects(c.publish("T", 1, { id: "x".repeat(129) }), { name: "RustyWsError", code: "invalid_id" });
    // A publisher name the hub refuses (the client leaves that check to the hub).
    const error = await c.publish("T", 1, { id: "mine-1", publisherName: "tab\there" }).then(() => null, (e) => e);
    assert.ok(error instanceof ServerError, String(error));
    assert.deepEqual([error.code, error.command, error.id], ["invalid_name", "publish-json", "mine-1"]);
    const ack = await c.publish("T", 2, { id: "mine-1" }); // a refused publish did not use its id up
    assert.equal(ack.id, "mine-1");
    assert.equal((await c.publish("T", 3, { id: "mine-1" })).offset, ack.offset); // a repeat: the first's place
  });
});

describe("history()", () => {
  test("the last messages, or those after a position; checked before sending", async () => {
    const c = await client(HISTORY.ws, { sessionId: "hist-1" });
    const acks = [];
    for (const n of [1, 2, 3, 4]) acks.push(await c.publish("Past", n));
    const last = await c.history("Past", { limit: 2 });
    assert.deepEqual([last.topic, last.session_id, last.offset, last.epoch], ["Past", "hist-1", acks[3].offset, acks[3].epoch]);
    assert.deepEqual(last.messages.map((m) => m.payload), [3, 4]);
    assert.deepEqual(last.messages.map((m) => m.offset), [acks[2].offset, acks[3].offset]);
    const page = await c.history("Past", { since: { offset: acks[0].offset, epoch: acks[0].epoch }, limit: 2 });
    assert.deepEqual(page.messages.map((m) => m.payload), [2, 3]);
    const all = await c.history("Past");
    assert.deepEqual(all.messages.map((m) => m.payload), [1, 2, 3, 4]);
    const elsewhere = await c.history("Past", { since: { offset: 1, epoch: "another-epoch" } });
    assert.deepEqual(elsewhere.messages, []);
    await assert.rejects(c.history("Past", { limit: 0 }), { code: "invalid_limit" });
    await assert.rejects(c.history("Past", { since: { offset: -1, epoch: "e" } }), RustyWsError);
    await assert.rejects(c.history("Past", { since: { offset: acks[3].offset + 1, epoch: acks[3].epoch } }),
      { name: "ServerError", code: "invalid_since", command: "history" });
    const off = await client(NO_HISTORY.ws, { sessionId: "hist-1" });
    assert.deepEqual(await off.history("Past"), { topic: "Past", session_id: "hist-1", messages: [] });
  });
});
