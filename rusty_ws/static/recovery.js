// What a client knows of the streams it subscribes to: the last place it saw in each, so that a
// resubscription asks for what it missed (`since`), drops what it already has, and can say
// whether the hub recovered everything. Pure: no sockets, no timers, no DOM. The client calls it
// from its frame handler, in the order the frames came, so no call here ever races another.
//
// A stream is one (topic, session) pair; a client subscribes in one session, so a topic names it.
// See docs/protocol.md, "History and recovery".

import { positionOf } from "./protocol.js";

/** Why a resubscription did not recover every missed message ("recoveryfailed" events' `reason`). */
export const RecoveryFailure = Object.freeze({
  /** The stream has a new epoch (the hub restarted, or the stream expired): nothing was replayed. */
  NEW_EPOCH: "new_epoch",
  /** Some missed messages were no longer retained (history full or expired, or too many to replay). */
  MESSAGES_DROPPED: "messages_dropped",
  /** The hub keeps no history (RUSTY_WS_HISTORY_SIZE=0): nothing was replayed. */
  HISTORY_OFF: "history_off",
  /** The hub did not know the place the client came back with (`invalid_since`): started from its top. */
  UNKNOWN_POSITION: "unknown_position",
});

/** The last place seen in each subscribed stream, and the replays under way. */
export class StreamPositions {
  constructor() {
    this._positions = new Map(); // topic -> {sessionId, offset, epoch}: the last place seen
    this._replays = new Map(); // topic -> {since, count}: a subscribe-json with `since` awaits its reply
  }

  /**
   * The last place seen in `topic`'s stream, or null (history off, not subscribed yet).
   * @param {string} topic
   * @returns {?{offset: number, epoch: string}}
   */
  positionOf(topic) {
    const known = this._positions.get(topic);
    return known === undefined ? null : { offset: known.offset, epoch: known.epoch };
  }

  /**
   * The `since` to resubscribe to `topic` in `sessionId` with: null when nothing was seen, or
   * what was seen was in another session.
   */
  sinceFor(topic, sessionId) {
    const known = this._positions.get(topic);
    return known === undefined || known.sessionId !== sessionId ? null : this.positionOf(topic);
  }

  /** A `subscribe-json` for `topic` went out, with `since` or without (null): what comes before its reply is a replay. */
  subscribing(topic, since) {
    if (since) this._replays.set(topic, { since, count: 0 });
    else this._replays.delete(topic);
  }

  /**
   * The `subscribed:` reply for `topic` came: from now on the place seen is the reply's.
   * @returns {{recovered: ?boolean, reason?: string, since?: {offset: number, epoch: string}, count: number}}
   *   `recovered` null for a subscribe without `since`; `count` the deliveries replayed before the reply
   */
  subscribed(topic, sessionId, reply) {
    const replay = this._replays.get(topic);
    this._replays.delete(topic);
    const position = positionOf(reply);
    if (position === null) this._positions.delete(topic); // history off: no place to come back to
    else this._positions.set(topic, { sessionId, ...position });
    if (replay === undefined) return { recovered: null, count: 0 };
    const { since, count } = replay;
    if (reply.recovered === true) return { recovered: true, since, count };
    let reason = RecoveryFailure.MESSAGES_DROPPED;
    if (position === null) reason = RecoveryFailure.HISTORY_OFF;
    else if (position.epoch !== since.epoch) reason = RecoveryFailure.NEW_EPOCH;
    return { recovered: false, reason, since, count };
  }

  /** The subscribe for `topic` was refused: no replay is coming. */
  abandoned(topic) {
    this._replays.delete(topic);
  }

  /** The connection was lost: no replay is coming; the places seen are kept for the next one. */
  connectionLost() {
    this._replays.clear();
  }

  /** `topic` was unsubscribed (or its place is worthless): the next subscribe starts afresh. */
  forget(topic) {
    this._positions.delete(topic);
    this._replays.delete(topic);
  }

  /**
   * Sort a delivery as it comes, and move the place seen past it.
   * @param {{topic: string, session_id: string, offset?: number, epoch?: string}} message
   * @returns {{duplicate: boolean, replayed: boolean}} `duplicate`: its offset is at most the one
   *   already seen in the same epoch (drop it); `replayed`: it came before its subscription's reply
   */
  see(message) {
    const replay = this._replays.get(message.topic);
    const known = this._positions.get(message.topic);
    const position = positionOf(message);
    if (known !== undefined && position !== null && known.sessionId === message.session_id) {
      if (position.epoch === known.epoch && position.offset <= known.offset) {
        return { duplicate: true, replayed: replay !== undefined };
      }
      known.offset = position.offset;
      known.epoch = position.epoch;
    }
    if (replay !== undefined) replay.count += 1;
    return { duplicate: false, replayed: replay !== undefined };
  }
}
