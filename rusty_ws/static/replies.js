// Matching the hub's replies to the calls waiting for them. The hub carries out one
// connection's commands in order and answers them in order (docs/protocol.md, "Ordering"), so
// what a socket owes is a queue: each reply answers the head. A PONG answers the silent
// commands sent before its `ping` (an `error:` that comes first is theirs, kept until the pong);
// every other kind (`subscribed:`, `history:`, `ack:`) answers one command, and an `error:` in
// its place is that command's answer. No sockets here: the client reads frames and hands them over.

import { RustyWsError } from "./errors.js";
import { ReplyKind } from "./protocol.js";

/** One call of the API: a promise that settles once, and rejects with "timeout" after `timeout` ms. */
export class Call {
  /**
   * @param {string} label names the call in its timeout message, e.g. "subscribe Orders"
   * @param {number} timeout ms
   */
  constructor(label, timeout) {
    this.label = label;
    this.done = false;
    this.promise = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this._timer = setTimeout(() => this.fail(new RustyWsError("timeout", `no answer to ${label} within ${timeout} ms`)), timeout);
  }

  resolve(value) {
    if (this.done) return;
    this.done = true;
    clearTimeout(this._timer);
    this._resolve(value);
  }

  fail(error) {
    if (this.done) return;
    this.done = true;
    clearTimeout(this._timer);
    this._reject(error);
  }
}

/**
 * A reply the hub owes. It stays queued after its call timed out: the reply that comes late must
 * still be matched to it, or every later reply would answer the wrong call.
 */
class Expected {
  constructor(kind, call, { id = null, onAnswer = null, onError = null } = {}) {
    this.kind = kind;
    this.call = call;
    this.id = id;
    this.error = null; // PONG only: the first `error:` of the commands before the ping
    this._onAnswer = onAnswer;
    this._onError = onError;
  }

  answer(reply) {
    if (this.kind === ReplyKind.PONG && this.error !== null) this.call.fail(this.error);
    else this.call.resolve(this._onAnswer === null ? reply : this._onAnswer(reply));
  }

  refuse(error) {
    if (this._onError === null || !this._onError(error)) this.call.fail(error);
  }
}

/** The replies one socket owes, in the order the hub will send them. */
export class ReplyQueue {
  constructor() {
    this._owed = [];
  }

  /**
   * Expect a reply of `kind` (a ReplyKind) for `call`, after every reply expected so far.
   * @param {string} kind
   * @param {Call} call settled by the reply
   * @param {object} [hooks]
   * @param {?string} [hooks.id] the publish id an ACK must name
   * @param {?Function} [hooks.onAnswer] (reply) => the call's value; runs as the reply is read,
   *   before any later frame
   * @param {?Function} [hooks.onError] (error) => true when it handled the error (the call goes on)
   */
  expect(kind, call, { id = null, onAnswer = null, onError = null } = {}) {
    this._owed.push(new Expected(kind, call, { id, onAnswer, onError }));
  }

  /**
   * A reply of `kind` came: it answers the head of the queue.
   * @param {string} kind
   * @param {?object} reply parsed; null when malformed (for PONG: always null)
   * @param {string} text the frame, for error messages
   * @returns {boolean} false when no call expected it (the caller reports it)
   */
  answer(kind, reply, text) {
    if (kind === ReplyKind.PONG) {
      // A pong means every command before its ping was answered: a reply still expected ahead
      // of it is one this hub will never send (it broke the protocol). Those calls fail now
      // rather than wedge every later one.
      while (this._owed.length > 0 && this._owed[0].kind !== ReplyKind.PONG) {
        const skipped = this._owed.shift();
        skipped.refuse(new RustyWsError("unanswered", `the hub answered a later ping but not ${skipped.call.label}`));
      }
    }
    const expected = this._owed[0];
    if (expected === undefined || expected.kind !== kind
        || (kind === ReplyKind.ACK && reply !== null && reply.id !== expected.id)) {
      return false;
    }
    this._owed.shift();
    if (reply === null && kind !== ReplyKind.PONG) {
      expected.refuse(new RustyWsError("invalid_message", `a malformed reply: ${text.slice(0, 100)}`));
    } else {
      expected.answer(reply);
    }
    return true;
  }

  /**
   * An `error:` came: the answer of the head (kept until the pong, for a PONG).
   * @param {Error} error
   * @returns {boolean} false when nothing was expected (an error no call waited for)
   */
  refuse(error) {
    const expected = this._owed[0];
    if (expected === undefined) return false;
    if (expected.kind === ReplyKind.PONG) {
      expected.error ??= error;
    } else {
      this._owed.shift();
      expected.refuse(error);
    }
    return true;
  }

  /** Empty the queue (its socket is gone) and return what was owed: `{kind, call}` each. */
  drain() {
    return this._owed.splice(0);
  }
}
