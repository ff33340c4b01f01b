// RustyWsClient: a rusty_ws connection for pages (and Node), with promises instead of raw strings.
// The mirror of rusty_ws/client/client.py's WsClient. The hub handles one connection's commands
// in order and answers them in order, so each call waits for the reply its command earns
// (replies.js): `subscribed:` for subscribe-json, `ack:` for a publish with an id, `history:` for
// history, and for the silent commands (register-*, unsubscribe) a `ping` sent after them, whose
// `pong` means they are done. Silent commands are always followed by their `ping` before
// anything else goes out, so an `error:` is never mistaken for another command's.
//
// Recovery (docs/protocol.md, "History and recovery"): the client remembers the last offset and
// epoch it saw in each subscription (recovery.js), resubscribes after a reconnection with that
// `since`, and the hub replays what was missed before its `subscribed:` reply. Publishes carry an
// id and are sent again with it after a reconnection until acknowledged: the hub delivers an id once.
//
// Tokens (docs/protocol.md, "auth:{token}"): a client with a token opens the WebSocket without it
// and sends `auth:{token}` as the very first frame, waiting for `authenticated:` before anything
// else (`tokenInUrl: true` puts it in `?token=` instead, for hubs older than first-frame auth).
// Whenever its JwtManager gets a fresh token (it refreshes before expiry), an open connection
// sends `refresh:{token}` in-band and waits for `refreshed:`; no reconnection. After the hub's
// 4002 (token expired) it gets a new token (a refresh, else a new login) and reconnects.
//
// Users import rusty_ws.js, which re-exports this class with the rest of the public API.

import { CloseCode, ClosePolicy, backoffDelays, closePolicy, firstDelay, retryAfterDelay } from "./backoff.js";
import { AuthError, ConnectionClosedError, RustyWsError, ServerError } from "./errors.js";
import { JwtManager } from "./jwt_utils.js";
import {
  PING,
  ReplyKind,
  authCommand,
  checkName,
  checkPublishId,
  checkSession,
  checkTopic,
  historyCommand,
  parseAck,
  parseAuthenticated,
  parseDelivery,
  parseError,
  parseHistory,
  parseRefreshed,
  parseSubscribed,
  publishCommand,
  refreshCommand,
  registerNameCommand,
  registerSessionCommand,
  replyKind,
  subscribeJsonCommand,
  unsubscribeCommand,
} from "./protocol.js";
import { RecoveryFailure, StreamPositions } from "./recovery.js";
import { Call, ReplyQueue } from "./replies.js";
import { authUrlFor, openWebSocket, withToken } from "./transport.js";

/** The states a client goes through; "statechange" events report each change. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** How each reply is parsed (to null when malformed). */
const PARSERS = {
  [ReplyKind.PONG]: () => null,
  [ReplyKind.SUBSCRIBED]: parseSubscribed,
  [ReplyKind.HISTORY]: parseHistory,
  [ReplyKind.ACK]: parseAck,
  [ReplyKind.AUTHENTICATED]: parseAuthenticated,
  [ReplyKind.REFRESHED]: parseRefreshed,
};

/** A random string for the client's publish ids: unique per client, so ids never meet in a session. */
function randomHex(bytes) {
  const values = new Uint8Array(bytes);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(values);
  else for (let i = 0; i < bytes; i += 1) values[i] = Math.floor(Math.random() * 256);
  return Array.from(values, (value) => value.toString(16).padStart(2, "0")).join("");
}

/**
 * A connection to a rusty_ws hub that registers, subscribes, publishes, and reconnects by itself.
 *
 * Events (it is an EventTarget; each event's `detail` carries the data):
 * - "statechange" {state, previous}: idle -> connecting -> open <-> reconnecting -> closed
 * - "open" {reconnected}: connected and registered (after a reconnect: subscriptions restored,
 *   missed messages delivered)
 * - "close" {code, reason, willReconnect}: the connection ended
 * - "reconnecting" {attempt, delay}: before each reconnection attempt (delay in ms)
 * - "message" {message, replayed}: every delivery, whatever its topic; `replayed` when it was
 *   missed during an outage and replayed by the hub on resubscription
 * - "recovered" {topic, sessionId, count}: a resubscription got every missed message (`count` of them)
 * - "recoveryfailed" {topic, sessionId, reason, since, offset, epoch, count}: a resubscription could
 *   not get every missed message (`reason` is a RecoveryFailure); the subscription goes on from `offset`
 * - "refreshed" {expiresIn}: the hub took the fresh token of an in-band `refresh:` (seconds left)
 * - "error" {error}: an `error:` reply no call was waiting for, a handler that threw, a bad frame,
 *   an in-band refresh the hub refused (the hub then closes with 4002, and the client reconnects
 *   with a new token)
 */
