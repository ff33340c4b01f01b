// RustyWsClient: a rusty_ws connection for pages (and Node), with promises instead of raw strings.
// The mirror of rusty_ws/client/client.py's WsClient: every command goes out followed by a
// `ping`, and the hub handles one connection's commands in order, so the `pong` means the
// command is done, and an `error:` arriving before that pong is the command's answer.
//
// Users import rusty_ws.js, which re-exports this class with the rest of the public API.

import { ClosePolicy, backoffDelays, closePolicy } from "./backoff.js";
import { AuthError, ConnectionClosedError, RustyWsError, ServerError } from "./errors.js";
import { JwtManager } from "./jwt_utils.js";
import {
  PING,
  PONG,
  checkName,
  checkSession,
  checkTopic,
  isErrorReply,
  parseDelivery,
  parseError,
  publishCommand,
  registerNameCommand,
  registerSessionCommand,
  subscribeCommand,
  unsubscribeCommand,
} from "./protocol.js";
import { authUrlFor, openWebSocket, withToken } from "./transport.js";

/** The states a client goes through; "statechange" events report each change. */
export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** One call waiting for the `pong` that follows its command. */
class Ack {
  constructor(label, timeout) {
    this.label = label;
    this.error = null; // the first `error:` that arrived before the pong
    this.promise = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    // Stays queued after a timeout: the pong that comes late must still be matched to it.
    this._timer = setTimeout(() => this.fail(new RustyWsError("timeout", `no answer to ${label} within ${timeout} ms`)), timeout);
  }

  /** The pong came: resolve, or reject with the error that came first. */
  settle() {
    clearTimeout(this._timer);
    if (this.error) this._reject(this.error);
    else this._resolve();
  }

  fail(error) {
    clearTimeout(this._timer);
    this._reject(error);
  }
}

