// Logging in to a rusty_ws hub and opening WebSockets with the token: the seed's jwt_utils.js.
//
//   import { jwtManager, createAuthenticatedWebSocket } from "http://127.0.0.1:8081/rusty_ws/jwt_utils.js";
//   const ws = await createAuthenticatedWebSocket(wsUrl, authUrl, "testuser", "password", "session-A");
//
// The token lives in memory only (never localStorage: a script injected into the page
// could read it there long after the tab closed). It is refreshed through
// /auth/refresh before it expires, so reconnections always have a valid one.

import { AuthError } from "./errors.js";
import { absoluteUrl, openWebSocket, withToken } from "./transport.js";

// The seed's pages import everything from this one file: what moved to errors.js and
// transport.js is still exported here.
export { AuthError } from "./errors.js";
export { authUrlFor, openWebSocket, withToken } from "./transport.js";

/** Refresh when fewer than this many ms remain (the seed's 5 minutes), or half the lifetime if shorter. */
export const REFRESH_THRESHOLD_MS = 300_000;
/** Give up on a refresh that failed once less than this remains: the token is as good as gone. */
const MIN_RETRY_MS = 1_000;
/** At most one background refresh a second, however short-lived the tokens. */
const MIN_REFRESH_DELAY_MS = 1_000;
/** `exp` counts whole seconds, so a token may expire up to a second before `expires_in` says. */
const EXPIRY_PRECISION_MS = 1_000;

/**
 * `.../auth/token` -> `.../auth/refresh` (client/tokens.py's refresh_url_for).
 * @param {string} authUrl
 * @returns {string}
 */
export function refreshUrlFor(authUrl) {
  const url = absoluteUrl(authUrl);
  url.pathname = url.pathname.replace(/\/+$/, "").replace(/\/token$/, "") + "/refresh";
  return url.href;
}

async function postJson(fetchImpl, url, body, headers = {}) {
  let response;
  try {
    response = await fetchImpl(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
  } catch (error) {
    throw new AuthError("unreachable", `cannot reach ${url}: ${error.message}`);
  }
  let reply = null;
  try {
    reply = await response.json();
  } catch {
    // not JSON: judged by the status below
  }
  if (!response.ok || !reply || typeof reply.token !== "string") {
    const code = typeof reply?.code === "string" ? reply.code : "http_error";
    const message = typeof reply?.error === "string" ? reply.error : `HTTP ${response.status}`;
    throw new AuthError(code, message, response.status);
  }
  return reply;
}

/**
 * Holds one token: logs in, answers whether it is still good, and refreshes it before it expires.
 *
 * Events (an EventTarget): "token" (detail {token, expiresIn, sessionId}) after every login
 * or refresh, "refresherror" (detail {error}) when a background refresh failed, "cleared".
 */
export class JwtManager extends EventTarget {
  /**
   * @param {{fetch?: typeof fetch, now?: () => number, autoRefresh?: boolean}} [options]
   *   fetch: the HTTP client (default the global one); now: the clock in ms (tests);
   *   autoRefresh: refresh in the background before expiry (default true).
   */
  constructor({ fetch: fetchImpl, now = () => Date.now(), autoRefresh = true } = {}) {
    super();
    this._fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
    this._now = now;
    this.autoRefresh = autoRefresh;
    this._token = null;
    this._expiresAt = 0;
    this._lifetimeMs = 0;
    this._sessionId = null;
    this._refreshUrl = null;
    this._timer = null;
  }

  /**
   * Log in at `authUrl` (POST {username, password, session_id}) and keep the token.
   * @param {string} authUrl e.g. "http://127.0.0.1:8081/auth/token"
   * @param {string} username
   * @param {string} password
   * @param {string} [sessionId] the session to bind the token to (default: the hub's, session-{username})
   * @returns {Promise<string>} the token
   * @throws {AuthError} refused (code "bad_credentials", ...) or unreachable (code "unreachable")
   */
  async authenticate(authUrl, username, password, sessionId) {
    const body = { username, password };
    if (sessionId) body.session_id = sessionId;
    const reply = await postJson(this._fetch, authUrl, body);
    this._keep(reply, refreshUrlFor(authUrl));
    return reply.token;
  }

  /**
   * Trade the current, still valid token for a fresh one at /auth/refresh.
   * @returns {Promise<string>} the new token
   * @throws {AuthError} no valid token to refresh (code "token_expired"), or the hub refused
   */
  async refreshToken() {
    const token = this.getToken();
    if (token === null || this._refreshUrl === null) {
      throw new AuthError("token_expired", "no valid token to refresh: log in again", 401);
    }
    const reply = await postJson(this._fetch, this._refreshUrl, {}, { Authorization: `Bearer ${token}` });
    if (this._token !== token) return this._token ?? reply.token; // cleared or replaced meanwhile
    this._keep(reply, this._refreshUrl);
    return reply.token;
  }

  /**
   * Refresh when the token is close to expiry (the seed's refresh_token_if_needed).
   * @returns {Promise<boolean>} whether it refreshed
   */
  async refreshIfNeeded() {
    if (this.getToken() === null || this.msLeft() > this._threshold()) return false;
    await this.refreshToken();
    return true;
  }

  /** The token if it has not expired, else null. */
  getToken() {
    return this._token !== null && this.msLeft() > 0 ? this._token : null;
  }

  /** True while a token is held and has not expired. */
  isAuthenticated() {
    return this.getToken() !== null;
  }

  /** The session the token is bound to (the hub's answer), or null without a token. */
  getSessionId() {
    return this.getToken() === null ? null : this._sessionId;
  }

  /** Milliseconds until the token expires (0 without one). */
  msLeft() {
    return this._token === null ? 0 : Math.max(0, this._expiresAt - this._now());
  }

  /** Forget the token (log out) and stop refreshing it. */
  clearToken() {
    this._cancelTimer();
    const had = this._token !== null;
    this._token = null;
    this._expiresAt = 0;
    this._sessionId = null;
    if (had) this.dispatchEvent(new CustomEvent("cleared"));
  }

  _keep(reply, refreshUrl) {
    // Expiry from the local clock and expires_in: immune to a skew between our clock and the hub's.
    const expiresIn = Number(reply.expires_in) > 0 ? Number(reply.expires_in) : 3600;
    this._token = reply.token;
    this._lifetimeMs = expiresIn * 1000;
    this._expiresAt = this._now() + Math.max(0, this._lifetimeMs - EXPIRY_PRECISION_MS);
    this._sessionId = typeof reply.session_id === "string" ? reply.session_id : null;
    this._refreshUrl = refreshUrl;
    this.dispatchEvent(new CustomEvent("token", {
      detail: { token: reply.token, expiresIn, sessionId: this._sessionId },
    }));
    this._schedule(this.msLeft() - this._threshold());
  }

  _threshold() {
    return Math.min(REFRESH_THRESHOLD_MS, this._lifetimeMs / 2);
  }

  _schedule(delay) {
    this._cancelTimer();
    if (!this.autoRefresh) return;
    this._timer = setTimeout(() => this._refreshInBackground(), Math.max(MIN_REFRESH_DELAY_MS, delay));
    this._timer?.unref?.(); // in Node, a pending refresh must not keep the process alive
  }

  async _refreshInBackground() {
    this._timer = null;
    try {
      await this.refreshToken();
    } catch (error) {
      this.dispatchEvent(new CustomEvent("refresherror", { detail: { error } }));
      const left = this.msLeft();
      if (left > MIN_RETRY_MS) this._schedule(Math.min(30_000, left / 2));
    }
  }

  _cancelTimer() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
  }
}