export class RustyWsClient extends EventTarget {
  /**
   * @param {string} url the hub's WebSocket URL, e.g. "ws://127.0.0.1:8081/ws"
   * @param {object} [options]
   * @param {string} [options.name] registered with `register-name`; the default publisher name
   * @param {string} [options.sessionId] the session (default: the token's when logged in, else `session-{name}`)
   * @param {{username: string, password: string, authUrl?: string}} [options.auth] log in (again when needed)
   * @param {JwtManager} [options.jwtManager] an already logged-in token holder, e.g. the seed's `jwtManager`
   * @param {Function} [options.WebSocket] the WebSocket implementation (default the global one; Node: `ws`)
   * @param {typeof fetch} [options.fetch] the HTTP client for logins (default the global one)
   * @param {boolean} [options.reconnect=true] reconnect after a drop, as the close code allows
   * @param {{initial?: number, factor?: number, cap?: number, jitter?: number}} [options.backoff] reconnect delays in ms
   * @param {number} [options.timeout=10000] ms a call waits for the hub (and for a reconnection)
   * @param {number} [options.keepaliveInterval=20000] ms between keepalive pings; 0 turns them off
   * @param {boolean} [options.tokenInUrl=false] send the token as `?token=` in the URL (for hubs older
   *   than first-frame auth) instead of `auth:{token}` as the first frame; URLs end up in access logs
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.name = checkName(options.name ?? `js-${Math.random().toString(36).slice(2, 8)}`);
    this._explicitSession = options.sessionId === undefined ? null : checkSession(options.sessionId);
    this._sessionId = this._explicitSession;
    this._auth = options.auth ?? null;
    this._tokens = options.jwtManager ?? (this._auth ? new JwtManager({ fetch: options.fetch }) : null);
    this._ownsTokens = this._tokens !== null && options.jwtManager === undefined; // ours to log out on close()
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.reconnect = options.reconnect ?? true;
    this._backoffOptions = options.backoff ?? {};
    this.timeout = options.timeout ?? 10_000;
    this.keepaliveInterval = options.keepaliveInterval ?? 20_000;
    this.tokenInUrl = options.tokenInUrl ?? false;
    this._connectionToken = null; // the token the live connection was opened or last refreshed with
    this._onToken = () => this._refreshInBand(); // the JwtManager's "token" event

    this._state = State.IDLE;
    this._socket = null; // the live socket; frames and closes of any other are stale
    this._replies = new ReplyQueue(); // the replies the live socket owes, in the order the hub will send them
    this._subscriptions = new Set(); // topics to restore after a reconnect
    this._positions = new StreamPositions(); // the last offset and epoch seen per subscription
    this._unacked = new Map(); // publish id -> {text, call}: sent again after a reconnect until acked
    this._publishIds = { prefix: `js-${randomHex(9)}`, count: 0 };
    this._handlers = new Map(); // topic -> Set of handlers (a Map: "__proto__" is just a topic)
    this._lastClose = { code: 1006, reason: "not connected yet" };
    this._closedByUser = false;
    this._delays = null; // the backoff generator of the current outage
    this._attempt = 0;
    this._reconnectTimer = null;
    this._tokenSuspect = false; // the last handshake with our token failed
    this._keepaliveTimer = null;
  }

  /** The current state (see State). */
  get state() {
    return this._state;
  }

  /** The session this client lives in (known once connected when it comes from the token). */
  get sessionId() {
    return this._sessionId;
  }

  /** The topics this client is subscribed to, and will resubscribe after a reconnect. */
  get subscriptions() {
    return [...this._subscriptions];
  }

  /**
   * The last place seen in `topic`'s stream: what a resubscription asks the hub to continue from.
   * @param {string} topic
   * @returns {?{offset: number, epoch: string}} null when not subscribed, or the hub keeps no history
   */
  position(topic) {
    return this._positions.positionOf(topic);
  }

