// The segq console: a single page on the public HTTP API only. The
// workspace and its API key are kept in session storage (never in the URL,
// never logged); every request carries the key as a bearer token.

const PARTNERS = ["amplitude", "mixpanel", "heap", "census", "hightouch", "segment", "kubit", "tinyclues"];
const DEBOUNCE_MS = 250;
const PREVIEW = 20;

// ----- small DOM helpers -----

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

/** A labelled control: `<label>text <control></label>`. */
function field(text, control, cls) {
  return h("label", { class: cls }, text, control);
}

function select(options, value, attrs) {
  const s = h("select", attrs || {});
  for (const o of options) {
    const [v, t] = Array.isArray(o) ? o : [o, o];
    s.append(h("option", { value: v, text: t }));
  }
  if (value !== undefined) s.value = value;
  return s;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fmtTime = (t) => (t ? new Date(t).toISOString().replace("T", " ").slice(0, 16) + " UTC" : "never");
const fmtMs = (ms) => (ms < 10 ? ms.toFixed(1) : ms.toFixed(0)) + " ms";

// ----- errors -----

function showError(message) {
  const box = document.getElementById("errors");
  const close = h("button", { type: "button", class: "link", text: "Dismiss" });
  const item = h("div", { class: "error" }, h("span", { text: message }), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  while (box.children.length > 4) box.firstChild.remove();
}

function clearErrors() {
  document.getElementById("errors").replaceChildren();
}

// ----- the API -----

const session = {
  get ws() { return sessionStorage.getItem("segq.ws") || ""; },
  get token() { return sessionStorage.getItem("segq.token") || ""; },
  set(ws, token) { sessionStorage.setItem("segq.ws", ws); sessionStorage.setItem("segq.token", token); },
  clear() { sessionStorage.removeItem("segq.ws"); sessionStorage.removeItem("segq.token"); },
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, opts = {}) {
  const headers = { Authorization: `Bearer ${opts.token || session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, signal: opts.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `The server could not be reached: ${e.message}`);
  }
  const text = await resp.text();
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const j = JSON.parse(text);
      if (j && j.message) message = j.message;
      if (j && Array.isArray(j.errors) && j.errors.length) message += `: ${j.errors.join("; ")}`;
    } catch (_) { /* not JSON: the status line */ }
    throw new ApiError(resp.status, message);
  }
  if (opts.raw) return text;
  return text ? JSON.parse(text) : null;
}

const wsPath = (rest) => `/workspaces/${encodeURIComponent(session.ws)}${rest}`;
const adminPath = (rest) => `/admin/workspaces/${encodeURIComponent(session.ws)}${rest}`;

/** Runs `f`, showing the API's message if it fails. */
async function guarded(f) {
  try {
    return await f();
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
    return undefined;
  }
}

// ----- routing -----

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "builder", arg: parts[1] };
}

let teardown = () => {};

function render() {
  teardown();
  teardown = () => {};
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const signedIn = !!(session.ws && session.token);
  nav.hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `workspace ${session.ws}` : "";
  if (!signedIn) {
    main.replaceChildren(signInView());
    return;
  }
  const { page, arg } = route();
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const views = { builder: builderView, cohorts: cohortsView, partners: partnersView };
  const view = views[page] || builderView;
  main.replaceChildren(view(arg));
}

// ----- sign in -----

function signInView() {
  const ws = h("input", { id: "signin-ws", name: "workspace", required: true, autocomplete: "off", value: session.ws || "" });
  const token = h("input", { id: "signin-token", name: "token", type: "password", required: true, autocomplete: "off" });
  const button = h("button", { type: "submit", class: "primary", id: "signin-submit", text: "Sign in" });
  const form = h("form", {},
    field("Workspace", ws),
    field("API key (a workspace key with segments:read and workspace:admin)", token),
    button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors();
    button.disabled = true;
    const name = ws.value.trim();
    const key = token.value.trim();
    try {
      await api("GET", `/workspaces/${encodeURIComponent(name)}/segments`, undefined, { token: key });
      session.set(name, key);
      token.value = "";
      render();
    } catch (e) {
      showError(e.message);
    } finally {
      button.disabled = false;
    }
  });
  return h("section", { class: "card signin" },
    h("h1", { text: "Sign in" }),
    h("p", { class: "muted", text: "The key is kept in this tab's session storage only." }),
    form);
}

// ----- the filter model -----
//
// { groups: [{combinator, filters: [leaf]}], groups_combinator,
//   exclusions: [{combinator, filters: [leaf]}] }, leaves:
//   {kind: "cohort", partner, cohort_id, includes}
//   {kind: "bucket", comparison, value, value2}
//   {kind: "attribute", attribute, comparison, value}
//   {kind: "segment", comparison, value}
//   {kind: "raw", json}   a stored leaf the builder shows as it is

const BUCKET_CMPS = [["less_than", "<"], ["less_than_or_equal_to", "≤"], ["greater_than", ">"],
  ["greater_than_or_equal_to", "≥"], ["between", "between"]];
const ATTR_CMPS = {
  string: ["equals", "does_not_equal", "is_any_of", "starts_with", "matches_regex", "exists", "does_not_exist"],
  integer: ["equals", "does_not_equal", "less_than", "less_than_or_equal_to", "greater_than",
    "greater_than_or_equal_to", "between", "exists", "does_not_exist"],
  boolean: ["is_true", "is_false", "exists", "does_not_exist"],
  time: ["before", "after", "within_last_days", "within_last_hours", "more_than_days_ago", "exists", "does_not_exist"],
};
ATTR_CMPS.decimal = ATTR_CMPS.integer;
const NO_VALUE = new Set(["exists", "does_not_exist", "is_true", "is_false"]);

const newGroup = () => ({ combinator: "and", filters: [newLeaf("cohort")] });

function newLeaf(kind) {
  switch (kind) {
    case "bucket": return { kind, comparison: "less_than", value: "5000", value2: "" };
    case "attribute": return { kind, attribute: "", comparison: "equals", value: "" };
    case "segment": return { kind, comparison: "in", value: "" };
    default: return { kind: "cohort", partner: "amplitude", cohort_id: "", includes: true };
  }
}

/** A leaf in the API's JSON form, or a reason it is not complete. */
function leafJson(leaf, attrTypes) {
  switch (leaf.kind) {
    case "cohort":
      if (!leaf.cohort_id) return { incomplete: "pick a cohort" };
      return { filter: `${leaf.partner}_cohorts`,
        comparison: leaf.includes ? "includes_value" : "does_not_include_value", value: leaf.cohort_id };
    case "bucket": {
      const a = leaf.value.trim(), b = (leaf.value2 || "").trim();
      if (a === "" || (leaf.comparison === "between" && b === "")) return { incomplete: "give the bucket" };
      const value = leaf.comparison === "between" ? [Number(a), Number(b)] : Number(a);
      return { filter: "random_bucket", comparison: leaf.comparison, value };
    }
    case "attribute": {
      if (!leaf.attribute) return { incomplete: "pick an attribute" };
      const out = { filter: "custom_attribute", attribute: leaf.attribute, comparison: leaf.comparison };
      if (NO_VALUE.has(leaf.comparison)) return out;
      const raw = String(leaf.value).trim();
      if (raw === "") return { incomplete: "give the value" };
      const ty = attrTypes[leaf.attribute];
      const num = (s) => (s.trim() !== "" && !Number.isNaN(Number(s)) ? Number(s) : s.trim());
      if (leaf.comparison === "is_any_of") out.value = raw.split(",").map((s) => s.trim()).filter(Boolean);
      else if (leaf.comparison === "between") out.value = raw.split(",").map(num);
      else if (/^within|^more_than/.test(leaf.comparison)) out.value = num(raw);
      else if (ty === "integer" || ty === "decimal") out.value = num(raw);
      else out.value = raw;
      return out;
    }
    case "segment":
      if (!leaf.value) return { incomplete: "pick a saved segment" };
      return { filter: "segment", comparison: leaf.comparison, value: leaf.value };
    default:
      return leaf.json;
  }
}

/** The builder's JSON shape of the model, or `{incomplete}`. */
function modelJson(model, attrTypes) {
  const groups = (list) => {
    const out = [];
    for (const g of list) {
      const filters = [];
      for (const leaf of g.filters) {
        const j = leafJson(leaf, attrTypes);
        if (j.incomplete) return { incomplete: j.incomplete };
        filters.push(j);
      }
      if (filters.length) out.push({ combinator: g.combinator, filters });
    }
    return out;
  };
  const g = groups(model.groups);
  if (g.incomplete) return g;
  const x = groups(model.exclusions);
  if (x.incomplete) return x;
  if (!g.length) return { incomplete: "add a filter" };
  const filter = { groups: g, groups_combinator: model.groups_combinator };
  if (x.length) filter.exclusions = x;
  return { filter };
}

/** A stored leaf (the engine's own form) as a builder leaf. */
function leafFromStored(node) {
  if (node.cohort) {
    return { kind: "cohort", partner: node.cohort.partner, cohort_id: node.cohort.cohort, includes: node.cohort.includes !== false };
  }
  if (node.bucket && typeof node.bucket === "object") {
    const [[k, v]] = Object.entries(node.bucket);
    const names = { lt: "less_than", le: "less_than_or_equal_to", gt: "greater_than", ge: "greater_than_or_equal_to", between: "between" };
    if (names[k]) {
      if (Array.isArray(v)) return { kind: "bucket", comparison: "between", value: String(v[0]), value2: String(v[1]) };
      return { kind: "bucket", comparison: names[k], value: String(v), value2: "" };
    }
  }
  if (node.segment && typeof node.segment === "object" && node.segment.id) {
    return { kind: "segment", comparison: node.segment.included === false ? "not_in" : "in", value: node.segment.id };
  }
  return { kind: "raw", json: node };
}

const isLeaf = (n) => !(n.and || n.or || n.not);

/** A stored filter as the builder's model (groups joined by the top
 *  combinator; `not` children of an `and` become exclusion groups). */
function modelFromStored(f) {
  const group = (n) => {
    if (n.and && n.and.every(isLeaf)) return { combinator: "and", filters: n.and.map(leafFromStored) };
    if (n.or && n.or.every(isLeaf)) return { combinator: "or", filters: n.or.map(leafFromStored) };
    if (isLeaf(n)) return { combinator: "and", filters: [leafFromStored(n)] };
    return { combinator: "and", filters: [{ kind: "raw", json: n }] };
  };
  const model = { groups: [], groups_combinator: "and", exclusions: [] };
  // Exclusions: the `not` children of a top-level `and`.
  let body = f;
  if (f.and) {
    const isNot = (c) => c.not && Object.keys(c).length === 1;
    const nots = f.and.filter(isNot);
    const rest = f.and.filter((c) => !isNot(c));
    if (nots.length && rest.length) {
      for (const n of nots) model.exclusions.push(group(n.not));
      body = rest.length === 1 ? rest[0] : { and: rest };
    }
  }
  // Groups: the children of an `and` or `or` that are not all leaves
  // (all leaves make one group).
  const top = body.and ? ["and", body.and] : body.or ? ["or", body.or] : null;
  if (!top || top[1].every(isLeaf)) {
    model.groups.push(group(body));
  } else {
    model.groups_combinator = top[0];
    for (const child of top[1]) model.groups.push(group(child));
  }
  if (!model.groups.length) model.groups.push(newGroup());
  return model;
}

// ----- the segment builder -----

const cohortCache = new Map();

async function partnerCohorts(partner) {
  if (!cohortCache.has(partner)) {
    cohortCache.set(partner, api("GET", wsPath(`/partners/${partner}/cohorts`)).catch((e) => {
      cohortCache.delete(partner);
      throw e;
    }));
  }
  return cohortCache.get(partner);
}

function builderView(segmentId) {
  const st = {
    model: { groups: [newGroup()], groups_combinator: "and", exclusions: [] },
    saved: null, // the open saved segment
    segments: [],
    attributes: [],
    attrTypes: {},
    estimate: false,
    seq: 0,
    timer: null,
    inflight: null,
  };
  cohortCache.clear();

  const editor = h("div", { id: "editor" });
  const countEl = h("div", { class: "count", id: "count", "aria-live": "polite", text: "–" });
  const countMeta = h("div", { class: "count-meta", id: "count-meta" });
  const estimateBox = h("input", { type: "checkbox", id: "estimate-toggle" });
  const bars = h("div", { class: "bars", id: "breakdown" });
  const members = h("ol", { class: "members", id: "members" });
  const explainOut = h("pre", { id: "explain", hidden: true });
  const savedList = h("ul", { class: "plain saved", id: "saved-list" });
  const nameInput = h("input", { id: "segment-name", autocomplete: "off" });
  const saveBtn = h("button", { type: "button", class: "primary", id: "save-segment", text: "Save" });
  const saveAsBtn = h("button", { type: "button", id: "save-as-new", text: "Save as new" });
  const deleteBtn = h("button", { type: "button", class: "danger", id: "delete-segment", text: "Delete" });
  const newBtn = h("button", { type: "button", id: "new-segment", text: "New segment" });
  const status = h("p", { class: "muted", id: "segment-status", "aria-live": "polite" });

  // --- refresh: debounced, stale answers dropped ---
  function scheduleRefresh() {
    clearTimeout(st.timer);
    st.timer = setTimeout(refresh, DEBOUNCE_MS);
  }

  async function refresh() {
    const seq = ++st.seq;
    if (st.inflight) st.inflight.abort();
    const ctl = new AbortController();
    st.inflight = ctl;
    const built = modelJson(st.model, st.attrTypes);
    if (built.incomplete) {
      countEl.textContent = "–";
      countMeta.textContent = `Incomplete: ${built.incomplete}.`;
      countEl.dataset.state = "incomplete";
      bars.replaceChildren();
      members.replaceChildren();
      return;
    }
    const started = performance.now();
    countEl.dataset.state = "loading";
    const body = { filter: built.filter };
    if (st.estimate) body.estimate = true;
    const count = api("POST", wsPath("/segments/count"), body, { signal: ctl.signal });
    const breakdown = api("POST", wsPath("/segments/breakdown"), body, { signal: ctl.signal });
    const page = api("POST", wsPath("/segments/members"), { filter: built.filter, limit: PREVIEW }, { signal: ctl.signal, raw: true });
    try {
      const c = await count;
      if (seq !== st.seq) return;
      const ms = performance.now() - started;
      if (c.estimate !== undefined && c.estimate !== null) {
        countEl.textContent = `≈ ${fmt(Math.round(c.estimate))}`;
        countMeta.textContent = `${Math.round((c.confidence || 0.95) * 100)}% interval ${fmt(Math.floor(c.low))} – ${fmt(Math.ceil(c.high))}` +
          `${c.exact ? " (exact)" : ""} · server ${fmt(c.took_us)} µs · refreshed in ${fmtMs(ms)}`;
        countEl.dataset.estimate = "true";
      } else {
        countEl.textContent = fmt(c.count);
        countMeta.textContent = `users · server ${fmt(c.took_us)} µs · refreshed in ${fmtMs(ms)}`;
        delete countEl.dataset.estimate;
      }
      countEl.dataset.count = c.count ?? Math.round(c.estimate);
      countEl.dataset.refreshMs = ms.toFixed(2);
      countEl.dataset.seq = String(seq);
      countEl.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError" || seq !== st.seq) return;
      countEl.textContent = "–";
      countEl.dataset.state = "error";
      countMeta.textContent = "";
      showError(e.message);
    }
    try {
      drawBreakdown(await breakdown);
    } catch (e) {
      if (e.name !== "AbortError" && seq === st.seq) bars.replaceChildren(h("p", { class: "muted", text: e.message }));
    }
    try {
      const text = await page;
      if (seq !== st.seq) return;
      const lines = text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
      members.replaceChildren(...lines.map((m) =>
        h("li", { text: m.external_id ? `${m.external_id} (user ${m.user_id})` : `user ${m.user_id} (anonymous)` })));
      if (!lines.length) members.replaceChildren(h("li", { class: "muted", text: "No members." }));
    } catch (e) {
      if (e.name !== "AbortError" && seq === st.seq) members.replaceChildren(h("li", { class: "muted", text: e.message }));
    }
  }

  function drawBreakdown(b) {
    const rows = b.rows || [];
    const max = Math.max(1, ...rows.map((r) => Number(r.count ?? r.estimate ?? 0)));
    bars.replaceChildren(h("div", { class: "legend" },
      h("span", {}, h("span", { class: "swatch own" }), "own count"),
      h("span", {}, h("span", { class: "swatch run" }), `running count (${b.combinator})`)));
    for (const r of rows) {
      const own = Number(r.count ?? r.estimate ?? 0);
      const run = Number(r.running ?? r.running_estimate ?? 0);
      const ownBar = h("span", { class: "bar-own" });
      const runBar = h("span", { class: "bar-run" });
      ownBar.style.width = `${(100 * own) / max}%`;
      runBar.style.width = `${(100 * run) / max}%`;
      bars.append(h("div", { class: "bar-row" },
        h("span", { class: "bar-label mono", text: r.filter }),
        h("span", { class: "bar-track", role: "img", "aria-label": `own ${fmt(own)}, running ${fmt(run)}` }, ownBar, runBar),
        h("span", { class: "muted", text: `${fmt(own)} own · ${fmt(run)} running` })));
    }
  }

  const changed = () => { scheduleRefresh(); };
  const redraw = () => { drawEditor(); scheduleRefresh(); };

  // --- the editor ---
  function leafEditor(leaf, list, i, path) {
    const kind = select([["cohort", "Partner cohort"], ["bucket", "Random bucket"], ["attribute", "Custom attribute"], ["segment", "Saved segment"]],
      leaf.kind === "raw" ? undefined : leaf.kind);
    kind.addEventListener("change", () => { list[i] = newLeaf(kind.value); redraw(); });
    const remove = h("button", { type: "button", class: "link", text: "Remove", "aria-label": "Remove this filter" });
    remove.addEventListener("click", () => { list.splice(i, 1); redraw(); });
    const parts = [];
    if (leaf.kind === "cohort") parts.push(...cohortEditor(leaf));
    else if (leaf.kind === "bucket") {
      const cmp = select(BUCKET_CMPS, leaf.comparison);
      const a = h("input", { type: "number", min: 0, max: 9999, value: leaf.value, class: "bucket-value" });
      const b = h("input", { type: "number", min: 0, max: 9999, value: leaf.value2 });
      cmp.addEventListener("change", () => { leaf.comparison = cmp.value; redraw(); });
      a.addEventListener("input", () => { leaf.value = a.value; changed(); });
      b.addEventListener("input", () => { leaf.value2 = b.value; changed(); });
      parts.push(field("Comparison", cmp), field(leaf.comparison === "between" ? "From bucket" : "Bucket (0–9999)", a));
      if (leaf.comparison === "between") parts.push(field("To bucket", b));
    } else if (leaf.kind === "attribute") {
      const names = st.attributes.map((a) => [a.name, `${a.name} (${a.type})`]);
      const attr = select([["", "Pick an attribute"], ...names], leaf.attribute);
      const ty = st.attrTypes[leaf.attribute] || "string";
      const cmp = select(ATTR_CMPS[ty] || ATTR_CMPS.string, leaf.comparison);
      if (cmp.value !== leaf.comparison) leaf.comparison = cmp.value;
      attr.addEventListener("change", () => { leaf.attribute = attr.value; leaf.comparison = (ATTR_CMPS[st.attrTypes[attr.value]] || ATTR_CMPS.string)[0]; redraw(); });
      cmp.addEventListener("change", () => { leaf.comparison = cmp.value; redraw(); });
      parts.push(field("Attribute", attr), field("Comparison", cmp));
      if (!NO_VALUE.has(leaf.comparison)) {
        const listId = nextId("values");
        const common = (st.attributes.find((a) => a.name === leaf.attribute) || {}).common_values || [];
        const v = h("input", { value: leaf.value, list: listId, autocomplete: "off" });
        v.addEventListener("input", () => { leaf.value = v.value; changed(); });
        const hint = leaf.comparison === "is_any_of" || leaf.comparison === "between" ? "Values (comma-separated)" : "Value";
        parts.push(field(hint, v), h("datalist", { id: listId }, common.map((c) => h("option", { value: c.value }))));
      }
    } else if (leaf.kind === "segment") {
      const cmp = select([["in", "in segment"], ["not_in", "not in segment"]], leaf.comparison);
      const others = st.segments.filter((s) => !st.saved || s.id !== st.saved.id);
      const seg = select([["", "Pick a saved segment"], ...others.map((s) => [s.id, s.name])], leaf.value);
      cmp.addEventListener("change", () => { leaf.comparison = cmp.value; changed(); });
      seg.addEventListener("change", () => { leaf.value = seg.value; changed(); });
      parts.push(field("Comparison", cmp), field("Segment", seg));
    } else {
      parts.push(h("span", {}, h("span", { class: "muted", text: "Kept as stored: " }), h("code", { text: JSON.stringify(leaf.json) })));
    }
    return h("div", { class: "leaf", "data-leaf": path }, field("Filter", kind), ...parts, remove);
  }

  function cohortEditor(leaf) {
    const partner = select(PARTNERS, leaf.partner, { class: "cohort-partner" });
    const includes = select([["true", "includes"], ["false", "does not include"]], String(leaf.includes));
    const search = h("input", { type: "search", class: "cohort-search", placeholder: "name or id", autocomplete: "off" });
    const pick = h("select", { size: 5, class: "cohort-list" });
    const chosen = h("span", { class: "muted cohort-chosen" });
    const wrap = h("span", { class: "cohort-pick row" });
    let list = [];
    const fill = () => {
      const q = search.value.trim().toLowerCase();
      const hits = [];
      for (const c of list) {
        if (!q || c.name.toLowerCase().includes(q) || c.cohort_id.toLowerCase().includes(q)) hits.push(c);
        if (hits.length >= 100) break;
      }
      pick.replaceChildren(...hits.map((c) => h("option", { value: c.cohort_id, text: `${c.name} · ${c.cohort_id} · ${fmt(c.size)}` })));
      if (leaf.cohort_id && hits.some((c) => c.cohort_id === leaf.cohort_id)) pick.value = leaf.cohort_id;
      const current = list.find((c) => c.cohort_id === leaf.cohort_id);
      chosen.textContent = leaf.cohort_id
        ? `Chosen: ${current ? current.name : "(not in the list)"} (${leaf.cohort_id})`
        : `${fmt(list.length)} cohorts; showing ${hits.length}`;
    };
    const load = async () => {
      list = [];
      fill();
      const got = await guarded(() => partnerCohorts(leaf.partner));
      list = got || [];
      fill();
    };
    partner.addEventListener("change", () => { leaf.partner = partner.value; leaf.cohort_id = ""; load(); changed(); });
    includes.addEventListener("change", () => { leaf.includes = includes.value === "true"; changed(); });
    search.addEventListener("input", fill);
    pick.addEventListener("change", () => { leaf.cohort_id = pick.value; fill(); changed(); });
    load();
    wrap.append(field("Search cohorts", search), field("Cohort", pick), chosen);
    return [field("Partner", partner), field("Test", includes), wrap];
  }

  function groupEditor(g, list, gi, exclusion) {
    const label = exclusion ? `Exclusion group ${gi + 1}` : `Group ${gi + 1}`;
    const comb = select([["and", "all of (AND)"], ["or", "any of (OR)"]], g.combinator, { "aria-label": `${label}: how its filters combine`, class: "group-combinator" });
    comb.addEventListener("change", () => { g.combinator = comb.value; redraw(); });
    const add = h("button", { type: "button", text: "Add filter", class: "add-filter" });
    add.addEventListener("click", () => { g.filters.push(newLeaf("cohort")); redraw(); });
    const remove = h("button", { type: "button", class: "link", text: "Remove group" });
    remove.addEventListener("click", () => { list.splice(gi, 1); redraw(); });
    const body = [];
    g.filters.forEach((leaf, i) => {
      if (i) body.push(h("div", { class: "joiner", text: g.combinator }));
      body.push(leafEditor(leaf, g.filters, i, `${exclusion ? "x" : "g"}${gi}-${i}`));
    });
    return h("section", { class: exclusion ? "group exclusion" : "group", "aria-label": label, "data-group": `${exclusion ? "x" : "g"}${gi}` },
      h("div", { class: "group-head" }, h("strong", { text: exclusion ? `${label} (users matching are excluded)` : label }), comb, remove),
      body, add);
  }

  function drawEditor() {
    const m = st.model;
    const gcomb = select([["and", "AND"], ["or", "OR"]], m.groups_combinator, { id: "groups-combinator" });
    gcomb.addEventListener("change", () => { m.groups_combinator = gcomb.value; redraw(); });
    const addGroup = h("button", { type: "button", id: "add-group", text: "Add group" });
    addGroup.addEventListener("click", () => { m.groups.push(newGroup()); redraw(); });
    const addExcl = h("button", { type: "button", id: "add-exclusion", text: "Add exclusion group" });
    addExcl.addEventListener("click", () => { m.exclusions.push(newGroup()); redraw(); });
    const items = [];
    m.groups.forEach((g, i) => {
      if (i) items.push(h("div", { class: "joiner", text: m.groups_combinator }));
      items.push(groupEditor(g, m.groups, i, false));
    });
    m.exclusions.forEach((g, i) => items.push(groupEditor(g, m.exclusions, i, true)));
    editor.replaceChildren(
      h("div", { class: "row" }, field("Groups combine with", gcomb), addGroup, addExcl),
      ...items);
  }

  // --- saved segments ---
  async function loadSegments() {
    const list = await guarded(() => api("GET", wsPath("/segments")));
    if (!list) return;
    st.segments = list;
    savedList.replaceChildren(...list.map((s) =>
      h("li", {}, h("a", { href: `#/builder/${encodeURIComponent(s.id)}`, text: s.name }), h("span", { class: "muted mono", text: s.id }))));
    if (!list.length) savedList.replaceChildren(h("li", { class: "muted", text: "No saved segments yet." }));
  }

  function showSaved() {
    nameInput.value = st.saved ? st.saved.name : "";
    deleteBtn.disabled = !st.saved;
    saveAsBtn.hidden = !st.saved;
    status.textContent = st.saved ? `Saved segment ${st.saved.id}, last changed ${fmtTime(st.saved.updated_at)}` : "Not saved yet.";
  }

  async function save(asNew) {
    clearErrors();
    const built = modelJson(st.model, st.attrTypes);
    if (built.incomplete) { showError(`The filter is incomplete: ${built.incomplete}.`); return; }
    const name = nameInput.value.trim();
    if (!name) { showError("Give the segment a name."); nameInput.focus(); return; }
    const seg = await guarded(() => (st.saved && !asNew
      ? api("PUT", wsPath(`/segments/${encodeURIComponent(st.saved.id)}`), { name, filter: built.filter })
      : api("POST", wsPath("/segments"), { name, filter: built.filter })));
    if (!seg) return;
    st.saved = seg;
    const target = `#/builder/${encodeURIComponent(seg.id)}`;
    if (location.hash !== target) history.replaceState(null, "", target);
    showSaved();
    await loadSegments();
  }

  saveBtn.addEventListener("click", () => save(false));
  saveAsBtn.addEventListener("click", () => save(true));
  newBtn.addEventListener("click", () => { location.hash = "#/builder"; if (!st.saved) render(); });
  deleteBtn.addEventListener("click", async () => {
    if (!st.saved) return;
    if (!(await confirmDialog(`Delete the saved segment "${st.saved.name}"?`, "Delete"))) return;
    const ok = await guarded(() => api("DELETE", wsPath(`/segments/${encodeURIComponent(st.saved.id)}`)));
    if (ok) location.hash = "#/builder";
  });
  estimateBox.addEventListener("change", () => { st.estimate = estimateBox.checked; refresh(); });
  const explainBtn = h("button", { type: "button", id: "explain-button", text: "Explain the plan" });
  explainBtn.addEventListener("click", async () => {
    const built = modelJson(st.model, st.attrTypes);
    if (built.incomplete) { showError(`The filter is incomplete: ${built.incomplete}.`); return; }
    const a = await guarded(() => api("POST", wsPath("/segments/count?explain=true"), { filter: built.filter }));
    if (!a) return;
    explainOut.hidden = false;
    explainOut.textContent = JSON.stringify(a.explain, null, 2);
  });

  (async () => {
    const [attrs] = await Promise.all([guarded(() => api("GET", wsPath("/attributes"))), loadSegments()]);
    st.attributes = attrs || [];
    for (const a of st.attributes) st.attrTypes[a.name] = a.type;
    if (segmentId) {
      const seg = await guarded(() => api("GET", wsPath(`/segments/${encodeURIComponent(segmentId)}`)));
      if (seg) {
        st.saved = seg;
        st.model = modelFromStored(seg.filter);
      }
    }
    showSaved();
    drawEditor();
    refresh();
  })();
  teardown = () => { clearTimeout(st.timer); if (st.inflight) st.inflight.abort(); };

  return h("div", { class: "layout" },
    h("div", {},
      h("h1", { text: "Segment builder" }),
      h("section", { class: "card", "aria-label": "Segment" },
        h("div", { class: "row" }, field("Segment name", nameInput), saveBtn, saveAsBtn, deleteBtn, newBtn),
        status),
      h("section", { class: "card", "aria-label": "Filters" }, editor)),
    h("aside", {},
      h("section", { class: "card", "aria-label": "Audience size" },
        h("h2", { text: "Audience" }), countEl, countMeta,
        h("div", { class: "row" }, h("label", { class: "inline" }, estimateBox, "Estimate (with its interval)"), explainBtn),
        explainOut),
      h("section", { class: "card", "aria-label": "Breakdown" }, h("h2", { text: "Breakdown" }), bars),
      h("section", { class: "card", "aria-label": "Member preview" }, h("h2", { text: `First ${PREVIEW} members` }), members),
      h("section", { class: "card", "aria-label": "Saved segments" }, h("h2", { text: "Saved segments" }), savedList)));
}

// ----- dialogs -----

function confirmDialog(message, action) {
  return new Promise((resolve) => {
    const yes = h("button", { type: "button", class: "danger", id: "confirm-yes", text: action });
    const no = h("button", { type: "button", id: "confirm-no", text: "Cancel" });
    const d = h("dialog", { "aria-label": "Confirm" }, h("p", { text: message }), h("div", { class: "row" }, no, yes));
    const done = (v) => { d.close(); d.remove(); resolve(v); };
    yes.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    d.addEventListener("cancel", () => done(false));
    document.body.append(d);
    d.showModal();
    no.focus();
  });
}

function secretDialog(title, secret, note) {
  const out = h("code", { class: "secret", id: "new-secret", text: secret });
  const copy = h("button", { type: "button", id: "copy-secret", text: "Copy" });
  const close = h("button", { type: "button", class: "primary", id: "close-secret", text: "Done" });
  const copied = h("span", { class: "muted", "aria-live": "polite" });
  const d = h("dialog", { "aria-label": title }, h("h2", { text: title }), h("p", { text: note }), out,
    h("div", { class: "row" }, copy, close, copied));
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      copied.textContent = "Copied.";
    } catch (_) {
      getSelection().selectAllChildren(out);
      copied.textContent = "Selected: press Ctrl+C to copy.";
    }
  });
  close.addEventListener("click", () => { d.close(); d.remove(); });
  d.addEventListener("close", () => d.remove());
  document.body.append(d);
  d.showModal();
  copy.focus();
}

