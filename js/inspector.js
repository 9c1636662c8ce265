// Z-Image Lab live prompt inspector. Under the prompt of the formatter and encoder nodes it shows,
// as you type, the exact text the Qwen3 encoder reads (chat template, system prompt, think block),
// its token count against the length Z-Image-Turbo was trained with (512) and the hard limits,
// in a warning colour past them. The server tokenises with ComfyUI's own Z-Image tokenizer
// (POST /zimage_lab/inspect, nodes/inspector.py); no model is loaded for it.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const WIDGET = "zimage_lab_inspector";
const ROUTE = "/zimage_lab/inspect";
const DEBOUNCE_MS = 250;

// Request fields: "prompt" (gets the chat template), "text" (used as is when it starts with chat
// markup, else templated like CLIPTextEncode, as the Qwen3 Encoder does), and the formatter's chat
// settings (a preset's system prompt comes before the typed one). Earlier turns from a `history`
// link are not known to the inspector.
const FIELDS = ["prompt", "text", "system_prompt", "preset", "think_mode", "thinking", "assistant_prefill"];

// Nodes of the pack that carry the inspector: request field -> input name. Any node can also opt
// in by giving inputs the option {"zimage_lab_inspect": "<field>"}; tagged inputs win over this list.
export const INSPECTED_NODES = {
  ZImageLabPromptFormatter: {
    prompt: "prompt", system_prompt: "system_prompt", preset: "preset", think_mode: "think_mode",
    thinking: "thinking", assistant_prefill: "assistant_prefill",
  },
  ZImageLabQwen3Encode: { text: "text" },
};

const LEVEL_COLOURS = { ok: "var(--descrip-text, #999)", warn: "#e0a030", over: "#ff5a4f", error: "#ff5a4f" };

export function inspectedFields(nodeData) {
  const tagged = {};
  for (const group of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[group] ?? {})) {
      const field = spec?.[1]?.zimage_lab_inspect;
      if (FIELDS.includes(field)) tagged[field] = name;
    }
  }
  if (Object.keys(tagged).length) return tagged;
  return INSPECTED_NODES[nodeData?.name] ?? null;
}

function isLinked(node, name) {
  return node.inputs?.some((input) => input.name === name && input.link != null) ?? false;
}