  /** True while a token is held and valid (logged-in clients only). */
  isAuthenticated() {
    return this._tokens?.isAuthenticated() ?? false;
  }

  // ------------------------------------------------------------------ connecting and closing

  /**
   * Log in if configured, open the socket, register name and session. Resolves once the hub has them.
   * @returns {Promise<void>}
   * @throws {AuthError} the login was refused; {ServerError} the hub refused name or session
   *   (e.g. "forbidden_session"); {ConnectionClosedError} the hub could not be reached
   */
  async connect() {
    if (this._state !== State.IDLE && this._state !== State.CLOSED) {
      throw new RustyWsError("already_connected", `connect() while ${this._state}`);
    }
    this._closedByUser = false;
    if (this._tokens !== null) {
      this._tokens.removeEventListener("token", this._onToken);
      this._tokens.addEventListener("token", this._onToken);
    }
    this._setState(State.CONNECTING);
    let socket = null;
    try {
      socket = await this._openSocket();
      if (this._closedByUser) throw new ConnectionClosedError(1000, "closed by the client while connecting");
      await this._register(socket, { replay: false });
    } catch (error) {
      this._drop(socket, error.closeCode ?? 1006, error.message);
      this._setState(State.CLOSED);
      throw error;
    }
    this._opened(false);
  }