/**
 * A connection to a rusty_ws hub that registers, subscribes, publishes, and reconnects by itself.
 *
 * Events (it is an EventTarget; each event's `detail` carries the data):
 * - "statechange" {state, previous}: idle -> connecting -> open <-> reconnecting -> closed
 * - "open" {reconnected}: connected and registered (after a reconnect: subscriptions restored)
 * - "close" {code, reason, willReconnect}: the connection ended
 * - "reconnecting" {attempt, delay}: before each reconnection attempt (delay in ms)
 * - "message" {message}: every delivery, whatever its topic
 * - "error" {error}: an `error:` reply no call was waiting for, a handler that threw, a bad frame
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

    this._state = State.IDLE;
    this._socket = null; // the live socket; frames and closes of any other are stale
    this._waiters = []; // Acks, in the order their pongs will come
    this._subscriptions = new Set(); // topics to restore after a reconnect
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
   * Subscribe to `topic` in this client's session; restored after every reconnect.
   * @param {string} topic
   * @returns {Promise<void>} resolves once the hub has registered it
   * @throws {RustyWsError} "invalid_topic" before anything is sent; {ServerError} e.g. "too_many_subscriptions"
   */
  async subscribe(topic) {
    checkTopic(topic);
    await this._command(() => subscribeCommand(topic, this._sessionId), `subscribe ${topic}`);
    this._subscriptions.add(topic);
  }

  /**
   * Stop receiving `topic`. Handlers registered with onMessage stay.
   * @param {string} topic
   * @returns {Promise<void>} resolves once the hub has done it
   */
  async unsubscribe(topic) {
    checkTopic(topic);
    this._subscriptions.delete(topic);
    await this._command(() => unsubscribeCommand(topic, this._sessionId), `unsubscribe ${topic}`);
  }

  /**
   * Publish `payload` (any JSON value) to `topic` in this client's session.
   * @param {string} topic
   * @param {*} payload
   * @param {{publisherName?: string, timestamp?: string}} [options] defaults: this client's name, now
   * @returns {Promise<void>} resolves once the hub has handed it to every subscriber
   */
  async publish(topic, payload, { publisherName = this.name, timestamp = new Date().toISOString() } = {}) {
    checkTopic(topic);
    await this._command(() => publishCommand({
      publisher_name: publisherName,
      topic,
      payload: payload === undefined ? null : payload,
      timestamp,
      session_id: this._sessionId,
    }), `publish ${topic}`);
  }

  /**
   * A round trip: resolves once every earlier call of this client is done.
   * @returns {Promise<void>}
   */
  async ping() {
    await this._command(null, "ping");
  }

  /**
   * Call `handler(payload, message)` for each delivery on `topic` (`message` is the whole JSON object).
   * @param {string} topic
   * @param {(payload: *, message: object) => void} handler
   * @returns {() => void} a function that removes the handler
   */
  onMessage(topic, handler) {
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    if (!this._handlers.has(topic)) this._handlers.set(topic, new Set());
    this._handlers.get(topic).add(handler);
    return () => this._handlers.get(topic)?.delete(handler);
  }

  // ------------------------------------------------------------------ sending

  async _command(makeText, label) {
    const text = makeText === null ? null : makeText(); // throws on a bad topic before any wait
    if (this._state !== State.OPEN) await this._whenOpen();
    const socket = this._socket;
    if (socket === null) throw new ConnectionClosedError(this._lastClose.code, this._lastClose.reason);
    const ack = new Ack(label, this.timeout);
    try {
      if (text !== null) socket.send(text);
      socket.send(PING);
    } catch (error) {
      ack.fail(new ConnectionClosedError(1006, `send failed: ${error.message}`));
      return ack.promise;
    }
    this._waiters.push(ack);
    return ack.promise;
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

  /** Make `socket` the live one and send name, session (and subscriptions) with one ping. */
  _register(socket, { replay }) {
    // Every frame is made first: a session the hub would refuse (`session-{name}` from a
    // name with a '|') throws here, before the socket is live or an Ack waits.
    const frames = [registerNameCommand(this.name), registerSessionCommand(this._sessionId)];
    if (replay) {
      for (const topic of this._subscriptions) frames.push(subscribeCommand(topic, this._sessionId));
    }
    this._socket = socket;
    const ack = new Ack(replay ? "resubscribe" : "register", this.timeout);
    for (const frame of frames) socket.send(frame);
    socket.send(PING);
    this._waiters.push(ack);
    return ack.promise;
  }

  // ------------------------------------------------------------------ receiving

  _onFrame(socket, data) {
    if (socket !== this._socket) return; // a frame from a socket we already gave up on
    if (typeof data !== "string") {
      this._emit("error", { error: new RustyWsError("invalid_message", "the hub sent a binary frame") });
      return;
    }
    if (data === PONG) {
      this._waiters.shift()?.settle();
    } else if (isErrorReply(data)) {
      const error = parseError(data);
      const ack = this._waiters[0];
      if (ack === undefined) this._emit("error", { error });
      else ack.error ??= error;
    } else {
      this._deliver(data);
    }
  }

  _deliver(text) {
    const message = parseDelivery(text);
    if (message === null) {
      this._emit("error", { error: new RustyWsError("invalid_message", `not a delivery: ${text.slice(0, 100)}`) });
      return;
    }
    this._emit("message", { message });
    for (const handler of [...(this._handlers.get(message.topic) ?? [])]) {
      try {
        handler(message.payload, message);
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
    const policy = closePolicy(this._lastClose.code);
    const willReconnect = this.reconnect && !this._closedByUser && policy !== ClosePolicy.DO_NOT_RECONNECT;
    this._emit("close", { ...this._lastClose, willReconnect });
    if (willReconnect) {
      this._setState(State.RECONNECTING);
      this._scheduleReconnect(policy);
    } else {
      this._setState(State.CLOSED);
    }
  }

  /** Forget `socket`: fail every call waiting on it. Its later frames and close event are ignored. */
  _connectionLost(socket, code, reason) {
    if (socket !== this._socket) return;
    this._socket = null;
    this._stopKeepalive();
    this._lastClose = { code, reason };
    const waiters = this._waiters;
    this._waiters = [];
    for (const ack of waiters) ack.fail(new ConnectionClosedError(code, reason));
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

  _scheduleReconnect(policy) {
    this._delays ??= backoffDelays(this._backoffOptions);
    this._attempt += 1;
    const delay = this._attempt === 1 && policy === ClosePolicy.RECONNECT_NOW ? 0 : this._delays.next().value;
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
        // The hub refused a restored subscription (its limit may have changed): say so, carry on.
        this._emit("error", { error });
      });
    } catch (error) {
      this._drop(socket, error.closeCode ?? 1006, error.message);
      if (this._closedByUser) return;
      if (error instanceof AuthError && error.status === 401) {
        this._lastClose = { code: 4001, reason: error.message }; // the password stopped working
        this._emit("error", { error });
        this._setState(State.CLOSED);
        return;
      }
      this._scheduleReconnect(ClosePolicy.BACK_OFF);
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
  }

  async _openSocket() {
    let url = this.url;
    if (this._tokens !== null) {
      const token = await this._usableToken();
      url = withToken(url, token);
      this._sessionId = this._explicitSession ?? this._tokens.getSessionId();
    }
    this._sessionId ??= `session-${this.name}`;
    let socket;
    try {
      socket = await openWebSocket(this._WebSocket, url, this.timeout);
    } catch (error) {
      // Browsers hide why a handshake failed: the hub may be down, or may have restarted with
      // a new secret and refused the token (401). Either way, get a new token next time.
      if (this._tokens !== null) this._tokenSuspect = true;
      throw error;
    }
    socket.addEventListener("message", (event) => this._onFrame(socket, event.data));
    socket.addEventListener("close", (event) => this._onSocketClose(socket, event));
    return socket;
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
    this._emit("statechange", { state, previous });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
