// When to reconnect, as pure functions: the JavaScript mirror of rusty_ws/backoff.py and of
// protocol.py's close policy (ClosePolicy, CloseCode, close_policy). No sockets and no
// timers: the caller waits, so the same file runs in browsers and in Node.

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
  TOKEN_EXPIRED: 4002,
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

/** Ms of random delay a client adds before it reconnects "now" when the close reason names no window. */
export const RECONNECT_JITTER_MS = 1000;
const WINDOW_WORDS = "server restarting; reconnect within "; // a 4200's explanation, and the window

/**
 * Ms over which to spread a "reconnect now": the window a close reason names (a hub shutting down
 * with many connections says "server restarting; reconnect within 6.5 s"), else RECONNECT_JITTER_MS.
 * Any other reason, a malformed or hostile one included (or the words after another close's
 * explanation), gives RECONNECT_JITTER_MS. At most an hour.
 * The mirror of protocol.py's reconnect_window.
 * @param {string} reason
 * @returns {number}
 */
export function reconnectWindow(reason) {
  if (typeof reason !== "string" || !reason.startsWith(WINDOW_WORDS)) return RECONNECT_JITTER_MS;
  const match = /^(\d{1,8}(?:\.\d{0,7})?) s$/.exec(reason.slice(WINDOW_WORDS.length));
  if (match === null || match[1].length > 8) return RECONNECT_JITTER_MS;
  return Math.min(3600000, Math.max(RECONNECT_JITTER_MS, Number(match[1]) * 1000));
}

/**
 * Ms to wait before reconnecting "now": a random part of the window the close reason names, else
 * of twice the back-off's first delay, at most RECONNECT_JITTER_MS (1 s with the default back-off).
 * @param {string} reason
 * @param {number} [initial=500] the back-off's first delay in ms
 * @param {() => number} [random=Math.random]
 * @returns {number}
 */
export function firstDelay(reason, initial = 500, random = Math.random) {
  let window = reconnectWindow(reason);
  if (window <= RECONNECT_JITTER_MS) window = Math.min(RECONNECT_JITTER_MS, 2 * initial);
  return window * random();
}

/** The longest wait, in ms, a `Retry-After` is taken for; a longer one is not believed. */
export const MAX_RETRY_AFTER_MS = 3600000;

/**
 * Ms to wait after a 503 whose `Retry-After` is `value`: that many seconds, plus up to one more at
 * random (a hub pacing a reconnect storm sends the clients it turns away to the seconds ahead; the
 * random part spreads those sent to the same second). `null` (back off as usual) when there is no
 * header or it is not a whole number of seconds up to an hour (an HTTP date included). The mirror
 * of backoff.py's retry_after.
 * @param {string|null|undefined} value
 * @param {() => number} [random=Math.random]
 * @returns {number|null}
 */
export function retryAfterDelay(value, random = Math.random) {
  if (typeof value !== "string") return null;
  const text = value.trim();
  if (!/^[0-9]{1,4}$/.test(text) || Number(text) * 1000 > MAX_RETRY_AFTER_MS) return null;
  return (Number(text) + random()) * 1000;
}
