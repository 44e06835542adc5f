// mlxhost status and playground page: /health and /v1/models every few seconds,
// and a chat that streams from /v1/chat/completions. No dependencies, no build.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 2000;
  const KEY_STORE = "mlxhost-api-key";
  const chat = { messages: [], image: null, controller: null };
  let models = [];

  // -- API key: typed by the user, kept in this browser, sent on every API call --
  const keyInput = $("api-key");
  try { keyInput.value = localStorage.getItem(KEY_STORE) || ""; } catch (e) { /* storage off */ }
  keyInput.addEventListener("change", () => {
    try { localStorage.setItem(KEY_STORE, keyInput.value.trim()); } catch (e) { /* storage off */ }
    refreshModels();
  });

  function apiHeaders(json) {
    const headers = {};
    if (json) headers["Content-Type"] = "application/json";
    const key = keyInput.value.trim();
    if (key) headers["Authorization"] = "Bearer " + key;
    return headers;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error.message || JSON.stringify(body.error);
      if (body && body.detail) return body.detail;
    } catch (e) { /* not JSON */ }
    return response.status + " " + response.statusText;
  }

  // -- formatting ---------------------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return "n/a";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- server figures (/health needs no key) --------------------------------------
  function renderHealth(h) {
    const badge = $("status");
    badge.dataset.status = h.status;
    badge.textContent = h.status;
    // Not ready: the start-up model is still loading or warming up (a request
    // sent now waits for it), or it failed to load.
    $("loaded-model").textContent = h.loading ? "loading " + h.loading
      : h.warming ? "warming up " + h.warming + " (not ready yet)"
      : (h.model || "no model loaded");
    const rows = [
      ["ready", h.ready === false ? "no" : "yes"],
      ["loaded model", h.model || "none"],
      ["loading", h.loading || h.warming || "—"],
      ["running", String(h.running)],
      ["waiting", String(h.waiting)],
    ];
    if (h.batch) rows.push(["batch", "max " + h.batch.max + ", peak " + h.batch.peak]);
    rows.push(["swaps", String(h.swaps)]);
    if (h.memory) {
      const m = h.memory;
      if (m.process && m.process.rss !== undefined) rows.push(["memory rss", bytes(m.process.rss)]);
      if (m.mlx && m.mlx.active !== undefined && m.mlx.active !== null) rows.push(["memory MLX active", bytes(m.mlx.active)]);
      if (m.budget !== undefined && m.budget !== null) rows.push(["memory budget", bytes(m.budget)]);
      if (m.free !== undefined && m.free !== null) rows.push(["memory free", bytes(m.free)]);
    }
    if (h.prefix_cache) {
      const c = h.prefix_cache;
      rows.push(["prefix cache", c.hits + " hits, " + c.tokens_reused + " tokens reused, " +
                 bytes(c.bytes) + " of " + bytes(c.max_bytes)]);
    }
    if (h.keep_alive && h.keep_alive.unloads_at) {
      rows.push(["unloads", new Date(h.keep_alive.unloads_at).toLocaleTimeString()]);
    }
    if (h.uptime_s !== undefined) rows.push(["uptime", duration(h.uptime_s)]);
    const figures = $("figures");
    figures.replaceChildren(...rows.flatMap(([name, value]) => {
      const dt = element("dt", "", name), dd = element("dd", "", value);
      dd.dataset.figure = name;
      return [dt, dd];
    }));
    const lastError = $("last-error");
    lastError.hidden = !h.last_error;
    lastError.textContent = h.last_error ? "last error: " + h.last_error : "";
  }

  async function refreshHealth() {
    try {
      const response = await fetch("/health", { cache: "no-store" });
      renderHealth(await response.json());
    } catch (e) {
      const badge = $("status");
      badge.dataset.status = "unreachable";
      badge.textContent = "unreachable";
    }
  }

  // -- models (/v1/models follows the API key rules) --------------------------------
  function renderModels(data) {
    const entries = data.filter((m) => !m.alias_for);
    const body = $("models").tBodies[0];
    body.replaceChildren(...entries.map((m) => {
      const row = element("tr", m.loaded ? "loaded" : "");
      row.dataset.model = m.id;
      row.append(
        element("td", "id", m.id),
        element("td", "", (m.aliases || []).join(", ")),
        element("td", "", m.family || "—"),
        element("td", "", (m.capabilities || []).join(", ") || "text"),
        element("td", "num", m.context_window.toLocaleString("en-US")),
        element("td", "", m.loaded ? "loaded" : (m.downloaded ? "downloaded" : "not downloaded")),
      );
      return row;
    }));
    // The chat offers models that load without a download.
    const select = $("chat-model");
    const chosen = select.value;
    const usable = entries.filter((m) => m.downloaded);
    select.replaceChildren(...usable.map((m) => {
      const option = element("option", "", (m.aliases && m.aliases.length) ? m.id + " (" + m.aliases[0] + ")" : m.id);
      option.value = m.id;
      return option;
    }));
    const loaded = usable.find((m) => m.loaded);
    if (usable.some((m) => m.id === chosen)) select.value = chosen;
    else if (loaded) select.value = loaded.id;
    updateAttach();
  }

  async function refreshModels() {
    const problem = $("models-error");
    try {
      const response = await fetch("/v1/models", { headers: apiHeaders(false), cache: "no-store" });
      if (response.status === 401) {
        problem.hidden = false;
        problem.textContent = "This server needs an API key: type it at the top right.";
        return;
      }
      if (!response.ok) throw new Error(await errorText(response));
      models = (await response.json()).data;
      problem.hidden = true;
      renderModels(models);
    } catch (e) {
      problem.hidden = false;
      problem.textContent = "Could not list the models: " + e.message;
    }
  }

  function chosenModel() {
    return models.find((m) => m.id === $("chat-model").value && !m.alias_for);
  }

  function updateAttach() {
    const model = chosenModel();
    const vision = !!(model && (model.capabilities || []).includes("vision"));
    $("image").disabled = !vision;
    $("attach-label").dataset.disabled = String(!vision);
    $("attach-label").title = vision ? "" : "this model takes text only";
    if (!vision && chat.image) clearImage();
  }

  // -- chat -------------------------------------------------------------------------
  function scrollDown() {
    const transcript = $("transcript");
    transcript.scrollTop = transcript.scrollHeight;
  }

  function addMessage(role, text, imageUrl) {
    const node = element("div", "message " + role, text);
    if (imageUrl) {
      const img = element("img");
      img.src = imageUrl;
      img.alt = "attached image";
      node.append(img);
    }
    $("transcript").append(node);
    scrollDown();
    return node;
  }

  function clearImage() {
    chat.image = null;
    $("image").value = "";
    $("attached").textContent = "";
  }

  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    if (!file) { clearImage(); return; }
    const reader = new FileReader();
    reader.onload = () => {
      chat.image = reader.result;
      $("attached").textContent = file.name;
    };
    reader.readAsDataURL(file);
  });

  $("chat-model").addEventListener("change", updateAttach);

  $("new-chat").addEventListener("click", () => {
    if (chat.controller) chat.controller.abort();
    chat.messages = [];
    clearImage();
    $("transcript").replaceChildren();
  });

  $("stop").addEventListener("click", () => { if (chat.controller) chat.controller.abort(); });

  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value;
    if (!text.trim() || chat.controller) return;
    if (!$("chat-model").value) {
      addMessage("error", "No model to chat with: none is downloaded (see Models).");
      return;
    }
    $("prompt").value = "";
    send(text);
  });

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  async function send(text) {
    const image = chat.image;
    const content = image
      ? [{ type: "text", text: text }, { type: "image_url", image_url: { url: image } }]
      : text;
    chat.messages.push({ role: "user", content: content });
    addMessage("user", text, image);
    clearImage();
    const reply = addMessage("assistant", "");
    reply.dataset.state = "streaming";
    reply.dataset.chunks = "0";
    const body = {
      model: $("chat-model").value,
      messages: chat.messages,
      stream: true,
      stream_options: { include_usage: true },
    };
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const temperature = parseFloat($("temperature").value);
    if (!Number.isNaN(temperature)) body.temperature = temperature;

    chat.controller = new AbortController();
    setBusy(true);
    let answer = "";
    let thought = "";
    let thinkingBox = null;  // <details>: the model's thinking, dimmed and collapsible
    let answerBox = null;
    let usage = null;
    let failed = null;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: apiHeaders(true), body: JSON.stringify(body),
        signal: chat.controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) { failed = chunk.error.message || "generation failed"; continue; }
            if (chunk.usage) usage = chunk.usage;
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (!delta) continue;
            if (delta.reasoning_content) {
              if (!thinkingBox) {
                thinkingBox = document.createElement("details");
                thinkingBox.className = "thinking";
                thinkingBox.open = true;
                const summary = document.createElement("summary");
                summary.textContent = "Thinking";
                thinkingBox.appendChild(summary);
                thinkingBox.appendChild(document.createElement("div"));
                reply.prepend(thinkingBox);
              }
              thought += delta.reasoning_content;
              thinkingBox.lastChild.textContent = thought;
              scrollDown();
            }
            let piece = delta.content || "";
            for (const call of delta.tool_calls || []) {
              if (call.function && call.function.name) piece += "[tool call " + call.function.name + "] ";
              if (call.function && call.function.arguments) piece += call.function.arguments;
            }
            if (piece) {
              answer += piece;
              if (thinkingBox && !answerBox) thinkingBox.open = false;  // folded once the answer starts
              if (!answerBox) { answerBox = document.createElement("span"); reply.appendChild(answerBox); }
              answerBox.textContent = answer;
              reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
              scrollDown();
            }
          }
        }
      }
      reply.dataset.state = failed ? "error" : "done";
    } catch (e) {
      if (e.name === "AbortError") {
        reply.dataset.state = "stopped";
      } else {
        failed = e.message;
        reply.dataset.state = "error";
      }
    } finally {
      chat.controller = null;
      setBusy(false);
    }
    if (answer) chat.messages.push({ role: "assistant", content: answer });
    else if (reply.dataset.state !== "stopped") { chat.messages.pop(); reply.remove(); }
    if (failed) addMessage("error", failed);
    if (usage) {
      $("transcript").append(element("div", "usage",
        usage.prompt_tokens + " prompt + " + usage.completion_tokens + " completion tokens"));
      scrollDown();
    }
  }

  // -- refresh loop -------------------------------------------------------------------
  async function tick() {
    await Promise.all([refreshHealth(), refreshModels()]);
    setTimeout(tick, REFRESH_MS);
  }
  tick();
})();
