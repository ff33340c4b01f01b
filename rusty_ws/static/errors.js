// Every error the JavaScript client throws, under one base class: the mirror of
// rusty_ws/exceptions.py. No imports, so every other module can use them without a cycle.
//
//   RustyWsError             a stable `code` to branch on ("invalid_topic", "timeout", ...)
//   ├── ServerError          the hub answered a command with an `error:` reply
//   ├── ConnectionClosedError the connection closed (or never opened) before a call finished
//   └── AuthError            a login or refresh the hub refused (carries the HTTP `status`)

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

/**
 * The server answered a command with an `error:` reply (`code` is protocol.py's ErrorCode).
 * `command` is the verb that failed, if the hub named it; `id` the publish id it answers, if any.
 */
export class ServerError extends RustyWsError {
  constructor(code, message, command = null, id = null) {
    super(code, message);
    this.name = "ServerError";
    this.command = command;
    this.id = id;
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

/** A login or refresh the hub refused; `status` is the HTTP status, `code` the hub's error code. */
export class AuthError extends RustyWsError {
  constructor(code, message, status = 0) {
    super(code, message);
    this.name = "AuthError";
    this.status = status;
  }
}
