// The wire protocol, as pure functions: the JavaScript mirror of rusty_ws/protocol.py
// and rusty_ws/backoff.py. No sockets, no timers, no DOM: the same file runs in
// browsers and in Node, and its tests use literal strings.

/** Longest topic, session id and client name, in characters (protocol.py's limits). */
export const MAX_TOPIC_LENGTH = 256;
export const MAX_SESSION_LENGTH = 256;
export const MAX_NAME_LENGTH = 256;

export const PONG = "pong";
const ERROR_PREFIX = "error:";

/** What a client does after the server closed with a given code (protocol.py's ClosePolicy). */
export const ClosePolicy = Object.freeze({
  DO_NOT_RECONNECT: "do_not_reconnect",
  BACK_OFF: "back_off",
  RECONNECT_NOW: "reconnect_now",
});

/** Close codes the hub sends: standard ones, then rusty_ws's three ranges. */
export const CloseCode = Object.freeze({
  NORMAL_CLOSURE: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL_CLOSURE: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  UNAUTHORIZED: 4001,
  FORBIDDEN: 4003,
  SLOW_CONSUMER: 4100,
  OVERLOADED: 4101,
  KEEPALIVE_TIMEOUT: 4102,
  SERVER_RESTARTING: 4200,
});

const STANDARD_POLICIES = new Map([
  [1000, ClosePolicy.BACK_OFF],
  [1001, ClosePolicy.RECONNECT_NOW],
  [1002, ClosePolicy.DO_NOT_RECONNECT],
  [1003, ClosePolicy.DO_NOT_RECONNECT],
  [1007, ClosePolicy.DO_NOT_RECONNECT],
  [1008, ClosePolicy.DO_NOT_RECONNECT],
  [1012, ClosePolicy.RECONNECT_NOW],
]);

/**
 * What a client should do after the server closed with `code`.
 * 4000-4099: do not reconnect; 4100-4199: back off; 4200-4299: reconnect now.
 * Unknown and abnormal codes (1006, 1011, ...) back off: retrying slowly is the safe default.
 * @param {number} code
 * @returns {string} one of ClosePolicy's values
 */
export function closePolicy(code) {
  if (code >= 4000 && code <= 4099) return ClosePolicy.DO_NOT_RECONNECT;
  if (code >= 4100 && code <= 4199) return ClosePolicy.BACK_OFF;
  if (code >= 4200 && code <= 4299) return ClosePolicy.RECONNECT_NOW;
  return STANDARD_POLICIES.get(code) ?? ClosePolicy.BACK_OFF;
}

// ------------------------------------------------------------------ errors

