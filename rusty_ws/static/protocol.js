// The wire grammar, as pure functions: the JavaScript mirror of rusty_ws/protocol.py's
// limits, checks, command encoders and replies. No sockets, no timers, no DOM: the same
// file runs in browsers and in Node, and its tests use literal strings.
//
// It also re-exports what lived here before it got a module of its own (the errors of the
// wire from errors.js, the close policy and backoff from backoff.js), so imports such as
// `import { closePolicy } from "./protocol.js"` keep working.

import { RustyWsError, ServerError } from "./errors.js";

export { ConnectionClosedError, RustyWsError, ServerError } from "./errors.js";
export {
  CloseCode, ClosePolicy, MAX_RETRY_AFTER_MS, RECONNECT_JITTER_MS, backoffDelays, closePolicy, firstDelay,
  reconnectWindow, retryAfterDelay,
} from "./backoff.js";

/** Longest topic, session id and client name, in characters (protocol.py's limits). */
export const MAX_TOPIC_LENGTH = 256;
export const MAX_SESSION_LENGTH = 256;
export const MAX_NAME_LENGTH = 256;

/** Longest publish `id`, and longest epoch a client may send back, in characters (protocol.py's). */
export const MAX_PUBLISH_ID_LENGTH = 128;
export const MAX_EPOCH_LENGTH = 256;
/** Largest offset: the largest integer a JavaScript number holds exactly (2^53 - 1). */
export const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

/** The hub's answer to `ping`, once every earlier command of the connection is done. */
export const PONG = "pong";
/** The command whose `pong` acknowledges the commands sent before it. */
export const PING = "ping";
const ERROR_PREFIX = "error:";
const SUBSCRIBED_PREFIX = "subscribed:";
const HISTORY_PREFIX = "history:";
const ACK_PREFIX = "ack:";
const AUTHENTICATED_PREFIX = "authenticated:";
const REFRESHED_PREFIX = "refreshed:";

/** What a frame from the hub is (see replyKind). */
export const ReplyKind = Object.freeze({
  PONG: "pong",
  ERROR: "error",
  SUBSCRIBED: "subscribed",
  HISTORY: "history",
  ACK: "ack",
  AUTHENTICATED: "authenticated",
  REFRESHED: "refreshed",
  DELIVERY: "delivery",
});

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

/**
 * `id` if the hub would accept it as a publish id; throws RustyWsError("invalid_id") otherwise.
 * @param {string} id
 * @returns {string}
 */
export function checkPublishId(id) {
  if (typeof id !== "string" || id.length === 0 || Array.from(id).length > MAX_PUBLISH_ID_LENGTH) {
    throw new RustyWsError("invalid_id", `a publish id is a string of 1 to ${MAX_PUBLISH_ID_LENGTH} characters`);
  }
  return id;
}

/**
 * A place in a stream, `{offset, epoch}`, if the hub would accept it as `since`;
 * throws RustyWsError("invalid_since") otherwise. Returns a copy with only those two keys.
 * @param {{offset: number, epoch: string}} since
 * @returns {{offset: number, epoch: string}}
 */
export function checkSince(since) {
  const offset = since?.offset;
  const epoch = since?.epoch;
  if (!Number.isInteger(offset) || offset < 0 || offset > MAX_OFFSET) {
    throw new RustyWsError("invalid_since", `'since.offset' must be an integer from 0 to ${MAX_OFFSET}`);
  }
  if (typeof epoch !== "string" || epoch.length === 0 || Array.from(epoch).length > MAX_EPOCH_LENGTH) {
    throw new RustyWsError("invalid_since", `'since.epoch' must be a string of 1 to ${MAX_EPOCH_LENGTH} characters`);
  }
  return { offset, epoch };
}

/** `limit` if the hub would accept it in `history`; throws RustyWsError("invalid_limit") otherwise. */
export function checkLimit(limit) {
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RustyWsError("invalid_limit", "'limit' must be an integer of at least 1");
  }
  return limit;
}

/**
 * The `{offset, epoch}` a delivery or reply carries, or null when it has none (history off).
 * @param {?object} message
 * @returns {?{offset: number, epoch: string}}
 */
export function positionOf(message) {
  const offset = message?.offset;
  const epoch = message?.epoch;
  return Number.isInteger(offset) && typeof epoch === "string" ? { offset, epoch } : null;
}