// ----- charts (SVG) -----

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

/** A line chart of `[time, value]` points. */
function lineChart(points, label) {
  const W = 360, H = 120, P = 28;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  if (!points.length) return svg;
  const xs = points.map((p) => Date.parse(p[0]));
  const ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = Math.max(1, ...ys);
  const X = (x) => P + (x1 === x0 ? (W - 2 * P) / 2 : ((x - x0) / (x1 - x0)) * (W - 2 * P));
  const Y = (y) => H - P + 8 - (y / y1) * (H - P - 8);
  const d = points.map((p, i) => `${i ? "L" : "M"}${X(xs[i]).toFixed(1)},${Y(ys[i]).toFixed(1)}`).join(" ");
  svg.append(s("line", { x1: P, y1: H - P + 8, x2: W - P, y2: H - P + 8, stroke: "#aeb6c3" }));
  svg.append(s("path", { class: "line", d }));
  for (let i = 0; i < points.length; i++) svg.append(s("circle", { cx: X(xs[i]), cy: Y(ys[i]), r: 2.5, fill: "#2450c7" }, s("title", {}, document.createTextNode(`${fmtTime(points[i][0])}: ${fmt(ys[i])}`))));
  svg.append(s("text", { x: 2, y: 12 }, document.createTextNode(fmt(y1))));
  svg.append(s("text", { x: P, y: H - 2 }, document.createTextNode(fmtTime(points[0][0]).slice(0, 10))));
  svg.append(s("text", { x: W - P, y: H - 2, "text-anchor": "end" }, document.createTextNode(fmtTime(points[points.length - 1][0]).slice(0, 10))));
  return svg;
}

