// The wire grammar, as pure functions: the JavaScript mirror of rusty_ws/protocol.py's
// limits, checks, command encoders and replies. No sockets, no timers, no DOM: the same
// file runs in browsers and in Node, and its tests use literal strings.
//
// It also re-exports what lived here before it got a module of its own (the errors of the
// wire from errors.js, the close policy and backoff from backoff.js), so imports such as
// `import { closePolicy } from "./protocol.js"` keep working.

import { RustyWsError, ServerError } from "./errors.js";

export { ConnectionClosedError, RustyWsError, ServerError } from "./errors.js";
export { CloseCode, ClosePolicy, backoffDelays, closePolicy } from "./backoff.js";

/** Longest topic, session id and client name, in characters (protocol.py's limits). */
export const MAX_TOPIC_LENGTH = 256;
export const MAX_SESSION_LENGTH = 256;
export const MAX_NAME_LENGTH = 256;

/** The hub's answer to `ping`, once every earlier command of the connection is done. */
export const PONG = "pong";
/** The command whose `pong` acknowledges the commands sent before it. */
export const PING = "ping";
const ERROR_PREFIX = "error:";

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