// ------------------------------------------------------------------ frames

/** The text of a `register-name` command (the default publisher name of the connection). */
export function registerNameCommand(name) {
  return `register-name:${checkName(name)}`;
}

/** The text of a `register-session` command (the session of later commands without one). */
export function registerSessionCommand(sessionId) {
  return `register-session:${checkSession(sessionId)}`;
}

/** The text of a `subscribe` command. */
export function subscribeCommand(topic, sessionId) {
  return `subscribe:${checkTopic(topic)}|${checkSession(sessionId)}`;
}

/** The text of an `unsubscribe` command. */
export function unsubscribeCommand(topic, sessionId) {
  return `unsubscribe:${checkTopic(topic)}|${checkSession(sessionId)}`;
}

function checkTokenText(token) {
  if (typeof token !== "string" || token.trim() === "" || hasControlChars(token)) {
    throw new RustyWsError("token_invalid", "a token is a non-empty string without control characters");
  }
  return token.trim();
}

/** The text of an `auth` command (encode_auth): a token, as the very first frame of a connection opened without one. */
export function authCommand(token) {
  return `auth:${checkTokenText(token)}`;
}

/** The text of a `refresh` command (encode_refresh): a fresh token of the same `sub` and `sid`, in-band. */
export function refreshCommand(token) {
  return `refresh:${checkTokenText(token)}`;
}

/**
 * The text of a `publish-json` command, in the seed's field order (then `id`, if the message has one).
 * @param {{publisher_name: string, topic: string, payload: *, timestamp: string, session_id: string, id?: string}} message
 */
export function publishCommand(message) {
  checkTopic(message.topic);
  checkSession(message.session_id);
  if (message.id !== undefined && message.id !== null) checkPublishId(message.id);
  return `publish-json:${JSON.stringify(message)}`;
}

function streamBody(topic, sessionId, since) {
  const body = { topic: checkTopic(topic) };
  if (sessionId) body.session_id = checkSession(sessionId);
  return { body, since: since === undefined || since === null ? null : checkSince(since) };
}

/**
 * The text of a `subscribe-json` command: `{"topic", "session_id"?, "since"?}` (encode_subscribe_json).
 * @param {string} topic
 * @param {?string} [sessionId] left out when empty: the connection's session
 * @param {?{offset: number, epoch: string}} [since] the last place seen in the stream
 */
export function subscribeJsonCommand(topic, sessionId = null, since = null) {
  const { body, since: checked } = streamBody(topic, sessionId, since);
  if (checked) body.since = checked;
  return `subscribe-json:${JSON.stringify(body)}`;
}

/**
 * The text of a `history` command: `{"topic", "session_id"?, "limit"?, "since"?}` (encode_history).
 * @param {string} topic
 * @param {?string} [sessionId]
 * @param {{limit?: number, since?: {offset: number, epoch: string}}} [options]
 */
export function historyCommand(topic, sessionId = null, { limit = null, since = null } = {}) {
  const { body, since: checked } = streamBody(topic, sessionId, since);
  if (limit !== undefined && limit !== null) body.limit = checkLimit(limit);
  if (checked) body.since = checked;
  return `history:${JSON.stringify(body)}`;
}

// ------------------------------------------------------------------ replies

/**
 * What a frame from the hub is: `pong`, `error:`, `subscribed:`, `history:`, `ack:`, or else a
 * delivery (a JSON object; parseDelivery says whether it really is one).
 * @param {string} text
 * @returns {string} a ReplyKind
 */
export function replyKind(text) {
  if (text === PONG) return ReplyKind.PONG;
  if (text.startsWith(ERROR_PREFIX)) return ReplyKind.ERROR;
  if (text.startsWith(SUBSCRIBED_PREFIX)) return ReplyKind.SUBSCRIBED;
  if (text.startsWith(HISTORY_PREFIX)) return ReplyKind.HISTORY;
  if (text.startsWith(ACK_PREFIX)) return ReplyKind.ACK;
  if (text.startsWith(AUTHENTICATED_PREFIX)) return ReplyKind.AUTHENTICATED;
  if (text.startsWith(REFRESHED_PREFIX)) return ReplyKind.REFRESHED;
  return ReplyKind.DELIVERY;
}

