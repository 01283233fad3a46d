// The dashboard: pick a model, give it an input (a drawing for `digits`, a form built
// from the input schema for any model), and watch the prediction to its result.
import { FerryClient, FerryError, TERMINAL } from "/static/ferry.js";

const KEY_STORAGE = "ferry.apiKey";
const RECENT_STORAGE = "ferry.recent";
const RECENT_MAX = 10;

const $ = (id) => document.getElementById(id);
const client = new FerryClient({ apiKey: localStorage.getItem(KEY_STORAGE) || "" });
let models = [];
let current = null; // the selected model
let following = null; // AbortController of the prediction being followed

function element(tag, { dataset = {}, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function describeError(error) {
  if (error instanceof FerryError) {
    if (error.status === 401) return "This needs an API key: paste the one `make dev` printed above and save it.";
    if (error.status === 403) return "This API key lacks the `predict` scope.";
    const details = error.body && error.body.errors && Object.keys(error.body.errors).length
      ? ` ${JSON.stringify(error.body.errors)}` : "";
    return `${error.message}${details}`;
  }
  return `The server could not be reached (${error.message}).`;
}

// --- API key -----------------------------------------------------------------------

function showKeyState() {
  $("key-state").textContent = client.apiKey ? "saved in this browser" : "none yet";
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  client.apiKey = $("api-key").value.trim();
  localStorage.setItem(KEY_STORAGE, client.apiKey);
  $("api-key").value = "";
  showKeyState();
  showError("");
});

// --- models ------------------------------------------------------------------------

async function loadModels() {
  try {
    models = await client.listModels();
  } catch (error) {
    showError(describeError(error));
    return;
  }
  $("models").replaceChildren(...models.map((model) => element("li", {},
    element("button", { type: "button", dataset: { model: model.name }, onclick: () => select(model.name) },
      model.name, element("small", {}, `version ${model.version}`)))));
  const wanted = new URLSearchParams(location.search).get("model");
  select(models.some((m) => m.name === wanted) ? wanted : (models[0] && models[0].name));
}

function select(name) {
  current = models.find((model) => model.name === name);
  if (!current) return;
  for (const button of $("models").querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.model === name));
  }
  $("workspace").hidden = false;
  $("model-title").textContent = current.name;
  $("model-description").textContent = current.description || "";
  $("digit-pad").hidden = current.name !== "digits";
  buildForm(current.input_schema);
  showError("");
}

// --- a form from the input schema --------------------------------------------------

function buildForm(schema) {
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, property]) => {
    const id = `field-${name}`;
    let input;
    if (property.type === "boolean") {
      input = element("input", { type: "checkbox", id, name, checked: property.default === true });
    } else if (property.type === "integer" || property.type === "number") {
      input = element("input", { type: "number", id, name, step: property.type === "integer" ? "1" : "any" });
      if (property.minimum !== undefined) input.min = property.minimum;
      if (property.maximum !== undefined) input.max = property.maximum;
      if (property.default !== undefined) input.value = property.default;
    } else if (property.type === "string" && property.contentEncoding === "base64") {
      input = element("input", { type: "file", id, name, accept: "image/png,image/jpeg" });
    } else if (property.type === "array" || (property.maxLength || 0) > 200) {
      input = element("textarea", { id, name, placeholder: property.type === "array" ? "1, 2, 3 or a JSON array" : "" });
    } else {
      input = element("input", { type: "text", id, name, value: property.default ?? "" });
    }
    input.dataset.type = property.type;
    const hint = [property.description, rangeHint(property)].filter(Boolean).join(" ");
    return element("div", { className: "field" },
      element("label", { htmlFor: id }, name + (required.has(name) ? " *" : "")), input,
      element("span", { className: "hint" }, hint));
  });
  if (schema.oneOf) {
    const groups = schema.oneOf.map((option) => option.required.join(" + ")).join(" or ");
    fields.push(element("p", { className: "muted" }, `Give exactly one of: ${groups}.`));
  }
  $("fields").replaceChildren(...fields);
}

function rangeHint(property) {
  const items = property.items || {};
  const parts = [];
  if (property.minItems !== undefined && property.minItems === property.maxItems) parts.push(`${property.minItems} values`);
  const low = property.minimum ?? items.minimum;
  const high = property.maximum ?? items.maximum;
  if (low !== undefined || high !== undefined) parts.push(`${low ?? "…"} to ${high ?? "…"}`);
  return parts.length ? `(${parts.join(", ")})` : "";
}

const readFile = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result);
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

async function formInput() {
  const input = {};
  for (const field of $("fields").querySelectorAll("input, textarea")) {
    const type = field.dataset.type;
    if (field.type === "checkbox") {
      input[field.name] = field.checked;
    } else if (field.type === "file") {
      if (field.files.length) input[field.name] = await readFile(field.files[0]);
    } else if (field.value.trim() === "") {
      continue; // left out: the server applies the default, or says what is missing
    } else if (type === "integer" || type === "number") {
      input[field.name] = Number(field.value);
    } else if (type === "array") {
      const text = field.value.trim();
      input[field.name] = text.startsWith("[") ? JSON.parse(text) : text.split(/[\s,]+/).filter(Boolean).map(Number);
    } else {
      input[field.name] = field.value;
    }
  }
  return input;
}

$("input-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let input;
  try {
    input = await formInput();
  } catch (error) {
    showError(`The input could not be read: ${error.message}`);
    return;
  }
  run(current.name, input);
});

