// The rusty_ws JavaScript client: the one module a page (or Node) imports.
//
//   import { RustyWsClient } from "http://127.0.0.1:8081/rusty_ws/rusty_ws.js";
//   const client = new RustyWsClient("ws://127.0.0.1:8081/ws", { name: "Client1", sessionId: "session-A" });
//   await client.connect();
//   client.onMessage("NetworkConnectedEvent", (payload, message) => console.log(payload));
//   await client.subscribe("NetworkConnectedEvent");      // the hub has it when this resolves
//   await client.publish("NetworkConnectedEvent", "Network connected"); // resolves on the hub's ack
//   client.addEventListener("recoveryfailed", (e) => console.warn("may have missed messages", e.detail));
//
// RustyWsClient mirrors the Python WsClient (rusty_ws/client/client.py). The hub handles one
// connection's commands in order and answers them in order: each call resolves on the reply its
// command earns (`subscribed:`, `ack:`, `history:`, or the `pong` of a `ping` sent after a silent
// command), and an `error:` in its place is the command's answer. After a reconnection it
// resubscribes from the last message seen, so missed messages arrive first, once each.
//
// This file only re-exports; each concern has its module, as on the Python side:
//   errors.js     RustyWsError, ServerError, ConnectionClosedError, AuthError (exceptions.py)
//   backoff.js    ClosePolicy, CloseCode, closePolicy, backoffDelays, firstDelay, reconnectWindow,
//                 retryAfterDelay (backoff.py, protocol.close_policy and reconnect_window, the
//                 supervisor's first_delay)
//   protocol.js   limits, checks, command builders, replies (protocol.py)
//   transport.js  openWebSocket and the hub's URLs (client/connector.py)
//   jwt_utils.js  JwtManager and the seed's jwtManager, createAuthenticatedWebSocket (client/tokens.py)
//   recovery.js   RecoveryFailure, and what a client remembers of each stream to resubscribe from
//   replies.js    the replies a socket owes, matched to the calls waiting for them
//   client.js     RustyWsClient and State (client/client.py)

export * from "./protocol.js";
export {
  AuthError,
  JwtManager,
  REFRESH_THRESHOLD_MS,
  createAuthenticatedWebSocket,
  jwtManager,
  refreshUrlFor,
} from "./jwt_utils.js";
export { authUrlFor, openWebSocket, withToken } from "./transport.js";
export { RecoveryFailure } from "./recovery.js";
export { RustyWsClient, State } from "./client.js";
