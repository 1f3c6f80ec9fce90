"use strict";
// The designer's desk: the queue in three lanes and one edit with the actions of its lane.
// Talks only to /v1/desk/... with the reviewer's token (or none behind the identity proxy).

const I18N = {
  zh: {
    title: "审核台", language: "语言", token: "审核令牌", tokenHint: "审核员令牌（由管理员提供）",
    signIn: "进入", department: "部门", usage: "用途", model: "模型", all: "全部",
    lane_needs_review: "待人工处理", lane_flagged: "质检标记", lane_sample: "今日抽检",
    back: "← 返回队列", before: "修改前", after: "修改后", attempts: "尝试记录", gate: "质检数据",
    claim: "认领", release: "放弃认领", upload: "上传修好的图片", rerun: "用修正后的指令重跑",
    sendBack: "退回申请人", sendBackHint: "请告诉申请人需要修改什么", verdict: "质量评价",
    betterHint: "更好的指令（可选）", good: "好", poor: "差", send: "提交",
    waiting: "已等待", overdue: "超时", heldBy: "处理人", until: "至", unclaimed: "无人认领",
    instruction: "指令", originalInstruction: "原指令", template: "模板", applicant: "申请人",
    approvers: "审批人", reason: "原因", phase: "状态", signedInAs: "审核员：", empty: "暂无",
    done: "已提交", alreadyDone: "此操作已完成", minutes: "分钟", hours: "小时", worker: "节点",
  },
  en: {
    title: "Designer's desk", language: "Language", token: "Reviewer token",
    tokenHint: "your reviewer token (from your admin)", signIn: "Sign in",
    department: "Department", usage: "Usage", model: "Model", all: "All",
    lane_needs_review: "Needs review", lane_flagged: "Flagged by the gate",
    lane_sample: "Today's sample", back: "← Back to the queue", before: "Before",
    after: "After", attempts: "Attempts", gate: "Quality gate", claim: "Claim",
    release: "Release", upload: "Upload the fixed image",
    rerun: "Re-run with a corrected instruction", sendBack: "Send back to the applicant",
    sendBackHint: "what the applicant should change", verdict: "Verdict",
    betterHint: "a better instruction (optional)", good: "Good", poor: "Poor", send: "Send",
    waiting: "waiting", overdue: "overdue", heldBy: "Held by", until: "until",
    unclaimed: "Nobody holds this", instruction: "Instruction",
    originalInstruction: "Original instruction", template: "Template", applicant: "Applicant",
    approvers: "Approvers", reason: "Reason", phase: "Phase", signedInAs: "Reviewer: ",
    empty: "None", done: "Done", alreadyDone: "This was already done", minutes: "min",
    hours: "h", worker: "worker",
  },
};

const page = { lang: "zh", filters: {}, edit: null, actionIds: {} };
const $ = (id) => document.getElementById(id);
const t = (key) => (I18N[page.lang] || I18N.zh)[key] || key;

function applyLanguage() {
  document.documentElement.lang = page.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  route();
}

function headers(extra) {
  const token = sessionStorage.getItem("editflow-desk-token");
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    $("login").hidden = false;
  }
  if (!resp.ok) throw new Error(body.detail || `HTTP ${resp.status}`);
  return body;
}

function showError(text) { $("error").textContent = text || ""; }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function waited(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds >= 3600
    ? `${(seconds / 3600).toFixed(1)} ${t("hours")}`
    : `${Math.round(seconds / 60)} ${t("minutes")}`;
}

function fillFilter(name, values) {
  const select = $(`f-${name}`);
  const current = page.filters[name] || "";
  select.replaceChildren(new Option(t("all"), ""));
  for (const v of values) select.append(new Option(v, v));
  select.value = values.includes(current) ? current : "";
}

async function showQueue() {
  $("edit").hidden = true;
  const query = new URLSearchParams(Object.entries(page.filters).filter(([, v]) => v));
  const body = await api(`/v1/desk/tickets?${query}`);
  for (const name of ["department", "usage", "model"]) fillFilter(name, body.filters[name]);
  for (const [lane, content] of Object.entries(body.lanes)) {
    $(`count-${lane}`).textContent = content.count;
    const list = $(`lane-${lane}`);
    list.replaceChildren();
    if (!content.tickets.length) list.append(el("li", t("empty"), "small"));
    for (const ticket of content.tickets) {
      const item = el("li");
      item.dataset.name = ticket.name;
      const link = el("a", ticket.name);
      link.href = `#/${ticket.namespace}/${ticket.name}`;
      item.append(link);
      if (ticket.overdue) item.append(el("span", t("overdue"), "badge"));
      item.append(el("div", ticket.instruction, "small"));
      const who = ticket.holder ? `${t("heldBy")}: ${ticket.holder.reviewer.name || ticket.holder.reviewer.id}` : "";
      item.append(el("div", `${t("waiting")} ${waited(ticket.waiting_seconds)} · ${ticket.department || ""} ${who}`, "small"));
      list.append(item);
    }
  }
  $("queue").hidden = false;
  document.body.dataset.view = "queue";
}

function fact(list, key, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", t(key)), el("dd", value));
}

function person(p) { return p ? (p.name ? `${p.name} (${p.id})` : p.id) : ""; }

