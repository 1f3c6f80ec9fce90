// The try-it page: upload or link an image, pick a template or write an instruction,
// submit through the same API an OA system uses (POST /v1/uploads, POST /v1/edits),
// poll GET /v1/edits/{id} and show before/after. Vanilla JS, no CDN, no inline code.
"use strict";

const I18N = {
  zh: {
    tagline: "一句话修图：上传图片，写一条具体的修改指令，查看前后对比。",
    language: "语言", token: "访问令牌", tokenHint: "Bearer 令牌（由管理员提供）",
    image: "图片", upload: "上传文件", orUrl: "或图片链接", instruction: "修改指令",
    template: "模板", noTemplate: "（不用模板，自己写）", prompt: "指令（可直接编辑）",
    promptHint: "例如：把背景换成海边日落", usage: "用途", submit: "提交修图",
    status: "状态", editId: "编号", before: "修改前", after: "修改后", download: "下载结果",
    uploading: "上传中…", submitting: "提交中…", pending: "处理中", success: "完成",
    failed: "失败", needs_review: "转人工处理", cancelled: "已取消", rejected: "被拒绝",
    needImage: "请上传图片或填写图片链接", needPrompt: "请填写修改指令或选择模板",
    seconds: "秒", variantsLabel: "结果数量", variantsTitle: "选一个结果", variant: "结果",
    pick: "选这个", picked: "已选：结果", queued: "排队中", position: "第", positionSuffix: "位",
    running: "处理中（GPU）", gate: "质量检查", approximate: "预览（近似效果）",
  },
  en: {
    tagline: "One-sentence image edits: upload an image, write one concrete instruction, compare.",
    language: "Language", token: "Access token", tokenHint: "Bearer token (from your admin)",
    image: "Image", upload: "Upload a file", orUrl: "or an image URL", instruction: "Instruction",
    template: "Template", noTemplate: "(no template: write your own)",
    prompt: "Instruction (editable)", promptHint: "e.g. Replace the background with a beach at sunset",
    usage: "Usage", submit: "Submit edit", status: "Status", editId: "Edit id",
    before: "Before", after: "After", download: "Download result", uploading: "uploading…",
    submitting: "submitting…", pending: "working", success: "done", failed: "failed",
    needs_review: "sent to a designer", cancelled: "cancelled", rejected: "rejected",
    needImage: "Upload an image or give its URL", needPrompt: "Write an instruction or pick a template",
    seconds: "s", variantsLabel: "Results", variantsTitle: "Pick one result", variant: "Result",
    pick: "Pick this one", picked: "Picked: result", queued: "queued", position: "position",
    positionSuffix: "", running: "running on a GPU", gate: "quality gate",
    approximate: "preview (approximate)",
  },
};

const $ = (id) => document.getElementById(id);
const page = { lang: "zh", templates: [], usages: [], auth: "none", rendered: "", poll: null };

function t(key) { return (I18N[page.lang] || I18N.zh)[key] || key; }