function replyBody(prefix, text) {
  if (!text.startsWith(prefix)) return null;
  try {
    const body = JSON.parse(text.slice(prefix.length));
    return body && typeof body === "object" && !Array.isArray(body) ? body : null;
  } catch {
    return null;
  }
}

/** offset and epoch when the body has both (history on), nothing otherwise. */
function positionFields(body) {
  const position = positionOf(body);
  return position === null ? {} : position;
}

/**
 * Parse a `subscribed:` reply (protocol.py's Subscribed): the subscription is active from `offset` on.
 * `offset`/`epoch` are absent with history off; `recovered` only answers a subscribe with `since`.
 * @param {string} text
 * @returns {?{topic: string, session_id: string, offset?: number, epoch?: string, recovered?: boolean}}
 *   null when it is not a `subscribed:` object
 */
export function parseSubscribed(text) {
  const body = replyBody(SUBSCRIBED_PREFIX, text);
  if (body === null) return null;
  const reply = { topic: String(body.topic ?? ""), session_id: String(body.session_id ?? ""), ...positionFields(body) };
  if (typeof body.recovered === "boolean") reply.recovered = body.recovered;
  return reply;
}

/**
 * Parse a `history:` reply (protocol.py's HistoryReply): the stream's top and messages, oldest first.
 * @param {string} text
 * @returns {?{topic: string, session_id: string, offset?: number, epoch?: string, messages: object[]}}
 *   `messages` are deliveries as parseDelivery makes them; null when it is not a `history:` object
 */
export function parseHistory(text) {
  const body = replyBody(HISTORY_PREFIX, text);
  if (body === null) return null;
  const messages = Array.isArray(body.messages) ? body.messages.filter(isDeliveryObject) : [];
  return { topic: String(body.topic ?? ""), session_id: String(body.session_id ?? ""), ...positionFields(body), messages };
}

/**
 * Parse an `ack:` reply (protocol.py's Ack): the publish with `id` is in its stream at `offset`,
 * and was handed to `delivered` subscribers of the hub that took it (absent from hubs that do not say).
 * @param {string} text
 * @returns {?{id: string, offset?: number, epoch?: string, delivered?: number}} null when it is not
 *   an `ack:` object
 */
export function parseAck(text) {
  const body = replyBody(ACK_PREFIX, text);
  if (body === null || typeof body.id !== "string") return null;
  const delivered = Number.isSafeInteger(body.delivered) && body.delivered >= 0 ? { delivered: body.delivered } : {};
  return { id: body.id, ...positionFields(body), ...delivered };
}

/**
 * Parse an `authenticated:` reply (protocol.py's Authenticated): the connection acts as `sub`, from `sid`.
 * @param {string} text
 * @returns {?{sub: string, sid: string, expires_in: number}} null when it is not an `authenticated:` object
 */
export function parseAuthenticated(text) {
  const body = replyBody(AUTHENTICATED_PREFIX, text);
  if (body === null || !Number.isSafeInteger(body.expires_in)) return null;
  return { sub: String(body.sub ?? ""), sid: String(body.sid ?? ""), expires_in: body.expires_in };
}

/**
 * Parse a `refreshed:` reply (protocol.py's Refreshed): the connection's token was replaced.
 * @param {string} text
 * @returns {?{expires_in: number}} null when it is not a `refreshed:` object
 */
export function parseRefreshed(text) {
  const body = replyBody(REFRESHED_PREFIX, text);
  if (body === null || !Number.isSafeInteger(body.expires_in)) return null;
  return { expires_in: body.expires_in };
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
      const id = typeof reply.id === "string" ? reply.id : null; // the publish it answers, if it had an id
      return new ServerError(String(reply.code), String(reply.message ?? ""), reply.command ?? null, id);
    }
  } catch {
    // fall through: not JSON
  }
  return new ServerError("unknown", body);
}

function isDeliveryObject(message) {
  return Boolean(message) && typeof message === "object" && !Array.isArray(message) && typeof message.topic === "string";
}

/**
 * Parse a delivery: a JSON object with a string `topic`. Returns null for anything else.
 * With history on it ends with `offset` and `epoch` (see positionOf).
 * @param {string} text
 * @returns {?{publisher_name: string, topic: string, payload: *, timestamp: string, session_id: string,
 *   user?: string, offset?: number, epoch?: string}}
 */
export function parseDelivery(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return null;
  }
  return isDeliveryObject(message) ? message : null;
}