async function showEdit(ns, name) {
  $("queue").hidden = true;
  const edit = await api(`/v1/desk/tickets/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`);
  page.edit = edit;
  $("edit-title").textContent = `${edit.namespace}/${edit.name} · ${t(`lane_${edit.lane}`)}`;
  $("holder").textContent = edit.holder
    ? `${t("heldBy")}: ${edit.holder.reviewer.name || edit.holder.reviewer.id} (${t("until")} ${new Date(edit.holder.until).toLocaleTimeString()})`
    : t("unclaimed");
  $("before").src = edit.input_url || "";
  const variants = $("variants");
  variants.replaceChildren();
  for (const r of edit.results) {
    const fig = el("figure");
    fig.append(el("figcaption", `${t("after")} ${r.index}`));
    const img = el("img");
    if (r.url) img.src = r.url;
    fig.append(img);
    variants.append(fig);
  }
  const facts = $("facts");
  facts.replaceChildren();
  fact(facts, "instruction", edit.instruction);
  fact(facts, "originalInstruction", edit.original_instruction);
  fact(facts, "template", edit.template);
  fact(facts, "usage", edit.usage);
  fact(facts, "model", edit.model);
  fact(facts, "department", edit.department);
  fact(facts, "applicant", person(edit.applicant));
  fact(facts, "approvers", edit.approvers.map(person).join(", "));
  fact(facts, "phase", edit.phase);
  fact(facts, "reason", [edit.reason, edit.message].filter(Boolean).join(": "));
  fact(facts, "waiting", waited(edit.waiting_seconds));
  const attempts = $("attempts");
  attempts.replaceChildren();
  for (const a of edit.attempts) {
    const item = el("li", `#${a.attempt} ${a.worker ? `${t("worker")} ${a.worker}` : ""} ${a.error_code || ""} ${a.message || ""}`);
    if (a.log.length) item.append(el("pre", a.log.join("\n")));
    attempts.append(item);
  }
  const gate = $("gate");
  gate.replaceChildren();
  if (edit.gate) {
    gate.append(el("dt", "verdict"), el("dd", edit.gate.verdict));
    for (const [k, v] of Object.entries(edit.gate.figures)) gate.append(el("dt", k), el("dd", String(v)));
  }
  for (const box of document.querySelectorAll("#actions fieldset")) {
    box.hidden = !edit.actions.includes(box.dataset.action) || !edit.mine;
  }
  $("release").hidden = !edit.mine;
  $("rerun-instruction").value = edit.instruction;
  $("edit").hidden = false;
  document.body.dataset.view = "edit";
}

function actionId(action) {
  // One id per action and page view: a second click or a stale tab sends the same id,
  // and the desk answers it as already done instead of acting twice.
  const key = `${page.edit.namespace}/${page.edit.name}/${action}`;
  page.actionIds[key] = page.actionIds[key] || `a${crypto.randomUUID().replaceAll("-", "")}`;
  return page.actionIds[key];
}

function editPath(suffix) {
  return `/v1/desk/tickets/${encodeURIComponent(page.edit.namespace)}/${encodeURIComponent(page.edit.name)}/${suffix}`;
}

async function act(body) {
  const result = await api(editPath("actions"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ action_id: actionId(body.action), ...body }),
  });
  $("done").textContent = result.already_done ? t("alreadyDone") : t("done");
}

async function upload() {
  const file = $("upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("action_id", actionId("upload"));
  form.append("file", file);
  const result = await api(editPath("upload"), { method: "POST", body: form });
  $("done").textContent = result.already_done ? t("alreadyDone") : `${t("done")}: ${result.result_key}`;
}

function guarded(fn) {
  return async (event) => {
    if (event) event.preventDefault();
    showError("");
    try { await fn(); } catch (err) { showError(err.message); }
  };
}

async function route() {
  showError("");
  $("done").textContent = "";
  const match = location.hash.match(/^#\/([^/]+)\/([^/]+)$/);
  try {
    const me = await api("/v1/desk/me");
    $("login").hidden = true;
    $("who").textContent = `${t("signedInAs")}${me.reviewer.name} · ${me.namespaces.join(", ")}`;
    if (match) await showEdit(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
    else await showQueue();
  } catch (err) {
    showError(err.message);
  }
  document.body.dataset.ready = "true";
}

function init() {
  page.lang = new URLSearchParams(location.search).get("lang")
    || ((navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en");
  $("lang").value = page.lang;
  $("lang").addEventListener("change", () => { page.lang = $("lang").value; applyLanguage(); });
  $("login").addEventListener("submit", guarded(async () => {
    sessionStorage.setItem("editflow-desk-token", $("token").value.trim());
    await route();
  }));
  for (const name of ["department", "usage", "model"]) {
    $(`f-${name}`).addEventListener("change", guarded(async () => {
      page.filters[name] = $(`f-${name}`).value;
      await showQueue();
    }));
  }
  $("back").addEventListener("click", guarded(async () => { location.hash = ""; }));
  $("claim").addEventListener("click", guarded(async () => {
    await api(editPath("claim"), { method: "POST" });
    await showEdit(page.edit.namespace, page.edit.name);
  }));
  $("release").addEventListener("click", guarded(async () => {
    await api(editPath("release"), { method: "POST" });
    await showEdit(page.edit.namespace, page.edit.name);
  }));
  $("upload-button").addEventListener("click", guarded(upload));
  $("rerun-button").addEventListener("click", guarded(() => act({ action: "rerun", instruction: $("rerun-instruction").value })));
  $("send-back-button").addEventListener("click", guarded(() => act({ action: "send_back", message: $("send-back-message").value })));
  for (const verdict of ["good", "poor"]) {
    $(`verdict-${verdict}`).addEventListener("click", guarded(() => act({
      action: "verdict", verdict, better_instruction: $("better-instruction").value.trim() || null,
    })));
  }
  window.addEventListener("hashchange", route);
  applyLanguage();
}

document.addEventListener("DOMContentLoaded", init);
