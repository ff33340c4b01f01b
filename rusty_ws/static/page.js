// The hub's web page: wires the form controls to one RustyWsClient and shows what arrives.
//
// Every piece of text that came from the network or from a form goes into the page with
// textContent, never innerHTML: a payload like <img src=x onerror=...> shows as those characters.
//
// One status line (#status) reports the last action; it is moved under the form that started
// that action, so an error shows next to the field that caused it.

import {
  CloseCode,
  MAX_NAME_LENGTH,
  MAX_SESSION_LENGTH,
  MAX_TOPIC_LENGTH,
  RecoveryFailure,
  RustyWsClient,
  State,
} from "./rusty_ws.js";

/** The log keeps this many entries; older ones are dropped so a busy topic cannot eat the tab's memory. */
const MAX_LOG_ENTRIES = 500;
/** How often the counts from /healthz are refreshed. */
const COUNTS_INTERVAL_MS = 2000;

// This module is <prefix>/rusty_ws/page.js, so the hub's routes are one level up.
const hubBase = new URL("../", import.meta.url);
const healthzUrl = new URL("healthz", hubBase);
const authInfoUrl = new URL("auth/info", hubBase);
/** The close code of a hub that wants a (valid) token. */
const { UNAUTHORIZED } = CloseCode;
const LOGIN_REQUIRED = "this hub requires a login: choose \u201cLog in\u201d and enter a username and password";
const wsUrl = new URL("ws", hubBase);
wsUrl.protocol = hubBase.protocol === "https:" ? "wss:" : "ws:";

const $ = (id) => document.getElementById(id);

/** @type {?RustyWsClient} */
let client = null;

// ------------------------------------------------------------------ showing things

/**
 * Show `text` in the status line, under the form `near` (the one whose action it reports).
 * @param {string} text
 * @param {{error?: boolean, near?: string}} [options] `near`: the id of a form
 */
function setStatus(text, { error = false, near = "connect-form" } = {}) {
  const status = $("status");
  const form = $(near);
  if (status.previousElementSibling !== form) form.after(status);
  status.textContent = text;
  status.classList.toggle("error", error);
}

function describeError(error) {
  return error?.code ? `${error.code}: ${error.message}` : String(error?.message ?? error);
}

function addLogEntry(entry) {
  const log = $("messages");
  log.append(entry);
  while (log.childElementCount > MAX_LOG_ENTRIES) log.firstElementChild.remove();
  entry.scrollIntoView({ block: "nearest" });
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function clockTime(timestamp) {
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? String(timestamp ?? "") : date.toLocaleTimeString();
}

/** What the log says when a resubscription could not recover every missed message. */
const RECOVERY_FAILURES = {
  [RecoveryFailure.NEW_EPOCH]: "the hub restarted or the stream expired, so its history is gone",
  [RecoveryFailure.MESSAGES_DROPPED]: "some missed messages were no longer kept",
  [RecoveryFailure.HISTORY_OFF]: "the hub keeps no history",
  [RecoveryFailure.UNKNOWN_POSITION]: "the hub did not know the last message seen",
};

/** A payload as shown: text as it is, objects and arrays as indented JSON, other values as JSON. */
function showPayload(payload) {
  if (typeof payload === "string") return payload;
  if (payload !== null && typeof payload === "object") return JSON.stringify(payload, null, 2);
  return JSON.stringify(payload) ?? "null";
}

function logMessage(message, { replayed = false } = {}) {
  const entry = document.createElement("li");
  entry.className = replayed ? "message replayed" : "message";
  entry.dataset.topic = message.topic;
  const publisher = String(message.publisher_name ?? "") + (message.user ? ` (${message.user})` : "");
  entry.append(
    span("time", clockTime(message.timestamp)),
    span("topic", message.topic),
    span("publisher", publisher),
    span("payload", showPayload(message.payload)),
  );
  if (replayed) {
    const marker = span("recovered", "recovered");
    marker.title = "missed while disconnected, replayed by the hub";
    entry.append(marker);
  }
  addLogEntry(entry);
}

function logEvent(text, kind = "info") {
  const entry = document.createElement("li");
  entry.className = `event ${kind}`;
  entry.append(span("time", new Date().toLocaleTimeString()), span("text", text));
  addLogEntry(entry);
}

const STATE_LABELS = {
  [State.IDLE]: "disconnected",
  [State.CONNECTING]: "connecting",
  [State.OPEN]: "connected",
  [State.RECONNECTING]: "reconnecting",
  [State.CLOSED]: "disconnected",
};

function renderState(state) {
  const badge = $("state");
  badge.dataset.state = state;
  badge.textContent = STATE_LABELS[state] ?? state;
  const live = state === State.OPEN || state === State.RECONNECTING || state === State.CONNECTING;
  $("connect-fields").disabled = live;
  $("connect").disabled = live;
  $("disconnect").disabled = !live;
  // Subscribe, publish and unsubscribe need an open connection: not while (re)connecting.
  for (const fieldset of document.querySelectorAll(".needs-connection")) fieldset.disabled = state !== State.OPEN;
  renderSubscriptions();
}

function renderSubscriptions() {
  const list = $("subscriptions");
  const open = client?.state === State.OPEN;
  list.replaceChildren(...(client?.subscriptions ?? []).map((topic) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.disabled = !open;
    button.textContent = "Unsubscribe";
    button.setAttribute("aria-label", `Unsubscribe ${topic}`);
    button.addEventListener("click", () => unsubscribe(topic));
    item.append(span("topic", topic), button);
    return item;
  }));
}