/** A bar chart of `[label, value]`. */
function barChart(rows, label) {
  const W = 360, H = 130, P = 24;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const max = Math.max(1, ...rows.map((r) => r[1]));
  const bw = (W - P) / Math.max(rows.length, 1);
  rows.forEach(([l, v], i) => {
    const hgt = (v / max) * (H - 2 * P);
    svg.append(s("rect", { class: "b", x: P + i * bw + 2, y: H - P - hgt, width: Math.max(2, bw - 4), height: hgt },
      s("title", {}, document.createTextNode(`${l}: ${fmt(v)}`))));
  });
  svg.append(s("text", { x: 2, y: 12 }, document.createTextNode(fmt(max))));
  if (rows.length) {
    svg.append(s("text", { x: P, y: H - 6 }, document.createTextNode(rows[0][0])));
    svg.append(s("text", { x: W - 2, y: H - 6, "text-anchor": "end" }, document.createTextNode(rows[rows.length - 1][0])));
  }
  return svg;
}

// ----- cohorts and sync health -----

function cohortsView() {
  const st = { all: [], sort: "last_sync", dir: -1, partner: "", q: "", open: null };
  const partner = select([["", "All partners"], ...PARTNERS], "", { id: "cohorts-partner" });
  const search = h("input", { type: "search", id: "cohorts-search", placeholder: "name, id or unmatched identifier", autocomplete: "off" });
  const tbody = h("tbody", {});
  const info = h("p", { class: "muted", "aria-live": "polite" });
  const detail = h("section", { class: "card", id: "cohort-detail", hidden: true });
  const points = h("div", { id: "data-points" });
  const cols = [
    ["partner", "Partner"], ["name", "Cohort"], ["size", "Size", true], ["last_sync", "Last sync"],
    ["last_added", "Last adds", true], ["last_removed", "Last removes", true], ["matched_total", "Matched", true],
    ["unmatched_total", "Unmatched", true], ["refused_total", "Refused", true],
  ];
  const headRow = h("tr", {});
  const draw = () => {
    headRow.replaceChildren(...cols.map(([k, t, num]) => {
      const b = h("button", { type: "button", text: t + (st.sort === k ? (st.dir > 0 ? " ▲" : " ▼") : "") });
      b.addEventListener("click", () => { st.dir = st.sort === k ? -st.dir : (num || k === "last_sync" ? -1 : 1); st.sort = k; draw(); });
      return h("th", { class: num ? "num" : undefined, scope: "col", "aria-sort": st.sort === k ? (st.dir > 0 ? "ascending" : "descending") : undefined }, b);
    }), h("th", { scope: "col", text: "Recent unmatched" }));
    const q = st.q.toLowerCase();
    const rows = st.all.filter((c) => (!st.partner || c.partner === st.partner) &&
      (!q || c.name.toLowerCase().includes(q) || c.cohort_id.toLowerCase().includes(q) ||
        c.recent_unmatched.some((u) => u.toLowerCase().includes(q))));
    rows.sort((a, b) => {
      const x = a[st.sort] ?? "", y = b[st.sort] ?? "";
      return (x < y ? -1 : x > y ? 1 : 0) * st.dir;
    });
    const shown = rows.slice(0, 500);
    info.textContent = `${fmt(rows.length)} of ${fmt(st.all.length)} cohorts${rows.length > shown.length ? `; showing the first ${shown.length}` : ""}.`;
    tbody.replaceChildren(...shown.map((c) => {
      const open = h("button", { type: "button", class: "link", text: c.name, "aria-label": `${c.name}: details and size over time` });
      open.addEventListener("click", () => showDetail(c));
      const unmatched = c.recent_unmatched.length
        ? h("span", { class: "mono", text: c.recent_unmatched.slice(0, 3).join(", ") + (c.recent_unmatched.length > 3 ? ` +${c.recent_unmatched.length - 3}` : "") })
        : h("span", { class: "muted", text: "none" });
      return h("tr", { "data-cohort": `${c.partner}/${c.cohort_id}` },
        h("td", { text: c.partner }),
        h("td", {}, open, h("div", { class: "muted mono", text: c.cohort_id })),
        h("td", { class: "num", text: fmt(c.size) }),
        h("td", { text: fmtTime(c.last_sync) }),
        h("td", { class: "num", text: fmt(c.last_added) }),
        h("td", { class: "num", text: fmt(c.last_removed) }),
        h("td", { class: "num", text: fmt(c.matched_total) }),
        h("td", { class: "num", text: fmt(c.unmatched_total) }),
        h("td", { class: "num", text: fmt(c.refused_total) }),
        h("td", {}, unmatched));
    }));
  };
  function showDetail(c) {
    detail.hidden = false;
    const hist = (c.size_history || []).map((p) => [p.at, p.size]);
    detail.replaceChildren(
      h("h2", { text: `${c.name} (${c.partner}/${c.cohort_id})` }),
      h("p", { class: "muted", text: `${fmt(c.size)} members · created ${fmtTime(c.created_at)} · last sync ${fmtTime(c.last_sync)}` }),
      h("h3", { text: "Size at each sync" }),
      hist.length ? lineChart(hist, `Size of ${c.name} at each sync`) : h("p", { class: "muted", text: "No sync recorded yet." }),
      h("h3", { text: "Recent unmatched identifiers" }),
      c.recent_unmatched.length
        ? h("ul", { id: "unmatched-list" }, c.recent_unmatched.map((u) => h("li", { class: "mono", text: u })))
        : h("p", { class: "muted", text: "None." }));
    detail.scrollIntoView({ block: "nearest" });
  }
  partner.addEventListener("change", () => { st.partner = partner.value; draw(); });
  search.addEventListener("input", () => { st.q = search.value.trim(); draw(); });
  (async () => {
    const [stats, dp] = await Promise.all([
      guarded(() => api("GET", adminPath("/cohorts"))),
      guarded(() => api("GET", adminPath("/data_points"))),
    ]);
    st.all = stats || [];
    draw();
    const byPartner = new Map();
    for (const r of dp || []) {
      if (!byPartner.has(r.partner)) byPartner.set(r.partner, []);
      byPartner.get(r.partner).push([r.day, r.data_points]);
    }
    points.replaceChildren(...[...byPartner].map(([p, rows]) => h("div", { class: "card" },
      h("h3", { text: `${p}: ${fmt(rows.reduce((a, r) => a + r[1], 0))} data points` }),
      barChart(rows.slice(-60), `Billable data points per day for ${p}`))));
    if (!byPartner.size) points.replaceChildren(h("p", { class: "muted", text: "No billable data points yet." }));
  })();
  draw();
  return h("div", {},
    h("h1", { text: "Cohorts and sync health" }),
    h("section", { class: "card" },
      h("div", { class: "row" }, field("Partner", partner), field("Search", search)), info,
      h("div", { class: "table-wrap" }, h("table", { id: "cohorts-table" }, h("thead", {}, headRow), tbody))),
    detail,
    h("section", { "aria-label": "Billable data points" }, h("h2", { text: "Billable data points per day" }), points));
}

