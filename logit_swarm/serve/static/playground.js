// logit_swarm playground: no build step, plain browser JavaScript.
// Streams /v1/completions with the server's extensions `weights`, `mode` and
// `return_expert_logprobs`, and colours each generated unit by the expert that gave it the most
// probability (hover: every expert's probability and the mixture's).
"use strict";

const COLOURS = ["#ffcc80", "#90caf9", "#a5d6a7", "#ce93d8", "#ef9a9a", "#80deea", "#fff59d", "#bcaaa4"];
const $ = (id) => document.getElementById(id);
let card = null;      // the served model (GET /v1/models)
let controller = null; // aborts the running stream

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function colour(i) { return COLOURS[i % COLOURS.length]; }

function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  const legend = $("legend");
  legend.innerHTML = "";
  card.experts.forEach((name, i) => {
    const div = document.createElement("div");
    div.className = "slider";
    const w = card.weights[i];
    div.innerHTML = `<span class="swatch" style="background:${colour(i)}"></span>${name} ` +
      `<span class="value" id="w-value-${i}">${w.toFixed(2)}</span>` +
      `<input type="range" id="w-${i}" min="${card.mode === "logits" ? -1 : 0}" max="1" step="0.01" value="${w}">`;
    box.appendChild(div);
    div.querySelector("input").addEventListener("input", (ev) => {
      $(`w-value-${i}`).textContent = Number(ev.target.value).toFixed(2);
      $("recipe").value = "custom";
    });
    const item = document.createElement("span");
    item.className = "item";
    item.innerHTML = `<span class="swatch" style="background:${colour(i)}"></span>${name}`;
    legend.appendChild(item);
  });
}

function resetToRecipe() {
  card.weights.forEach((w, i) => {
    $(`w-${i}`).value = w;
    $(`w-value-${i}`).textContent = w.toFixed(2);
  });
  $("mode").value = card.mode;
}

async function loadModel() {
  const r = await fetch("/v1/models", { headers: headers() });
  const body = await r.json();
  if (!r.ok) { $("status").textContent = body.error ? body.error.message : r.statusText; return; }
  card = body.data[0];
  $("model-name").textContent = `${card.id}: ${card.experts.length} expert(s), ${card.unit} units, mode ${card.mode}`;
  buildSliders();
  resetToRecipe();
}

function requestBody() {
  const body = {
    model: card.id, prompt: $("prompt").value, max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value), seed: Number($("seed").value), stream: true,
    return_expert_logprobs: true, logprobs: 0,
  };
  if ($("recipe").value === "custom") {
    body.weights = card.experts.map((_, i) => Number($(`w-${i}`).value));
    body.mode = $("mode").value;
  }
  return body;
}

function describe(unit, expertLps, lp) {
  const lines = [`unit ${JSON.stringify(unit)}   mixture p = ${Math.exp(lp).toFixed(4)}`];
  expertLps.forEach((x, i) => lines.push(`  ${card.experts[i]}: p = ${Math.exp(x).toFixed(4)}`));
  return lines.join("\n");
}

function addUnit(choice) {
  const lps = choice.expert_logprobs[0];
  let best = 0;
  lps.forEach((x, i) => { if (x > lps[best]) best = i; });
  const span = document.createElement("span");
  span.className = "unit";
  span.dataset.expert = String(best);
  span.style.background = colour(best);
  span.textContent = choice.text;
  const lp = choice.logprobs ? choice.logprobs.token_logprobs[0] : NaN;
  span.title = describe(choice.unit, lps, lp);
  span.addEventListener("mouseenter", () => { $("hover").textContent = span.title; });
  $("output").appendChild(span);
}

async function generate() {
  if (!card) return;
  const out = $("output");
  out.querySelectorAll("span.unit").forEach((s) => s.remove());
  $("prompt-echo").textContent = $("prompt").value;
  $("status").textContent = "generating…";
  $("generate").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();
  let finish = null;
  try {
    const r = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(requestBody()),
                                               signal: controller.signal });
    if (!r.ok) { const e = await r.json(); throw new Error(e.error ? e.error.message : r.statusText); }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!block.startsWith("data: ") || block === "data: [DONE]") continue;
        const ev = JSON.parse(block.slice(6));
        if (ev.error) throw new Error(ev.error.message);
        for (const c of ev.choices) {
          if (c.expert_logprobs) addUnit(c);
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
    }
    $("status").textContent = `done (${finish})`;
  } catch (err) {
    $("status").textContent = err.name === "AbortError" ? "stopped" : "error: " + err.message;
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("recipe").addEventListener("change", () => { if ($("recipe").value === "served" && card) resetToRecipe(); });
$("api-key").addEventListener("change", loadModel);
loadModel();
