// Ferry's browser client: submit a prediction, then follow it to its result.
//
// `follow` reads the server-sent events of GET /predictions/{id}/events with fetch and a
// stream reader (EventSource cannot send the Authorization header) and falls back to
// polling GET /predictions/{id} when the stream is refused (503: the server's streams are
// all taken), fails, or ends early. 429 and 503 answers are retried after Retry-After.
// No dependencies and no build step: import it as an ES module.

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export class FerryError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.name = "FerryError";
    this.status = status;
    this.body = body;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(signal.reason);
      }, { once: true });
    }
  });

// Seconds in Retry-After (or an HTTP date), as milliseconds; `fallbackMs` when absent.
export function retryAfterMs(response, fallbackMs) {
  const value = response.headers.get("Retry-After");
  if (value === null) return fallbackMs;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(0, date - Date.now()) : fallbackMs;
}

// Splits a text stream of server-sent events into {event, data} objects.
export function* parseEvents(state, text) {
  state.buffer = (state.buffer || "") + text.replace(/\r\n?/g, "\n");
  let end;
  while ((end = state.buffer.indexOf("\n\n")) >= 0) {
    const block = state.buffer.slice(0, end);
    state.buffer = state.buffer.slice(end + 2);
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // a heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length) yield { event, data: data.join("\n") };
  }
}

export class FerryClient {
  constructor({ baseUrl = "", apiKey = "", maxRetries = 5, pollIntervalMs = 500, fetchImpl } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.apiKey = apiKey;
    this.maxRetries = maxRetries;
    this.pollIntervalMs = pollIntervalMs;
    this.fetch = fetchImpl || ((...args) => globalThis.fetch(...args));
  }

  headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    return headers;
  }

  // One API call; 429 and 503 are retried after Retry-After, up to maxRetries times.
  async request(method, path, { body, signal } = {}) {
    for (let attempt = 0; ; attempt++) {
      const response = await this.fetch(this.baseUrl + path, {
        method,
        signal,
        headers: this.headers(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if ((response.status === 429 || response.status === 503) && attempt < this.maxRetries) {
        await sleep(retryAfterMs(response, 1000 * 2 ** attempt), signal);
        continue;
      }
      const type = response.headers.get("Content-Type") || "";
      const data = type.includes("json") ? await response.json() : await response.text();
      if (!response.ok) throw new FerryError(response.status, data);
      return { status: response.status, headers: response.headers, body: data };
    }
  }

  async listModels(options) {
    return (await this.request("GET", "/models", options)).body;
  }

  // Submits `input` to `model`; the answer is the prediction (queued, or done when cached).
  async submit(model, input, { signal, ...options } = {}) {
    const path = `/models/${encodeURIComponent(model)}/predictions`;
    return (await this.request("POST", path, { body: { input, ...options }, signal })).body;
  }

  async get(id, options) {
    return (await this.request("GET", `/predictions/${encodeURIComponent(id)}`, options)).body;
  }

  // Follows a prediction until it is done; onUpdate(prediction, how) sees every change,
  // with `how` "stream" or "poll". Resolves with the finished prediction.
  async follow(id, { onUpdate = () => {}, signal } = {}) {
    let final = null;
    try {
      final = await this.stream(id, onUpdate, signal);
    } catch (error) {
      if (signal && signal.aborted) throw error;
    }
    return final || this.poll(id, onUpdate, signal);
  }

  // The event stream; null when it is refused or ends before the prediction is done.
  async stream(id, onUpdate, signal) {
    const response = await this.fetch(`${this.baseUrl}/predictions/${encodeURIComponent(id)}/events`, {
      headers: this.headers({ Accept: "text/event-stream" }),
      signal,
    });
    if (response.status === 404 || response.status === 401 || response.status === 403) {
      const type = response.headers.get("Content-Type") || "";
      throw new FerryError(response.status, type.includes("json") ? await response.json() : null);
    }
    if (!response.ok || !response.body) return null;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const state = {};
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return null;
        for (const { event, data } of parseEvents(state, value)) {
          if (event !== "status" && event !== "progress") continue;
          const prediction = JSON.parse(data);
          onUpdate(prediction, "stream");
          if (TERMINAL.has(prediction.status)) return prediction;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async poll(id, onUpdate, signal) {
    let last = "";
    for (;;) {
      const prediction = await this.get(id, { signal });
      const seen = JSON.stringify(prediction);
      if (seen !== last) onUpdate(prediction, "poll");
      last = seen;
      if (TERMINAL.has(prediction.status)) return prediction;
      await sleep(this.pollIntervalMs, signal);
    }
  }

  // Submit, then follow: resolves with the finished prediction (a cache hit at once).
  async predict(model, input, { onUpdate = () => {}, signal, ...options } = {}) {
    const prediction = await this.submit(model, input, { signal, ...options });
    onUpdate(prediction, "submit");
    if (TERMINAL.has(prediction.status)) return prediction;
    return this.follow(prediction.id, { onUpdate, signal });
  }
}
