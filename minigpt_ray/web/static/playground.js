// The playground: completion and chat against this server's OpenAI-compatible API, streamed with fetch + SSE.
"use strict";
const config = JSON.parse(document.getElementById("page-config").textContent);
const $ = (id) => document.getElementById(id);
const KEY_SLOT = "minigpt-api-key"; // sessionStorage: the key lives as long as this tab, never longer
const state = { mode: "completion", messages: [], controller: null };

for (const link of document.querySelectorAll("a[data-path]")) link.href = config.base + link.dataset.path;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_SLOT);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function apiError(status, body) {
  // The API's own words: OpenAI's {"error": {"message": ...}} shape, else the raw text.
  const message = body && body.error && body.error.message ? body.error.message : String(body || "no body");
  return new Error(`HTTP ${status}: ${message}`);
}

function showError(err) {
  const box = $("error");
  box.textContent = err ? err.message : "";
  box.classList.toggle("hidden", !err);
}

function fillPanel(rows) {
  const panel = $("model-panel");
  panel.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    dd.dataset.field = name;
    panel.append(dt, dd);
  }
}

function megabytes(bytes) {
  return bytes == null ? "?" : `${(bytes / 1e6).toFixed(2)} MB`;
}

async function loadModel() {
  let health = {};
  try {
    health = await (await fetch(config.base + "/health")).json();
  } catch (err) {
    health = { status: "unreachable" };
  }
  const models = await fetch(config.base + "/v1/models", { headers: headers() });
  $("key-box").classList.toggle("hidden", models.status !== 401);
  const listed = models.ok ? (await models.json()).data.map((m) => m.id).join(", ") : `HTTP ${models.status}`;
  fillPanel([
    ["model", listed],
    ["status", health.status || "?"],
    ["format", health.format || "?"],
    ["runtime", `${health.runtime || "?"} on ${health.device || "?"}`],
    ["bytes", megabytes(health.model_bytes)],
    ["replicas", health.replicas == null ? "?" : String(health.replicas)],
    ["chat template", health.chat_template ? "yes" : "no"],
  ]);
  config.model = models.ok ? listed.split(", ")[0] : config.model;
}

function setMode(mode) {
  state.mode = mode;
  $("mode-completion").setAttribute("aria-pressed", String(mode === "completion"));
  $("mode-chat").setAttribute("aria-pressed", String(mode === "chat"));
  for (const id of ["system", "system-label"]) $(id).classList.toggle("hidden", mode !== "chat");
  $("prompt-label").textContent = mode === "chat" ? "Message" : "Prompt";
  $("send").textContent = mode === "chat" ? "Send" : "Generate";
  clearOutput();
}

function clearOutput() {
  state.messages = [];
  $("output").replaceChildren();
  $("stats").textContent = "";
  showError(null);
}

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function requestBody(text) {
  const body = {
    model: config.model || undefined, // unknown until /v1/models answers: the server's own model
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: numberField("max_tokens"),
    temperature: numberField("temperature"),
    top_p: numberField("top_p"),
    top_k: numberField("top_k"),
    seed: numberField("seed"),
  };
  const stops = $("stop").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stops.length) body.stop = stops;
  if (state.mode === "chat") {
    const system = $("system").value.trim();
    body.messages = [...(system ? [{ role: "system", content: system }] : []), ...state.messages,
      { role: "user", content: text }];
  } else {
    body.prompt = text;
  }
  return body;
}

function outputTarget(text) {
  // Completion: the prompt in grey, then the streamed text. Chat: one line per message, the reply streamed last.
  const out = $("output");
  if (state.mode === "completion") {
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = text;
    const reply = document.createElement("span");
    reply.id = "reply";
    out.replaceChildren(prompt, reply);
    return reply;
  }
  const previous = out.querySelector("#reply");
  if (previous) previous.removeAttribute("id");
  let span = null;
  for (const [role, content] of [["user", text], ["assistant", ""]]) {
    const line = document.createElement("div");
    const who = document.createElement("b");
    span = document.createElement("span");
    line.className = "msg";
    who.textContent = role;
    span.textContent = content;
    line.append(who, span);
    out.append(line);
  }
  span.id = "reply";
  return span;
}

async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function pieceOf(event) {
  const choice = event.choices && event.choices[0];
  if (!choice) return "";
  return state.mode === "chat" ? (choice.delta && choice.delta.content) || "" : choice.text || "";
}

function showStats(started, firstAt, endedAt, usage) {
  const tokens = usage ? usage.completion_tokens : null;
  const ttft = firstAt ? `${(firstAt - started).toFixed(0)} ms` : "–";
  // decode speed after the first token, the way llama.cpp's server reports it
  const decodeSeconds = firstAt ? (endedAt - firstAt) / 1000 : 0;
  const speed = tokens > 1 && decodeSeconds > 0 ? ((tokens - 1) / decodeSeconds).toFixed(1) : "–";
  const used = usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : "";
  $("stats").textContent = `time to first token ${ttft} · ${speed} tokens/s · ${used}`;
  $("stats").dataset.done = "1";
}

async function send() {
  const text = $("prompt").value;
  showError(null);
  $("stats").textContent = "";
  delete $("stats").dataset.done;
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop-button").disabled = false;
  const path = state.mode === "chat" ? "/v1/chat/completions" : "/v1/completions";
  const started = performance.now();
  let firstAt = 0, usage = null, reply = "";
  try {
    const response = await fetch(config.base + path, { method: "POST", headers: headers(),
      body: JSON.stringify(requestBody(text)), signal: state.controller.signal });
    if (!response.ok) {
      let body = await response.text();
      try { body = JSON.parse(body); } catch (_) { /* not JSON: shown as text */ }
      throw apiError(response.status, body);
    }
    const target = outputTarget(text);
    for await (const event of sseEvents(response)) {
      if (event.error) throw new Error(`stream error: ${event.error.message}`);
      if (event.usage) usage = event.usage;
      const piece = pieceOf(event);
      if (piece && !firstAt) firstAt = performance.now();
      reply += piece;
      target.textContent = reply;
    }
    if (state.mode === "chat") state.messages.push({ role: "user", content: text }, { role: "assistant", content: reply });
    showStats(started, firstAt, performance.now(), usage);
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  } finally {
    $("send").disabled = false;
    $("stop-button").disabled = true;
  }
}

$("mode-completion").onclick = () => setMode("completion");
$("mode-chat").onclick = () => setMode("chat");
$("send").onclick = send;
$("stop-button").onclick = () => state.controller && state.controller.abort();
$("clear").onclick = clearOutput;
$("save-key").onclick = () => {
  sessionStorage.setItem(KEY_SLOT, $("api-key").value);
  $("api-key").value = "";
  loadModel();
};
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
loadModel();