// --- the drawing pad (digits) ------------------------------------------------------

const pad = $("pad");
const pen = pad.getContext("2d");

function clearPad() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, pad.width, pad.height);
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

let drawing = false;
pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  Object.assign(pen, { lineWidth: 22, lineCap: "round", lineJoin: "round", strokeStyle: "#000" });
  pen.beginPath();
  pen.moveTo(...padPoint(event));
  pen.lineTo(...padPoint(event));
  pen.stroke();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  pen.lineTo(...padPoint(event));
  pen.stroke();
});
for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => { drawing = false; });

$("clear-pad").addEventListener("click", clearPad);
$("predict-pad").addEventListener("click", () => run("digits", { image: pad.toDataURL("image/png") }));
clearPad();

// --- following a prediction --------------------------------------------------------

async function run(model, input) {
  if (following) following.abort();
  following = new AbortController();
  const { signal } = following;
  showError("");
  resetPrediction();
  try {
    const done = await client.predict(model, input, { signal, onUpdate: show });
    remember(done);
  } catch (error) {
    if (!signal.aborted) showError(describeError(error));
  }
}

function resetPrediction() {
  $("prediction").hidden = true;
  $("result").hidden = true;
  $("partial").hidden = true;
  $("progress").hidden = true;
  $("transport").textContent = "";
}

function show(prediction, how) {
  $("prediction").hidden = false;
  $("prediction-id").textContent = prediction.id || "(from the cache)";
  $("status").textContent = prediction.status;
  $("status").dataset.status = prediction.status;
  $("queue-position").textContent = prediction.queue_position ? `· position ${prediction.queue_position} in the queue` : "";
  if (how === "stream") $("transport").textContent = "· live";
  if (how === "poll") $("transport").textContent = "· polling";
  if (prediction.cached) $("transport").textContent = "· cached";

  // Shown for models that report progress: from their first report to their result.
  const progress = prediction.progress;
  const reported = progress !== null && progress !== undefined;
  $("progress").hidden = !(reported && (prediction.status === "running" || !$("progress").hidden));
  if (reported) $("progress").value = progress;
  $("partial").hidden = !prediction.partial_output;
  if (prediction.partial_output) $("partial").textContent = JSON.stringify(prediction.partial_output, null, 1);

  if (!TERMINAL.has(prediction.status)) return;
  $("result").hidden = false;
  const output = prediction.output;
  const isDigits = prediction.model === "digits" && output && Array.isArray(output.probabilities);
  $("label-line").hidden = !isDigits;
  $("bars").hidden = !isDigits;
  if (isDigits) {
    $("label").textContent = String(output.label);
    drawBars(output.probabilities, output.label);
  }
  $("output").textContent = prediction.status === "succeeded"
    ? JSON.stringify(summarise(output), null, 1)
    : `${prediction.status}: ${prediction.error || ""}`;
}

function drawBars(probabilities, label) {
  $("bars").replaceChildren(...probabilities.map((p, digit) => {
    const fill = element("div", { className: "fill" });
    fill.style.height = `${Math.max(0.5, p * 100)}%`;
    return element("div", { className: digit === label ? "bar top" : "bar", title: `${digit}: ${(p * 100).toFixed(1)}%`,
      dataset: { digit: String(digit), probability: String(p) } },
    fill, element("span", { className: "digit" }, String(digit)));
  }));
}

// Long arrays (embeddings) are shortened for display.
function summarise(value) {
  if (Array.isArray(value)) {
    const shown = value.slice(0, 12).map(summarise);
    return value.length > 12 ? [...shown, `… ${value.length} values`] : shown;
  }
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, summarise(item)]));
  }
  return value;
}

// --- recent predictions ------------------------------------------------------------

function recent() {
  try {
    return JSON.parse(localStorage.getItem(RECENT_STORAGE)) || [];
  } catch {
    return [];
  }
}

function remember(prediction) {
  const output = prediction.output || {};
  const summary = prediction.status !== "succeeded" ? (prediction.error || "")
    : "label" in output ? `label ${output.label}`
    : "estimate" in output ? `estimate ${Number(output.estimate).toFixed(5)}`
    : Object.keys(output).join(", ");
  const entry = { id: prediction.id || null, model: prediction.model, status: prediction.status, summary,
    cached: Boolean(prediction.cached), at: new Date().toISOString() };
  localStorage.setItem(RECENT_STORAGE, JSON.stringify([entry, ...recent()].slice(0, RECENT_MAX)));
  showRecent();
}

function showRecent() {
  $("recent").replaceChildren(...recent().map((entry) => {
    const text = [element("strong", {}, entry.model), " ",
      element("span", { className: entry.status }, entry.status), entry.cached ? " (cached)" : "",
      element("br"), element("small", { className: "muted" }, `${entry.summary} · ${new Date(entry.at).toLocaleTimeString()}`)];
    const body = entry.id
      ? element("button", { type: "button", onclick: () => reopen(entry.id) }, ...text)
      : element("span", {}, ...text);
    return element("li", {}, body);
  }));
}

async function reopen(id) {
  if (following) following.abort();
  following = new AbortController();
  resetPrediction();
  try {
    const prediction = await client.get(id, { signal: following.signal });
    show(prediction, null);
    if (!TERMINAL.has(prediction.status)) await client.follow(id, { signal: following.signal, onUpdate: show });
  } catch (error) {
    if (!following.signal.aborted) showError(describeError(error));
  }
}

showKeyState();
showRecent();
loadModels();