// ----- partner connections and data import keys -----

function partnersView() {
  const partnersBody = h("tbody", {});
  const keysBody = h("tbody", {});
  async function load() {
    const [partners, keys] = await Promise.all([
      guarded(() => api("GET", adminPath("/partners"))),
      guarded(() => api("GET", adminPath("/keys"))),
    ]);
    partnersBody.replaceChildren(...(partners || []).map((p) => {
      const gen = h("button", { type: "button", class: "primary", text: "Generate data import key", "data-partner": p.partner });
      gen.addEventListener("click", async () => {
        const k = await guarded(() => api("POST", adminPath(`/partners/${p.partner}/keys`)));
        if (!k) return;
        secretDialog(`New data import key for ${p.partner}`, k.key,
          `Give it to ${p.partner} as the client secret. It is shown this once; segq keeps only its digest (prefix ${k.prefix || ""}).`);
        load();
      });
      const enable = h("button", { type: "button", text: "Enable", "data-enable": p.partner, disabled: p.enabled });
      enable.addEventListener("click", async () => {
        if (await guarded(() => api("POST", adminPath(`/partners/${p.partner}/enable`))) !== undefined) load();
      });
      const keyText = h("code", { class: "mono", text: p.partner_api_key });
      const copy = h("button", { type: "button", class: "link", text: "Copy", "aria-label": `Copy the ${p.partner} partner API key` });
      copy.addEventListener("click", () => navigator.clipboard.writeText(p.partner_api_key).catch(() => getSelection().selectAllChildren(keyText)));
      return h("tr", { "data-partner": p.partner },
        h("td", { text: p.partner }),
        h("td", {}, h("span", { class: p.enabled ? "tag" : "tag off", text: p.enabled ? "enabled" : "not enabled" })),
        h("td", {}, keyText, " ", copy),
        h("td", { class: "num", text: fmt(p.valid_keys) }),
        h("td", {}, h("div", { class: "row" }, gen, enable)));
    }));
    keysBody.replaceChildren(...(keys || []).map((k) => {
      const inv = h("button", { type: "button", class: "danger", text: "Invalidate", "data-key": k.id, disabled: !!k.invalidated_at });
      inv.addEventListener("click", async () => {
        if (!(await confirmDialog(`Invalidate ${k.partner}'s data import key ${k.prefix}…? The partner's next request with it is refused.`, "Invalidate"))) return;
        if (await guarded(() => api("DELETE", adminPath(`/keys/${encodeURIComponent(k.id)}`))) !== undefined) load();
      });
      return h("tr", { "data-key-row": k.id },
        h("td", { text: k.partner }),
        h("td", { class: "mono", text: `${k.prefix}…` }),
        h("td", { text: fmtTime(k.created_at) }),
        h("td", { text: k.last_used ? fmtTime(k.last_used) : "never" }),
        h("td", { text: k.invalidated_at ? `invalidated ${fmtTime(k.invalidated_at)}` : "valid" }),
        h("td", {}, inv));
    }));
    if (keys && !keys.length) keysBody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No data import keys yet." })));
  }
  load();
  return h("div", {},
    h("h1", { text: "Partners and data import keys" }),
    h("section", { class: "card", "aria-label": "Partners" },
      h("h2", { text: "Technology partners" }),
      h("p", { class: "muted", text: "Give a partner its partner API key and a data import key (its client secret) to let it sync cohorts into this workspace." }),
      h("div", { class: "table-wrap" }, h("table", { id: "partners-table" },
        h("thead", {}, h("tr", {}, ["Partner", "Status", "Partner API key", "Valid keys", "Actions"].map((t) => h("th", { scope: "col", text: t })))),
        partnersBody))),
    h("section", { class: "card", "aria-label": "Data import keys" },
      h("h2", { text: "Data import keys" }),
      h("div", { class: "table-wrap" }, h("table", { id: "keys-table" },
        h("thead", {}, h("tr", {}, ["Partner", "Prefix", "Created", "Last used", "State", ""].map((t) => h("th", { scope: "col", text: t })))),
        keysBody))));
}

// ----- start -----

document.getElementById("signout").addEventListener("click", () => {
  session.clear();
  clearErrors();
  location.hash = "";
  render();
});
window.addEventListener("hashchange", () => { clearErrors(); render(); });
render();