/** The base of every error this package throws; `code` is a stable string to branch on. */
export class RustyWsError extends Error {
  /**
   * @param {string} code e.g. "invalid_topic", "timeout", "not_connected"
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "RustyWsError";
    this.code = code;
  }
}

/** The server answered a command with an `error:` reply (`code` is protocol.py's ErrorCode). */
export class ServerError extends RustyWsError {
  constructor(code, message, command = null) {
    super(code, message);
    this.name = "ServerError";
    this.command = command;
  }
}

/** The connection closed (or never opened) before the call could finish. */
export class ConnectionClosedError extends RustyWsError {
  /**
   * @param {number} closeCode the WebSocket close code (1006 when the connection dropped)
   * @param {string} reason
   */
  constructor(closeCode, reason) {
    super("connection_closed", `connection closed (${closeCode}${reason ? ` ${reason}` : ""})`);
    this.name = "ConnectionClosedError";
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

// ------------------------------------------------------------------ checks

function hasControlChars(text) {
  // U+0000-U+001F and U+007F, as protocol.py's _has_control_chars.
  return /[\u0000-\u001f\u007f]/.test(text);
}

function checkToken(kind, code, value, maxLength, allowBar) {
  // Lengths in code points, as Python's len(): an emoji counts once, not twice.
  if (typeof value !== "string" || value.length === 0 || Array.from(value).length > maxLength
      || (!allowBar && value.includes("|")) || hasControlChars(value)) {
    const bar = allowBar ? "" : ", without '|'";
    throw new RustyWsError(code, `a ${kind} is 1 to ${maxLength} characters${bar} and without control characters`);
  }
  return value;
}

/**
 * `topic` if the hub would accept it; throws RustyWsError("invalid_topic") otherwise.
 * @param {string} topic
 * @returns {string}
 */
export function checkTopic(topic) {
  return checkToken("topic", "invalid_topic", topic, MAX_TOPIC_LENGTH, false);
}

/** `sessionId` if the hub would accept it; throws RustyWsError("invalid_session") otherwise. */
export function checkSession(sessionId) {
  return checkToken("session id", "invalid_session", sessionId, MAX_SESSION_LENGTH, false);
}

/** `name` if the hub would accept it; throws RustyWsError("invalid_name") otherwise. */
export function checkName(name) {
  return checkToken("name", "invalid_name", name, MAX_NAME_LENGTH, true);
}

// ------------------------------------------------------------------ frames

/** The text of a `subscribe` command. */
export function subscribeCommand(topic, sessionId) {
  return `subscribe:${checkTopic(topic)}|${checkSession(sessionId)}`;
}

/** The text of an `unsubscribe` command. */
export function unsubscribeCommand(topic, sessionId) {
  return `unsubscribe:${checkTopic(topic)}|${checkSession(sessionId)}`;
}

/**
 * The text of a `publish-json` command, in the seed's field order.
 * @param {{publisher_name: string, topic: string, payload: *, timestamp: string, session_id: string}} message
 */
export function publishCommand(message) {
  checkTopic(message.topic);
  checkSession(message.session_id);
  return `publish-json:${JSON.stringify(message)}`;
}

/** True for an `error:` reply; a delivery is a JSON object and never starts so. */
export function isErrorReply(text) {
  return text.startsWith(ERROR_PREFIX);
}

/**
 * Turn an `error:` reply into a ServerError (a malformed one still becomes an error, code "unknown").
 * @param {string} text
 * @returns {ServerError}
 */
export function parseError(text) {
  const body = text.slice(ERROR_PREFIX.length);
  try {
    const reply = JSON.parse(body);
    if (reply && typeof reply === "object" && reply.code !== undefined) {
      return new ServerError(String(reply.code), String(reply.message ?? ""), reply.command ?? null);
    }
  } catch {
    // fall through: not JSON
  }
  return new ServerError("unknown", body);
}

/**
 * Parse a delivery: a JSON object with a string `topic`. Returns null for anything else.
 * @param {string} text
 * @returns {?{publisher_name: string, topic: string, payload: *, timestamp: string, session_id: string, user?: string}}
 */
export function parseDelivery(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return null;
  }
  if (!message || typeof message !== "object" || Array.isArray(message) || typeof message.topic !== "string") {
    return null;
  }
  return message;
}

// ------------------------------------------------------------------ backoff

/**
 * Milliseconds to wait before each reconnection attempt, forever (backoff.py's delays()).
 * The first delay is random in [0, initial], so clients dropped together do not come back
 * together; then initial * factor**n, at most cap, each shortened by up to `jitter` at random.
 * A fresh generator starts over: make a new one after every good connection.
 * @param {{initial?: number, factor?: number, cap?: number, jitter?: number, random?: () => number}} [options]
 * @returns {Generator<number>}
 */
export function* backoffDelays({ initial = 500, factor = 2, cap = 30000, jitter = 0.5, random = Math.random } = {}) {
  if (!(initial >= 0 && factor >= 1 && cap >= 0 && jitter >= 0 && jitter <= 1)) {
    throw new RangeError("need initial >= 0, factor >= 1, cap >= 0 and 0 <= jitter <= 1");
  }
  yield initial * random();
  let delay = initial;
  for (;;) {
    yield Math.min(cap, delay) * (1 - jitter * random());
    delay = Math.min(cap, delay * factor);
  }
}
