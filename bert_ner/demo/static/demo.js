// The demo page. Every piece of text (input, entities, errors) goes into the page through
// textContent or text nodes, never as HTML, so markup in the input shows literally.
"use strict";

// displaCy's colours for the CoNLL types; other types of another model take the extra ones.
const TYPE_COLOURS = { LOC: "#ff9561", MISC: "#c5e1a5", ORG: "#7aecec", PER: "#aa9cfc" };
const EXTRA_COLOURS = ["#feca74", "#f48fb1", "#90caf9", "#e6ee9c", "#bcaaa4", "#ce93d8"];

const $ = (id) => document.getElementById(id);
let info = null;

function colourOf(type) {
  if (TYPE_COLOURS[type]) return TYPE_COLOURS[type];
  const others = info.types.filter((t) => !TYPE_COLOURS[t]);
  return EXTRA_COLOURS[Math.max(0, others.indexOf(type)) % EXTRA_COLOURS.length];
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message").textContent = "";
}

function countCharacters() {
  // Code points, as the demo server counts them (Python's len), not UTF-16 units.
  const count = Array.from($("text").value).length;
  $("count").textContent = `${count.toLocaleString("en")} / ${info.max_chars.toLocaleString("en")} characters`;
  $("count").classList.toggle("over", count > info.max_chars);
}

function renderLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  for (const type of info.types) {
    const item = element("li", "legend-item", type);
    item.style.setProperty("background", colourOf(type));
    legend.append(item);
  }
}

function renderHighlights(text, entities) {
  // Offsets count code points (Python's str): slice an array of code points, not the string.
  const chars = Array.from(text);
  const container = $("highlighted");
  container.replaceChildren();
  let at = 0;
  for (const entity of entities) {
    container.append(document.createTextNode(chars.slice(at, entity.start).join("")));
    const mark = element("mark", "entity");
    mark.dataset.type = entity.type;
    mark.style.setProperty("--entity-colour", colourOf(entity.type));
    mark.append(element("span", "entity-text", chars.slice(entity.start, entity.end).join("")),
                element("span", "entity-label", entity.type));
    container.append(mark);
    at = entity.end;
  }
  container.append(document.createTextNode(chars.slice(at).join("")));
}

function renderTable(entities) {
  const body = $("entities").querySelector("tbody");
  body.replaceChildren();
  for (const entity of entities) {
    const row = document.createElement("tr");
    const type = element("td", "type");
    const swatch = element("span", "swatch");
    swatch.style.setProperty("background", colourOf(entity.type));
    type.append(swatch, document.createTextNode(entity.type));
    row.append(element("td", "text", entity.text), type,
               element("td", "offset", String(entity.start)), element("td", "offset", String(entity.end)));
    body.append(row);
  }
  $("entities").hidden = entities.length === 0;
  $("no-entities").hidden = entities.length !== 0;
}

function showJson(show) {
  $("json").hidden = !show;
  $("view").hidden = show;
  $("toggle-json").textContent = show ? "Show highlights" : "Show JSON";
  $("toggle-json").setAttribute("aria-pressed", String(show));
}

function showModelInfo() {
  const transport = info.transport === "grpc" ? "gRPC" : "REST";
  $("model-info").textContent =
    `Model ${info.model} (fingerprint ${info.fingerprint}) at ${info.server} over ${transport}.`;
}

function renderResult(answer, roundTripMs) {
  // The demo follows the served version across reloads: the header names the one that tagged.
  if (answer.fingerprint !== info.fingerprint) {
    info.fingerprint = answer.fingerprint;
    showModelInfo();
  }
  // A text signature names types in its answers only: learn the ones the legend lacks.
  const unseen = answer.entities.map((e) => e.type).filter((t) => !info.types.includes(t));
  if (unseen.length) {
    info.types = [...new Set([...info.types, ...unseen])];
    renderLegend();
  }
  renderHighlights(answer.text, answer.entities);
  renderTable(answer.entities);
  $("json").textContent = JSON.stringify(answer, null, 2);
  $("result").hidden = false;
  const timing = $("timing");
  timing.dataset.roundTripMs = roundTripMs.toFixed(1);
  timing.textContent = `round trip ${Math.round(roundTripMs)} ms (tagging ${Math.round(answer.tag_ms)} ms)`;
}

async function tag(event) {
  event.preventDefault();
  const button = $("tag");
  button.disabled = true;
  clearMessage();
  $("timing").textContent = "tagging\u2026";
  delete $("timing").dataset.roundTripMs;
  const started = performance.now();
  let response;
  let answer = null;
  try {
    response = await fetch("/api/tag", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("text").value }),
    });
    answer = await response.json().catch(() => null);
  } catch (error) {
    showMessage("The demo server does not answer: is python -m bert_ner.demo still running?");
    $("timing").textContent = "";
    return;
  } finally {
    button.disabled = false;
  }
  const roundTripMs = performance.now() - started;
  if (!response.ok || !answer || answer.error) {
    $("result").hidden = true;
    $("timing").textContent = "";
    showMessage(answer && answer.error ? answer.error : `The demo server answered HTTP ${response.status}.`);
    return;
  }
  renderResult(answer, roundTripMs);
}

async function start() {
  try {
    const response = await fetch("/api/info");
    info = await response.json();
  } catch (error) {
    showMessage("The demo server does not answer: is python -m bert_ner.demo still running?");
    return;
  }
  showModelInfo();
  renderLegend();
  countCharacters();
  $("text").addEventListener("input", countCharacters);
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("tag-form").requestSubmit();
  });
  $("tag-form").addEventListener("submit", tag);
  $("toggle-json").addEventListener("click", () => showJson($("json").hidden));
  $("tag").disabled = false;
  document.body.dataset.ready = "true";
}

start();