function applyLanguage() {
  document.documentElement.lang = page.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  fillTemplates();
  fillUsages();
  renderParams();
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

function fillTemplates() {
  const select = $("template");
  const current = select.value;
  select.replaceChildren(option("", t("noTemplate")));
  for (const tpl of page.templates) select.append(option(tpl.id, tpl.title[page.lang]));
  select.value = current;
}

function fillUsages() {
  const select = $("usage");
  const current = select.value || "default";
  select.replaceChildren();
  for (const u of page.usages) select.append(option(u.id, u.label[page.lang]));
  select.value = current;
}

function currentTemplate() {
  return page.templates.find((tpl) => tpl.id === $("template").value) || null;
}

function paramValues() {
  const values = {};
  for (const input of $("params").querySelectorAll("input")) values[input.name] = input.value.trim();
  return values;
}

function renderParams() {
  const tpl = currentTemplate();
  const box = $("params");
  const old = paramValues();
  box.replaceChildren();
  if (!tpl) return;
  for (const p of tpl.params) {
    const label = document.createElement("label");
    const span = document.createElement("span");
    span.textContent = p.label[page.lang];
    const input = document.createElement("input");
    input.type = "text";
    input.name = p.name;
    input.id = `param-${p.name}`;
    input.placeholder = p.example[page.lang];
    input.value = old[p.name] || "";
    input.addEventListener("input", updatePrompt);
    label.append(span, input);
    box.append(label);
  }
  updatePrompt();
}

function updatePrompt() {
  const tpl = currentTemplate();
  if (!tpl) return;
  const values = paramValues();
  const text = tpl.text[page.lang].replace(/\{(\w+)\}/g, (_, name) => values[name] || `{${name}}`);
  // Follow the template only while the user has not edited the instruction by hand.
  if ($("prompt").value === "" || $("prompt").value === page.rendered) $("prompt").value = text;
  page.rendered = text;
}

function token() { return $("token").value.trim(); }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function api(path, options) {
  const resp = await fetch(path, options);
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const detail = body && (body.detail || body.title);
    throw new Error(detail ? `${resp.status}: ${detail}` : `HTTP ${resp.status}`);
  }
  return body;
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `k-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(status, startedAt) {
  const el = $("status");
  el.textContent = t(status) === status ? status : `${t(status)} (${status})`;
  el.className = `status-${status}`;
  el.dataset.status = status;
  if (startedAt) {
    const secs = Math.round((Date.now() - startedAt) / 1000);
    $("elapsed").textContent = `· ${secs} ${t("seconds")}`;
  }
}

async function submit(event) {
  event.preventDefault();
  showError("");
  if (page.poll) clearTimeout(page.poll);
  $("after").hidden = true;
  $("result-link").hidden = true;
  if (token()) sessionStorage.setItem("editflow-token", token());
  const file = $("source-file").files[0];
  const url = $("source-url").value.trim();
  const prompt = $("prompt").value.trim();
  const tpl = currentTemplate();
  if (!file && !url) return showError(t("needImage"));
  if (!prompt && !tpl) return showError(t("needPrompt"));
  $("submit").disabled = true;
  try {
    const body = { usage: $("usage").value || "default" };
    const variants = parseInt($("variants").value || "1", 10);
    if (variants > 1) body.variants = variants;
    $("variants-view").hidden = true;
    if (file) {
      setStatus(t("uploading"));
      const form = new FormData();
      form.append("file", file);
      const uploaded = await api("/v1/uploads", { method: "POST", headers: headers(), body: form });
      body.image_key = uploaded.image_key;
      $("before").src = URL.createObjectURL(file);
    } else {
      body.image_url = url;
      $("before").src = url;
    }
    $("before").hidden = false;
    if (tpl) body.template = { id: tpl.id, params: paramValues(), lang: page.lang };
    // An untouched template text is rendered (and checked) by the server; an edited one is sent.
    if (!tpl || prompt !== page.rendered) body.prompt = prompt;
    setStatus(t("submitting"));
    const edit = await api("/v1/edits", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "Idempotency-Key": newKey() }),
      body: JSON.stringify(body),
    });
    $("edit-id").textContent = edit.id;
    follow(edit.id, Date.now());
  } catch (err) {
    setStatus("failed");
    showError(err.message);
    $("submit").disabled = false;
  }
}

async function follow(id, startedAt) {
  let edit;
  try {
    edit = await api(`/v1/edits/${encodeURIComponent(id)}`, { headers: headers() });
  } catch (err) {
    showError(err.message); // transient: keep polling
    page.poll = setTimeout(() => follow(id, startedAt), 3000);
    return;
  }
  setStatus(edit.status, startedAt);
  showPhase(edit);
  if (edit.status === "pending") {
    page.poll = setTimeout(() => follow(id, startedAt), 1500);
    return;
  }
  $("submit").disabled = false;
  if (edit.status === "success" && edit.result_url) {
    $("after").src = edit.result_url;
    $("after").hidden = false;
    $("result-link").href = edit.result_url;
    $("result-link").hidden = false;
    showVariants(edit);
  } else {
    showError((edit.error && edit.error.message) || edit.message || edit.status);
  }
}

// Where a pending edit is (queued with its place, or running) and, once done, what the
// quality gate said; from the operator's progress events and the completion.
function showPhase(edit) {
  let text = "";
  if (edit.status === "pending" && edit.phase === "queued") {
    text = `${t("queued")}` + (edit.queue_position
      ? ` · ${t("position")} ${edit.queue_position} ${t("positionSuffix")}`.trimEnd() : "");
  } else if (edit.status === "pending" && edit.phase === "running") {
    text = t("running");
  } else if (edit.quality) {
    text = `${t("gate")}: ${edit.quality}`;
  }
  if (edit.approximate) text = `${t("approximate")}${text ? " · " + text : ""}`;
  $("phase").textContent = text;
  $("phase").hidden = !text;
}

// Several results side by side, each with its seed and the gate's verdict; picking one
// POSTs /v1/edits/{id}/select, which editflow records and publishes to the OA system.
function showVariants(edit) {
  const list = $("variant-list");
  list.replaceChildren();
  if (!edit.variants || edit.variants.length < 2) return;
  for (const variant of edit.variants) {
    const figure = document.createElement("figure");
    figure.dataset.variant = String(variant.index);
    const caption = document.createElement("figcaption");
    caption.textContent = `${t("variant")} ${variant.index} · seed ${variant.seed}` +
      (variant.quality ? ` · ${variant.quality}` : "");
    const img = document.createElement("img");
    img.src = variant.result_url;
    img.alt = `${t("variant")} ${variant.index}`;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "pick";
    button.textContent = t("pick");
    button.addEventListener("click", () => pick(edit.id, variant.index));
    figure.append(caption, img, button);
    list.append(figure);
  }
  markPicked(edit.selected_variant);
  $("variants-view").hidden = false;
}

function markPicked(index) {
  for (const figure of $("variant-list").children) {
    figure.classList.toggle("picked", figure.dataset.variant === String(index));
  }
  $("picked").hidden = !index;
  if (index) $("picked").textContent = `${t("picked")} ${index}`;
}

async function pick(id, index) {
  showError("");
  try {
    const edit = await api(`/v1/edits/${encodeURIComponent(id)}/select`, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ variant: index }),
    });
    markPicked(edit.selected_variant);
  } catch (err) {
    showError(err.message);
  }
}

async function init() {
  page.lang = (navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en";
  $("lang").value = page.lang;
  $("lang").addEventListener("change", () => { page.lang = $("lang").value; applyLanguage(); });
  $("template").addEventListener("change", () => { $("prompt").value = ""; renderParams(); });
  $("edit-form").addEventListener("submit", submit);
  $("source-file").addEventListener("change", () => { if ($("source-file").files[0]) $("source-url").value = ""; });
  $("token").value = sessionStorage.getItem("editflow-token") || "";
  try {
    const [info, templates, usages] = await Promise.all([
      api("/v1/info"), api("/v1/templates"), api("/v1/usages"),
    ]);
    page.auth = info.auth;
    page.templates = templates;
    page.usages = usages;
    $("auth").hidden = info.auth !== "bearer";
  } catch (err) {
    showError(err.message);
  }
  applyLanguage();
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", init);