// ------------------------------------------------------------------ the counts

async function refreshCounts() {
  try {
    const response = await fetch(healthzUrl, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const counts = await response.json();
    for (const name of ["connections", "sessions", "topics", "subscriptions"]) {
      $(`count-${name}`).textContent = String(counts[name] ?? "–");
    }
    $("counts").classList.remove("offline");
  } catch {
    $("counts").classList.add("offline"); // the hub is down or restarting: keep polling
  }
}

function pollCounts() {
  refreshCounts().finally(() => setTimeout(pollCounts, COUNTS_INTERVAL_MS));
}

// ------------------------------------------------------------------ what the hub requires

/**
 * The hub's `auth/info`: `{require_auth}`, or null when it does not answer (down, or an older hub).
 * @returns {Promise<?{require_auth: boolean}>}
 */
async function fetchAuthInfo() {
  try {
    const response = await fetch(authInfoUrl, { cache: "no-store" });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** A hub that refuses anonymous connections: say so, and offer the login fields. */
function showLoginRequired() {
  $("auth-hint").hidden = false;
  if (!client) {
    $("mode-login").checked = true;
    $("credentials").hidden = false;
  }
}

/**
 * Why a connection could not be made, in words. A browser hides the HTTP status of a refused
 * handshake (a page sees close code 1006), so for an anonymous attempt the hub is asked whether
 * it requires a login; a hub that upgrades first and then refuses closes with 4001.
 * @returns {Promise<string>}
 */
async function connectFailure(error, login) {
  if (error.code === "bad_credentials") return `Login refused: ${describeError(error)}`;
  if (error.closeCode === UNAUTHORIZED || error.inBand) { // inBand: the hub refused the first-frame auth:
    return login ? `Connection refused: the hub did not accept the login (${describeError(error)})`
      : `Connection refused: ${LOGIN_REQUIRED}`;
  }
  if (error.closeCode === 1006 && !login) {
    const info = await fetchAuthInfo();
    if (info?.require_auth) {
      showLoginRequired();
      return `Connection refused: ${LOGIN_REQUIRED}`;
    }
    if (info === null) return `Connection failed: the hub at ${hubBase.href} does not answer (${describeError(error)})`;
  }
  return `Connection failed: ${describeError(error)}`;
}

/** What the status line says of a publish's ack: where the message went, and how many got it. */
function publishedText(topic, ack) {
  const parts = [];
  if (Number.isInteger(ack?.offset)) parts.push(`offset ${ack.offset}`);
  if (Number.isInteger(ack?.delivered)) {
    parts.push(`delivered to ${ack.delivered} subscriber${ack.delivered === 1 ? "" : "s"} on this hub`);
  }
  return `Published to ${topic}${parts.length ? ` (${parts.join(", ")})` : ""}`;
}

// ------------------------------------------------------------------ actions

function watch(newClient) {
  // A client that was disconnected (and replaced) must no longer drive the controls.
  newClient.addEventListener("statechange", (event) => {
    if (client === newClient) renderState(event.detail.state);
  });
  newClient.addEventListener("open", (event) => {
    if (client !== newClient) return;
    $("session").value = newClient.sessionId;
    const how = newClient.isAuthenticated() ? "logged in" : "anonymous";
    logEvent(event.detail.reconnected
      ? `reconnected; ${newClient.subscriptions.length} subscription(s) restored`
      : `connected as ${newClient.name} in ${newClient.sessionId} (${how})`);
    refreshCounts();
  });
  newClient.addEventListener("close", (event) => {
    const { code, reason, willReconnect } = event.detail;
    logEvent(`connection closed (${code}${reason ? ` ${reason}` : ""})${willReconnect ? "" : "; not reconnecting"}`,
      willReconnect || code === 1000 ? "info" : "warning");
    if (client === newClient && code === UNAUTHORIZED) {
      const text = newClient.isAuthenticated() || $("mode-login").checked
        ? `Disconnected: the hub no longer accepts the login (${code}${reason ? ` ${reason}` : ""})`
        : `Disconnected: ${LOGIN_REQUIRED}`;
      setStatus(text, { error: true });
    }
  });
  newClient.addEventListener("reconnecting", (event) => {
    const { attempt, delay } = event.detail;
    logEvent(`reconnecting (attempt ${attempt}) in ${(delay / 1000).toFixed(1)} s`);
  });
  newClient.addEventListener("message", (event) => logMessage(event.detail.message, event.detail));
  newClient.addEventListener("recovered", (event) => {
    const { topic, count } = event.detail;
    if (count > 0) logEvent(`${topic}: ${count} missed message(s) recovered`);
  });
  newClient.addEventListener("recoveryfailed", (event) => {
    const { topic, reason } = event.detail;
    const why = RECOVERY_FAILURES[reason] ?? reason;
    logEvent(`${topic}: recovery failed (${why}); messages may have been missed`, "warning");
  });
  newClient.addEventListener("error", (event) => logEvent(`error: ${describeError(event.detail.error)}`, "error"));
}

async function connect() {
  const login = $("mode-login").checked;
  const session = $("session").value.trim();
  let newClient;
  try {
    newClient = new RustyWsClient(wsUrl.href, {
      name: $("name").value.trim(),
      sessionId: session === "" ? undefined : session,
      auth: login ? { username: $("username").value, password: $("password").value } : undefined,
    });
  } catch (error) {
    setStatus(`Cannot connect: ${describeError(error)}`, { error: true });
    return;
  }
  client = newClient;
  watch(newClient);
  setStatus("Connecting…");
  try {
    await newClient.connect();
    $("password").value = "";
    setStatus(`Connected to ${wsUrl.href}`);
  } catch (error) {
    if (client === newClient) client = null;
    renderState(State.CLOSED);
    const text = await connectFailure(error, login);
    if (client === null) setStatus(text, { error: true }); // unless another Connect came meanwhile
  }
}

async function disconnect() {
  const closing = client;
  client = null;
  renderSubscriptions();
  await closing?.close();
  renderState(State.CLOSED);
  setStatus("Disconnected");
  refreshCounts();
}

async function subscribe() {
  const topic = $("subscribe-topic").value;
  const near = "subscribe-form";
  setStatus(`Subscribing to ${topic}…`, { near });
  try {
    await client.subscribe(topic);
    $("subscribe-topic").value = "";
    setStatus(`Subscribed to ${topic}`, { near });
  } catch (error) {
    setStatus(`Subscribe failed: ${describeError(error)}`, { error: true, near });
  }
  renderSubscriptions();
  refreshCounts();
}

async function unsubscribe(topic) {
  const near = "subscribe-form";
  setStatus(`Unsubscribing from ${topic}…`, { near });
  try {
    await client.unsubscribe(topic);
    setStatus(`Unsubscribed from ${topic}`, { near });
  } catch (error) {
    setStatus(`Unsubscribe failed: ${describeError(error)}`, { error: true, near });
  }
  renderSubscriptions();
  refreshCounts();
}

async function publish() {
  const topic = $("publish-topic").value;
  const near = "publish-form";
  let payload = $("payload").value;
  if ($("payload-json").checked) {
    try {
      payload = JSON.parse(payload);
    } catch (error) {
      setStatus(`Not published: the payload is not valid JSON (${error.message})`, { error: true, near });
      return;
    }
  }
  setStatus(`Publishing to ${topic}…`, { near });
  try {
    const ack = await client.publish(topic, payload);
    setStatus(publishedText(topic, ack), { near });
  } catch (error) {
    setStatus(`Publish failed: ${describeError(error)}`, { error: true, near });
  }
}

function onSubmit(formId, action) {
  $(formId).addEventListener("submit", (event) => {
    event.preventDefault();
    action();
  });
}

// ------------------------------------------------------------------ start

$("name").maxLength = MAX_NAME_LENGTH;
$("session").maxLength = MAX_SESSION_LENGTH;
for (const id of ["subscribe-topic", "publish-topic"]) $(id).maxLength = MAX_TOPIC_LENGTH;
$("name").value = `web-${Math.random().toString(36).slice(2, 6)}`;
$("session").value = "session-A";
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => { $("credentials").hidden = !$("mode-login").checked; });
}
onSubmit("connect-form", connect);
onSubmit("subscribe-form", subscribe);
onSubmit("publish-form", publish);
$("disconnect").addEventListener("click", disconnect);
$("clear").addEventListener("click", () => $("messages").replaceChildren());
renderState(State.IDLE);
pollCounts();
fetchAuthInfo().then((info) => { if (info?.require_auth) showLoginRequired(); });
document.body.dataset.ready = "true"; // tests wait for this before they click