/** The page's shared token holder, as the seed's snippets use it. */
export const jwtManager = new JwtManager();

/**
 * Log in, then open a WebSocket with `?token=`; resolves once it is open (the seed's function).
 *
 * It keeps `?token=` (which ends up in access logs; the hub redacts it in its own) on purpose: the
 * seed's pages get a raw socket back and `send` on it at once, as an authenticated connection.
 * With first-frame auth they would have to send `auth:{token}` first and wait for `authenticated:`
 * themselves, or their first commands would be refused (`auth:` is taken only as the first frame;
 * with RUSTY_WS_REQUIRE_AUTH any other first frame closes with 4001). New code should use
 * RustyWsClient, which sends `auth:{token}` as the first frame by default.
 * @param {string} wsUrl e.g. "ws://127.0.0.1:8081/ws"
 * @param {string} authUrl e.g. "http://127.0.0.1:8081/auth/token"
 * @param {string} username
 * @param {string} password
 * @param {string} [sessionId] the session the token is bound to
 * @param {{WebSocket?: Function, manager?: JwtManager, timeout?: number}} [options]
 *   WebSocket: the implementation (default the global one; in Node pass the `ws` package's);
 *   manager: where the token is kept (default `jwtManager`); timeout: ms to wait for the open.
 * @returns {Promise<WebSocket>} an open WebSocket
 * @throws {AuthError} the login was refused; {ConnectionClosedError} the WebSocket did not open
 */
export async function createAuthenticatedWebSocket(wsUrl, authUrl, username, password, sessionId, options = {}) {
  const { WebSocket: WebSocketImpl = globalThis.WebSocket, manager = jwtManager, timeout = 10_000 } = options;
  const token = await manager.authenticate(authUrl, username, password, sessionId);
  return openWebSocket(WebSocketImpl, withToken(wsUrl, token), timeout);
}
