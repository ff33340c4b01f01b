// Opening a WebSocket to the hub, and the URLs around it: the JavaScript mirror of
// rusty_ws/client/connector.py. It knows sockets and URLs, not the wire grammar and not tokens'
// lifetimes: the token is just a query parameter here (withToken), for the seed's
// createAuthenticatedWebSocket and RustyWsClient's `tokenInUrl`; RustyWsClient otherwise sends
// it in its first frame (client.js).

import { ConnectionClosedError, RustyWsError } from "./errors.js";

/**
 * `url` resolved against the page's address (in Node, it must be absolute already).
 * @param {string|URL} url
 * @returns {URL}
 */
export function absoluteUrl(url) {
  return new URL(url, globalThis.location?.href);
}

/**
 * The hub's login URL for its WebSocket URL: `ws://h/p/ws` -> `http://h/p/auth/token`.
 * @param {string} wsUrl
 * @returns {string}
 */
export function authUrlFor(wsUrl) {
  const url = absoluteUrl(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/ws\/?$/, "") + "/auth/token";
  url.search = "";
  return url.href;
}

/**
 * `wsUrl` with `?token=` set (an existing query is kept, an old token replaced).
 * @param {string} wsUrl
 * @param {string} token
 * @returns {string}
 */
export function withToken(wsUrl, token) {
  const url = absoluteUrl(wsUrl);
  url.searchParams.set("token", token);
  return url.href;
}

/**
 * Open `url` and resolve with the socket once it is open; reject if it closes or times out first.
 * @param {Function} WebSocketImpl
 * @param {string} url
 * @param {number} timeout ms
 * @returns {Promise<WebSocket>}
 */
export function openWebSocket(WebSocketImpl, url, timeout) {
  if (typeof WebSocketImpl !== "function") {
    return Promise.reject(new RustyWsError("no_websocket", "no WebSocket implementation: pass one in the options"));
  }
  return new Promise((resolve, reject) => {
    let socket;
    try {
      socket = new WebSocketImpl(url);
    } catch (error) {
      reject(new RustyWsError("invalid_url", `cannot open ${url}: ${error.message}`));
      return;
    }
    const done = (error) => {
      clearTimeout(timer);
      socket.removeEventListener("open", onOpen);
      socket.removeEventListener("close", onClose);
      if (error) reject(error);
      else resolve(socket);
    };
    const onOpen = () => done(null);
    // A refused handshake (bad token, wrong origin, hub down) shows as close code 1006:
    // browsers hide the HTTP status from scripts. Node's `ws` shows it ("unexpected-response"):
    // a 503's Retry-After (a hub pacing a reconnect storm) then travels on the error.
    let refusal = null;
    const onClose = (event) => {
      const error = new ConnectionClosedError(event.code ?? 1006, event.reason || refusal?.message || "could not connect");
      if (refusal !== null) Object.assign(error, { status: refusal.status, retryAfter: refusal.retryAfter });
      done(error);
    };
    if (typeof socket.on === "function") {
      socket.on("unexpected-response", (request, response) => {
        const retryAfter = response.headers?.["retry-after"];
        refusal = { status: response.statusCode, retryAfter: typeof retryAfter === "string" ? retryAfter : null,
                    message: `HTTP ${response.statusCode}` };
        response.resume?.(); // the body is not read; ws leaves the request to us once we listen
        socket.terminate(); // ends the handshake: a close event (1006) follows
      });
    }
    const timer = setTimeout(() => {
      done(new ConnectionClosedError(1006, `no connection within ${timeout} ms`));
      socket.close();
    }, timeout);
    socket.addEventListener("open", onOpen);
    socket.addEventListener("close", onClose);
    // A close event follows every error event. Node's `ws` throws an error event that nobody
    // listens to, so one listener stays for the socket's whole life.
    socket.addEventListener("error", () => {});
  });
}