function widgetOf(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// The request for the node's current widget values, or a reason why there is nothing to inspect.
function requestOf(node, fields) {
  const main = fields.prompt ?? fields.text;
  if (isLinked(node, main)) return { skip: `'${main}' comes from a link: inspect the node that writes it.` };
  if (!widgetOf(node, main)) return { skip: `'${main}' has no text box on this node: nothing to inspect.` };
  const request = { raw: fields.prompt ? false : "auto" };
  for (const [field, name] of Object.entries(fields)) {
    const key = field === "text" ? "prompt" : field;
    if (isLinked(node, name)) return { skip: `'${name}' comes from a link: the inspector reads typed values only.` };
    const value = widgetOf(node, name)?.value;
    if (value !== undefined && value !== null) request[key] = String(value);
  }
  request.prompt ??= "";
  return { request };
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function summary(result) {
  const limits = result.limits.map((l) => `${l.name} ${l.tokens}`).join(" · ");
  let line = `${result.count} tokens (padded ${result.padded_count}) | limits: ${limits}`;
  if (result.level === "warn") line = `⚠ ${line} | past the trained length: positions the model never saw`;
  if (result.level === "over") line = `⛔ ${line} | past ${result.over_limits.filter((n) => n !== "trained").join(", ")}`;
  return line;
}

function buildView() {
  const root = el("div", "zimage-lab-inspector");
  Object.assign(root.style, {
    display: "flex", flexDirection: "column", gap: "2px", fontSize: "11px", overflow: "hidden",
    fontFamily: "monospace", color: "var(--input-text, #ddd)",
  });
  const count = el("div", "zimage-lab-inspector-count", "…");
  count.style.fontWeight = "bold";
  const text = el("pre", "zimage-lab-inspector-text");
  Object.assign(text.style, {
    margin: 0, padding: "3px", whiteSpace: "pre-wrap", wordBreak: "break-word", overflow: "auto", flex: "1",
    background: "var(--comfy-input-bg, #222)", borderRadius: "4px", minHeight: "40px",
  });
  const note = el("div", "zimage-lab-inspector-note");
  Object.assign(note.style, { color: LEVEL_COLOURS.warn, display: "none" });
  const details = el("details", "zimage-lab-inspector-tokens");
  details.append(el("summary", "", "tokens"));
  const tokens = el("div", "zimage-lab-inspector-token-list");
  Object.assign(tokens.style, { maxHeight: "120px", overflow: "auto", lineHeight: "1.6" });
  details.append(tokens);
  root.append(count, text, note, details);
  root.dataset.state = "pending";
  return { root, count, text, note, tokens };
}

function render(view, result) {
  const { root, count, text, note, tokens } = view;
  root.dataset.state = "ready";
  root.dataset.count = String(result.count);
  root.dataset.level = result.level;
  count.textContent = summary(result);
  count.style.color = LEVEL_COLOURS[result.level];
  const [start, end] = result.prompt_span;
  const template = (s) => { const span = el("span", "zimage-lab-inspector-template", s); span.style.opacity = 0.55; return span; };
  text.replaceChildren(template(result.text.slice(0, start)), el("span", "zimage-lab-inspector-prompt", result.text.slice(start, end)),
    template(result.text.slice(end)));
  note.style.display = result.rewritten ? "" : "none";
  note.textContent = result.rewritten
    ? "ComfyUI's tokenizer rewrites this text (\\( \\) become ( ), embedding:name words are looked up): the tokens show what the encoder reads."
    : "";
  if (tokens.parentElement.open) renderTokens(tokens, result);
  else tokens.replaceChildren();
  view.last = result;
}

function renderTokens(tokens, result) {
  tokens.replaceChildren(...result.tokens.map((piece, i) => {
    const span = el("span", "zimage-lab-inspector-token", piece.replace(/\n/g, "↵"));
    span.title = result.ids[i] === null ? "embedding vector" : `id ${result.ids[i]}`;
    Object.assign(span.style, { border: "1px solid #555", borderRadius: "3px", margin: "1px", padding: "0 2px", whiteSpace: "pre" });
    return span;
  }));
}

function showMessage(view, state, message) {
  view.root.dataset.state = state;
  view.count.textContent = message;
  view.count.style.color = LEVEL_COLOURS[state === "error" ? "error" : "ok"];
}

function attachInspector(node, fields) {
  const view = buildView();
  const widget = node.addDOMWidget(WIDGET, "zimage_lab_inspector", view.root, {
    serialize: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => 150,
  });
  widget.serialize = false;
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width, 420), Math.max(node.size[1], height)]);
  view.tokens.parentElement.addEventListener("toggle", () => view.last && render(view, view.last));

  let timer = null;
  let sequence = 0;
  async function update() {
    const { request, skip } = requestOf(node, fields);
    if (skip) return showMessage(view, "skipped", skip);
    const mine = ++sequence;
    view.root.dataset.state = "pending";
    try {
      const response = await api.fetchApi(ROUTE, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
      });
      const body = await response.json();
      if (mine !== sequence) return;
      if (!response.ok) return showMessage(view, "error", `inspector: ${body.error ?? response.statusText}`);
      render(view, body);
    } catch (e) {
      if (mine === sequence) showMessage(view, "error", `inspector: ${e.message ?? e}`);
    }
  }
  const schedule = () => {
    clearTimeout(timer);
    view.root.dataset.state = "pending";
    timer = setTimeout(update, DEBOUNCE_MS);
  };
  for (const name of Object.values(fields)) {
    const w = widgetOf(node, name);
    if (!w) continue;
    const callback = w.callback;
    w.callback = function () { const r = callback?.apply(this, arguments); schedule(); return r; };
    const input = w.inputEl ?? w.element;
    if (input instanceof HTMLElement) input.addEventListener("input", schedule);
  }
  node.zimageLabInspector = { update, schedule, view };
  schedule();
}

app.registerExtension({
  name: "ZImageLab.PromptInspector",
  inspectedNodes: INSPECTED_NODES,
  inspectedFields,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const fields = inspectedFields(nodeData);
    if (!fields) return;
    const chain = (method, after) => {
      const original = nodeType.prototype[method];
      nodeType.prototype[method] = function () {
        const r = original?.apply(this, arguments);
        after(this);
        return r;
      };
    };
    chain("onNodeCreated", (node) => attachInspector(node, fields));
    chain("onConfigure", (node) => node.zimageLabInspector?.schedule());
    chain("onConnectionsChange", (node) => node.zimageLabInspector?.schedule());
  },
});