  /**
   * Close the connection and stop reconnecting. Idempotent. Pending calls reject.
   * A client that logged in itself (options.auth) forgets its token; a shared jwtManager keeps it.
   * @param {number} [code=1000]
   * @param {string} [reason=""]
   * @returns {Promise<void>} resolves when the socket has closed (or after `timeout`)
   */
  close(code = 1000, reason = "") {
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    this._stopKeepalive();
    this._tokens?.removeEventListener("token", this._onToken);
    if (this._ownsTokens) this._tokens.clearToken(); // stops its refresh timer; connect() logs in again
    const socket = this._socket;
    if (socket === null) {
      if (this._state !== State.IDLE && this._state !== State.CLOSED) {
        this._setState(State.CLOSED);
        this._emit("close", { code, reason, willReconnect: false });
      }
      return Promise.resolve();
    }
    const closed = new Promise((resolve) => {
      const timer = setTimeout(resolve, this.timeout);
      socket.addEventListener("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    try {
      socket.close(code, reason);
    } catch {
      socket.close(); // a code browsers refuse to send (only 1000 and 3000-4999 are allowed)
    }
    this._connectionLost(socket, code, reason || "closed by the client");
    return closed;
  }

  // ------------------------------------------------------------------ the seed's commands

  /**
   * Subscribe to `topic` in this client's session with `subscribe-json`; restored after every
   * reconnect, from the last message seen (missed ones are delivered first, once each).
   * @param {string} topic
   * @returns {Promise<{topic: string, session_id: string, offset?: number, epoch?: string}>} the hub's
   *   `subscribed:` reply, once the subscription is active (`offset`/`epoch`: the stream's top; absent
   *   with history off)
   * @throws {RustyWsError} "invalid_topic" before anything is sent; {ServerError} e.g. "too_many_subscriptions"
   */
  async subscribe(topic) {
    checkTopic(topic);
    const reply = await this._request(() => subscribeJsonCommand(topic, this._sessionId), ReplyKind.SUBSCRIBED,
      `subscribe ${topic}`, this._subscribeHooks(topic, null));
    this._subscriptions.add(topic);
    return reply;
  }

  /**
   * Stop receiving `topic`. Handlers registered with onMessage stay.
   * @param {string} topic
   * @returns {Promise<void>} resolves once the hub has done it
   */
  async unsubscribe(topic) {
    checkTopic(topic);
    this._subscriptions.delete(topic);
    this._positions.forget(topic);
    await this._request(() => unsubscribeCommand(topic, this._sessionId), ReplyKind.PONG, `unsubscribe ${topic}`);
  }

  /**
   * Publish `payload` (any JSON value) to `topic` in this client's session, with a publish id.
   * If the connection drops before the hub's `ack:`, the same frame (same id) goes out again after
   * the reconnection, and the hub, which remembers ids per session, delivers it once.
   * @param {string} topic
   * @param {*} payload
   * @param {{publisherName?: string, timestamp?: string, id?: string}} [options] defaults: this
   *   client's name, now, and a new id unique to this client (give your own to retry a publish
   *   whose promise rejected: the hub delivers an id once within its idempotency window)
   * @returns {Promise<{id: string, offset: ?number, epoch: ?string, delivered?: number}>} the `ack:`:
   *   the message is in its stream at `offset` (null with history off) and was handed to every
   *   subscriber, `delivered` of them on the hub that took it (absent from a hub that does not say)
   * @throws {RustyWsError} "invalid_topic", "invalid_id" before anything is sent; "timeout" when no
   *   ack came within `timeout` ms (the message may or may not have been published); {ServerError}
   *   the hub refused it (`error.id` is the publish's id); {ConnectionClosedError} the client closed
   *   or will not reconnect
   */
  async publish(topic, payload, { publisherName = this.name, timestamp = new Date().toISOString(), id } = {}) {
    checkTopic(topic);
    const publishId = id === undefined ? this._nextPublishId() : checkPublishId(id);
    const makeText = () => publishCommand({
      publisher_name: publisherName,
      topic,
      payload: payload === undefined ? null : payload,
      timestamp,
      session_id: this._sessionId,
      id: publishId,
    });
    makeText(); // throws on a bad message before any wait
    if (this._state !== State.OPEN) await this._whenOpen();
    const socket = this._socket;
    if (socket === null) throw new ConnectionClosedError(this._lastClose.code, this._lastClose.reason);
    if (this._unacked.has(publishId)) {
      throw new RustyWsError("invalid_id", `a publish with id ${publishId} is still waiting for its ack`);
    }
    const pending = { id: publishId, text: makeText(), call: new Call(`publish ${topic}`, this.timeout) };
    this._unacked.set(publishId, pending);
    const settled = () => { // acked, refused, timed out or closed: not sent again
      if (this._unacked.get(publishId) === pending) this._unacked.delete(publishId);
    };
    pending.call.promise.then(settled, settled);
    this._sendPublish(socket, pending);
    return pending.call.promise;
  }

  /**
   * Read `topic`'s stream in this client's session without subscribing (`history`).
   * @param {string} topic
   * @param {{limit?: number, since?: {offset: number, epoch: string}}} [options] at most `limit`
   *   messages (default and at most the hub's RUSTY_WS_HISTORY_SIZE): the last ones, or the first
   *   ones after `since` (to page forward)
   * @returns {Promise<{topic: string, session_id: string, offset?: number, epoch?: string, messages: object[]}>}
   *   the stream's top (absent with history off) and messages, oldest first, as parsed deliveries
   * @throws {RustyWsError} "invalid_topic", "invalid_limit", "invalid_since" before anything is sent;
   *   {ServerError} e.g. "invalid_since" (an offset past the stream's top in its epoch)
   */
  async history(topic, { limit = null, since = null } = {}) {
    checkTopic(topic);
    return this._request(() => historyCommand(topic, this._sessionId, { limit, since }), ReplyKind.HISTORY,
      `history ${topic}`);
  }

  /**
   * A round trip: resolves once every earlier call of this client is done.
   * @returns {Promise<void>}
   */
  async ping() {
    await this._request(null, ReplyKind.PONG, "ping");
  }

  /**
   * Call `handler(payload, message, {replayed})` for each delivery on `topic` (`message` is the
   * whole JSON object; `replayed` when the hub replayed it after a reconnection).
   * @param {string} topic
   * @param {(payload: *, message: object, info: {replayed: boolean}) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  onMessage(topic, handler) {
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    if (!this._handlers.has(topic)) this._handlers.set(topic, new Set());
    this._handlers.get(topic).add(handler);
    return () => this._handlers.get(topic)?.delete(handler);
  }

  // ------------------------------------------------------------------ sending

  /**
   * Send one command (none: a bare `ping`) and resolve with the reply of `kind` it earns. A silent
   * command (kind PONG) goes out with a `ping` after it.
   */
  async _request(makeText, kind, label, hooks = {}) {
    const text = makeText === null ? null : makeText(); // throws on a bad topic before any wait
    if (this._state !== State.OPEN) await this._whenOpen();
    const socket = this._socket;
    if (socket === null) throw new ConnectionClosedError(this._lastClose.code, this._lastClose.reason);
    const call = new Call(label, this.timeout);
    const frames = text === null ? [PING] : kind === ReplyKind.PONG ? [text, PING] : [text];
    hooks.beforeSend?.();
    try {
      for (const frame of frames) socket.send(frame);
    } catch (error) {
      call.fail(new ConnectionClosedError(1006, `send failed: ${error.message}`));
      return call.promise;
    }
    this._replies.expect(kind, call, hooks);
    return call.promise;
  }

  /** Send (again) a publish that waits for its ack; a send that fails waits for the next connection. */
  _sendPublish(socket, pending) {
    try {
      socket.send(pending.text);
    } catch {
      return; // the socket is going: its close event brings the reconnection that sends it again
    }
    this._replies.expect(ReplyKind.ACK, pending.call, {
      id: pending.id,
      onAnswer: (ack) => ({
        id: ack.id, offset: ack.offset ?? null, epoch: ack.epoch ?? null,
        ...(ack.delivered === undefined ? {} : { delivered: ack.delivered }),
      }),
    });
  }

  _nextPublishId() {
    this._publishIds.count += 1;
    return `${this._publishIds.prefix}-${this._publishIds.count}`;
  }

  /** The hooks of a subscribe-json for `topic` (with `since`, or null): replay bookkeeping, recovery events. */
  _subscribeHooks(topic, since) {
    return {
      beforeSend: () => this._positions.subscribing(topic, since),
      onAnswer: (reply) => {
        this._subscribed(topic, reply);
        return reply;
      },
      onError: () => {
        this._positions.abandoned(topic);
        return false;
      },
    };
  }

  _subscribed(topic, reply) {
    const outcome = this._positions.subscribed(topic, this._sessionId, reply);
    if (outcome.recovered === null) return;
    const about = { topic, sessionId: this._sessionId };
    if (outcome.recovered) {
      this._emit("recovered", { ...about, count: outcome.count });
    } else {
      this._emit("recoveryfailed", {
        ...about, reason: outcome.reason, since: outcome.since, offset: reply.offset ?? null, epoch: reply.epoch ?? null,
        count: outcome.count,
      });
    }
  }

  _whenOpen() {
    if (this._state === State.IDLE || this._state === State.CLOSED) {
      return Promise.reject(new ConnectionClosedError(this._lastClose.code, this._lastClose.reason));
    }
    return new Promise((resolve, reject) => {
      const done = (error) => {
        clearTimeout(timer);
        this.removeEventListener("statechange", onChange);
        if (error) reject(error);
        else resolve();
      };
      const onChange = () => {
        if (this._state === State.OPEN) done(null);
        else if (this._state === State.CLOSED) done(new ConnectionClosedError(this._lastClose.code, this._lastClose.reason));
      };
      const timer = setTimeout(() => done(new ConnectionClosedError(
        this._lastClose.code, `not connected within ${this.timeout} ms (${this._state}): ${this._lastClose.reason}`)), this.timeout);
      this.addEventListener("statechange", onChange);
    });
  }

  /**
   * Make `socket` the live one and send name and session with a ping; after a reconnection also
   * every subscription (from its last place seen) and every publish still waiting for its ack.
   * Resolves once the hub answered them all (missed messages delivered); a resubscription the
   * hub refuses is an "error" event, not a failure.
   */
  _register(socket, { replay }) {
    // Every frame is made first: a session the hub would refuse (`session-{name}` from a
    // name with a '|') throws here, before the socket is live or a reply is expected.
    const frames = [registerNameCommand(this.name), registerSessionCommand(this._sessionId), PING];
    const resubscriptions = (replay ? [...this._subscriptions] : []).map((topic) => {
      const since = this._positions.sinceFor(topic, this._sessionId);
      return { topic, since, text: subscribeJsonCommand(topic, this._sessionId, since) };
    });
    this._socket = socket;
    const registered = new Call(replay ? "re-register" : "register", this.timeout);
    for (const frame of frames) socket.send(frame);
    this._replies.expect(ReplyKind.PONG, registered);
    const restored = resubscriptions.map(({ topic, since, text }) => this._resubscribe(socket, topic, since, text));
    if (replay) {
      for (const pending of this._unacked.values()) if (!pending.call.done) this._sendPublish(socket, pending);
    }
    return Promise.all([registered.promise, ...restored]);
  }

  _resubscribe(socket, topic, since, text) {
    const call = new Call(`resubscribe ${topic}`, this.timeout);
    const hooks = this._subscribeHooks(topic, since);
    const refused = hooks.onError;
    hooks.onError = (error) => {
      refused(error);
      if (error.code !== "invalid_since" || socket !== this._socket) return false;
      // The hub does not know the place we came back with: start again from its top, and say so.
      this._positions.forget(topic);
      this._emit("recoveryfailed", {
        topic, sessionId: this._sessionId, reason: RecoveryFailure.UNKNOWN_POSITION, since, offset: null, epoch: null,
        count: 0,
      });
      socket.send(subscribeJsonCommand(topic, this._sessionId));
      this._replies.expect(ReplyKind.SUBSCRIBED, call, this._subscribeHooks(topic, null));
      return true;
    };
    hooks.beforeSend();
    socket.send(text);
    this._replies.expect(ReplyKind.SUBSCRIBED, call, hooks);
    return call.promise.catch((error) => {
      if (!(error instanceof ServerError)) throw error;
      // The hub refused a restored subscription (its limit may have changed): say so, carry on.
      this._emit("error", { error });
    });
  }

  // ------------------------------------------------------------------ receiving

  _onFrame(socket, data) {
    if (socket !== this._socket) return; // a frame from a socket we already gave up on
    if (typeof data !== "string") {
      this._emit("error", { error: new RustyWsError("invalid_message", "the hub sent a binary frame") });
      return;
    }
    const kind = replyKind(data);
    if (kind === ReplyKind.DELIVERY) {
      this._deliver(data);
    } else if (kind === ReplyKind.ERROR) {
      const error = parseError(data);
      if (!this._replies.refuse(error)) this._emit("error", { error });
    } else if (!this._replies.answer(kind, PARSERS[kind](data), data)) {
      this._emit("error", { error: new RustyWsError("invalid_message", `a reply nothing waited for: ${data.slice(0, 100)}`) });
    }
  }

  _deliver(text) {
    const message = parseDelivery(text);
    if (message === null) {
      this._emit("error", { error: new RustyWsError("invalid_message", `not a delivery: ${text.slice(0, 100)}`) });
      return;
    }
    const { duplicate, replayed } = this._positions.see(message);
    if (duplicate) return; // already delivered: its offset is at most the last one seen in its epoch
    this._emit("message", { message, replayed });
    const info = { replayed };
    for (const handler of [...(this._handlers.get(message.topic) ?? [])]) {
      try {
        handler(message.payload, message, info);
      } catch (error) {
        this._emit("error", { error, handler }); // one handler's bug must not stop the others
      }
    }
  }

  // ------------------------------------------------------------------ losing and regaining the connection

  _onSocketClose(socket, event) {
    if (socket !== this._socket) return;
    const state = this._state;
    this._connectionLost(socket, event.code ?? 1006, event.reason ?? "");
    if (state !== State.OPEN) return; // a failing (re)connection attempt handles its own failure
    let policy = closePolicy(this._lastClose.code);
    if (this._lastClose.code === CloseCode.TOKEN_EXPIRED && this._canRenewToken()) {
      // Not with this token: the next attempt gets a new one (_usableToken: a new login, or a refresh).
      this._tokenSuspect = true;
      policy = ClosePolicy.RECONNECT_NOW;
    }
    const willReconnect = this.reconnect && !this._closedByUser && policy !== ClosePolicy.DO_NOT_RECONNECT;
    this._emit("close", { ...this._lastClose, willReconnect });
    if (willReconnect) {
      this._setState(State.RECONNECTING);
      this._scheduleReconnect(policy);
    } else {
      this._setState(State.CLOSED);
    }
  }

  /**
   * Forget `socket`: fail every call waiting on it but the publishes, which go out again after a
   * reconnection (or fail when the client closes). Its later frames and close event are ignored.
   */
  _connectionLost(socket, code, reason) {
    if (socket !== this._socket) return;
    this._socket = null;
    this._connectionToken = null;
    this._stopKeepalive();
    this._lastClose = { code, reason };
    this._positions.connectionLost();
    const owed = this._replies;
    this._replies = new ReplyQueue();
    for (const expected of owed.drain()) {
      if (expected.kind !== ReplyKind.ACK) expected.call.fail(new ConnectionClosedError(code, reason));
    }
    if (this._closedByUser && this._state !== State.CLOSED) {
      this._setState(State.CLOSED);
      this._emit("close", { code, reason, willReconnect: false });
    }
  }

  /** Close a socket we stopped trusting (a failed registration, a dead keepalive). */
  _drop(socket, code, reason) {
    if (socket === null) return;
    this._connectionLost(socket, code, reason);
    try {
      socket.close();
    } catch {
      // already closing
    }
  }

  _scheduleReconnect(policy, asked = null) {
    this._delays ??= backoffDelays(this._backoffOptions);
    this._attempt += 1;
    // "Reconnect now" waits a random part of a window first, so that clients dropped together do
    // not come back in the same instant (the window a 4200's reason names, or up to a second).
    // A refusal that said when to come back (503 with Retry-After, seen under Node's `ws` only)
    // waits that instead of the back-off's next delay, which does not grow meanwhile.
    let delay;
    if (asked !== null) delay = asked;
    else if (this._attempt === 1 && policy === ClosePolicy.RECONNECT_NOW) {
      delay = firstDelay(this._lastClose.reason, this._backoffOptions.initial ?? 500);
    } else delay = this._delays.next().value;
    this._emit("reconnecting", { attempt: this._attempt, delay });
    this._reconnectTimer = setTimeout(() => this._tryReconnect(), delay);
  }

  async _tryReconnect() {
    if (this._closedByUser) return;
    let socket = null;
    try {
      socket = await this._openSocket();
      if (this._closedByUser) {
        socket.close();
        return;
      }
      await this._register(socket, { replay: true }).catch((error) => {
        if (!(error instanceof ServerError)) throw error;
        // The hub refused the name or session it took before (its rules may have changed): say so, carry on.
        this._emit("error", { error });
      });
    } catch (error) {
      this._drop(socket, error.closeCode ?? 1006, error.message);
      if (this._closedByUser) return;
      if (error instanceof AuthError && error.status === 401 && !(error.inBand && this._auth !== null)) {
        this._lastClose = { code: 4001, reason: error.message }; // the password stopped working
        this._emit("error", { error });
        this._setState(State.CLOSED);
        return;
      }
      const paced = error.status === 503 || error.status === 429;
      this._scheduleReconnect(ClosePolicy.BACK_OFF, paced ? retryAfterDelay(error.retryAfter) : null);
      return;
    }
    this._opened(true);
  }

  _opened(reconnected) {
    this._attempt = 0;
    this._delays = null; // the next outage starts its backoff over
    this._tokenSuspect = false;
    this._setState(State.OPEN);
    this._startKeepalive();
    this._emit("open", { reconnected });
    this._refreshInBand(); // the JwtManager may have refreshed while this connection was registering
  }

  async _openSocket() {
    let url = this.url;
    let token = null;
    if (this._tokens !== null) {
      token = await this._usableToken();
      if (this.tokenInUrl) url = withToken(url, token);
      this._sessionId = this._explicitSession ?? this._tokens.getSessionId();
    }
    let socket;
    try {
      socket = await openWebSocket(this._WebSocket, url, this.timeout);
    } catch (error) {
      // Browsers hide why a handshake failed: the hub may be down, or may have restarted with
      // a new secret and refused the token (401). Either way, get a new token next time.
      if (this._tokens !== null) this._tokenSuspect = true;
      throw error;
    }
    const listen = () => {
      socket.addEventListener("message", (event) => this._onFrame(socket, event.data));
      socket.addEventListener("close", (event) => this._onSocketClose(socket, event));
    };
    if (token !== null && !this.tokenInUrl) {
      const reply = await this._authenticate(socket, token, listen);
      this._sessionId = this._explicitSession ?? this._tokens.getSessionId() ?? reply.sid;
    } else {
      listen();
    }
    this._sessionId ??= `session-${this.name}`;
    this._connectionToken = token;
    return socket;
  }

  /**
   * Send `auth:{token}` as the first frame of `socket` and wait for the hub's first frame: resolves
   * with the `authenticated:` reply, having called `listen()` before any later frame can arrive.
   * A refusal (`error:`, then close 4001) rejects with an AuthError (status 401, `inBand` true).
   */
  _authenticate(socket, token, listen) {
    return new Promise((resolve, reject) => {
      const done = (error, reply) => {
        clearTimeout(timer);
        socket.removeEventListener("message", onMessage);
        socket.removeEventListener("close", onClose);
        if (error === null) {
          listen(); // in the same event as the reply: no later frame can come before the listeners
          resolve(reply);
          return;
        }
        this._tokenSuspect = true;
        try {
          socket.close();
        } catch {
          // already closing
        }
        reject(error);
      };
      const onMessage = (event) => {
        const text = typeof event.data === "string" ? event.data : "";
        const reply = parseAuthenticated(text);
        if (reply !== null) {
          done(null, reply);
          return;
        }
        const refusal = replyKind(text) === ReplyKind.ERROR ? parseError(text) : null;
        const error = new AuthError(refusal?.code ?? "invalid_message",
          refusal ? `the hub refused the token: ${refusal.message}` : `not an answer to auth: ${text.slice(0, 100)}`, 401);
        error.inBand = true;
        done(error);
      };
      const onClose = (event) => done(new ConnectionClosedError(event.code ?? 1006, event.reason || "closed during auth"));
      const timer = setTimeout(() => done(new ConnectionClosedError(1006, `no answer to auth: within ${this.timeout} ms`)),
        this.timeout);
      socket.addEventListener("message", onMessage);
      socket.addEventListener("close", onClose);
      try {
        socket.send(authCommand(token));
      } catch (error) {
        done(new ConnectionClosedError(1006, `send failed: ${error.message}`));
      }
    });
  }

  /**
   * The JwtManager holds a token the live connection does not have yet (it refreshed it before
   * expiry): send `refresh:{token}` and wait for `refreshed:`. A refusal is an "error" event; the
   * hub then closes with 4002 when the old token expires, and the client reconnects with a new one.
   */
  _refreshInBand() {
    const socket = this._socket;
    const token = this._tokens?.getToken() ?? null;
    if (socket === null || this._state !== State.OPEN || token === null || this._connectionToken === null
        || token === this._connectionToken) {
      return;
    }
    this._connectionToken = token; // one refresh per token, whatever the answer
    const call = new Call("refresh", this.timeout);
    try {
      socket.send(refreshCommand(token));
    } catch {
      return; // the socket is going: its close event brings the reconnection, with this token
    }
    this._replies.expect(ReplyKind.REFRESHED, call);
    call.promise.then(
      (reply) => this._emit("refreshed", { expiresIn: reply.expires_in }),
      (error) => {
        if (!(error instanceof ConnectionClosedError)) this._emit("error", { error });
      },
    );
  }

  /** After a 4002: whether a new token can be had (a password to log in again, or a token to refresh). */
  _canRenewToken() {
    return this._tokens !== null && (this._auth !== null || this._tokens.getToken() !== null);
  }

  /** A token the hub should accept: the one held, refreshed if due, or a new login. */
  async _usableToken() {
    const tokens = this._tokens;
    if (this._auth !== null && (this._tokenSuspect || tokens.getToken() === null)) {
      const { username, password, authUrl = authUrlFor(this.url) } = this._auth;
      return tokens.authenticate(authUrl, username, password, this._explicitSession ?? undefined);
    }
    if (this._tokenSuspect) {
      return tokens.refreshToken(); // no password to log in again: a refused token ends it (401)
    }
    await tokens.refreshIfNeeded().catch(() => false); // a failed refresh: the old token still works
    const token = tokens.getToken();
    if (token === null) {
      throw new AuthError("token_expired", "the token expired and there is no password to log in again", 401);
    }
    return token;
  }

  // ------------------------------------------------------------------ keepalive and events

  _startKeepalive() {
    if (!(this.keepaliveInterval > 0)) return;
    this._keepaliveTimer = setInterval(() => {
      const socket = this._socket;
      this.ping().catch((error) => {
        // No pong in time: the hub or the network is gone even if TCP has not noticed.
        if (error.code === "timeout" && socket === this._socket) {
          this._onSocketClose(socket, { code: 1006, reason: "keepalive timeout" });
          try {
            socket.close();
          } catch {
            // already closing
          }
        }
      });
    }, this.keepaliveInterval);
  }

  _stopKeepalive() {
    clearInterval(this._keepaliveTimer);
    this._keepaliveTimer = null;
  }

  _setState(state) {
    const previous = this._state;
    if (state === previous) return;
    this._state = state;
    if (state === State.CLOSED) {
      // No connection is coming to send them again: the publishes still waiting for an ack fail.
      const { code, reason } = this._lastClose;
      for (const { call } of [...this._unacked.values()]) call.fail(new ConnectionClosedError(code, reason));
    }
    this._emit("statechange", { state, previous });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
