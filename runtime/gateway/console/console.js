// Lambent console: reads the gateway's JSON APIs every few seconds and renders them. No framework, no
// build step. Every value from the server is put into the page with textContent or as an attribute
// value, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 4000;
  const SECRET_KEY = "lambent.console.secret";
  const SELECTED_KEY = "lambent.console.function";
  const DLQ_LIMIT = 50;
  const LOG_RETRY_MS = [100, 150, 250, 400, 600, 800, 1000, 1500];
  const FOLLOW_MS = [100, 150, 250, 400, 600, 800, 1000];    // GET /invocations/{id} after these, then every second
  const FINAL = new Set(["succeeded", "dead-lettered"]);
  const LABEL_GAP = 6;                                        // chart units between two time labels
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    functions: [],
    selected: null,
    dlqOffset: 0,
    dlqTotal: 0,
    expanded: new Set(),       // dead letters whose JSON is shown
    qualifiers: new Map(),     // function -> {versions: [numbers], aliases: {alias: version}} (GET /functions/{name})
    rendered: new Map(),       // section -> JSON of what it shows now (skip re-rendering the same data)
    errors: new Map(),         // "METHOD path" -> {status, code, message, count, at}
    invocations: 0,            // invocations started from the form; the newest one owns its output
    polling: false,
    pollAgain: false,
    timer: null,
  };

  const $ = (id) => document.getElementById(id);

  // -- small DOM helpers -------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    setProps(node, props);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    append(node, children);
    return node;
  }

  function setProps(node, props) {
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "testid") node.dataset.testid = value;
      else if (name === "data") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && typeof value !== "string") node[name] = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function replaceChildren(node, ...children) {
    node.replaceChildren();
    append(node, children);
  }

  /** Re-render `node` only when `data` differs from what it shows; keeps open <details> open. */
  function renderOnce(key, data, node, render) {
    const json = JSON.stringify(data);
    if (state.rendered.get(key) === json) return;
    state.rendered.set(key, json);
    const open = new Set([...node.querySelectorAll("details[data-key][open]")].map((d) => d.dataset.key));
    render();
    for (const details of node.querySelectorAll("details[data-key]")) {
      if (open.has(details.dataset.key)) details.open = true;
    }
  }

  function pretty(value) {
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function formatTime(iso, { seconds = true, date = true } = {}) {
    if (!iso) return "—";
    const moment = new Date(iso);
    if (Number.isNaN(moment.getTime())) return String(iso);
    const day = `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}`;
    const clock = `${pad(moment.getHours())}:${pad(moment.getMinutes())}` + (seconds ? `:${pad(moment.getSeconds())}` : "");
    return date ? `${day} ${clock}` : clock;
  }

  function timeCell(iso) {
    return el("td", { text: formatTime(iso), title: iso || "" });
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms >= 1000) return `${+(ms / 1000).toFixed(ms >= 10000 ? 0 : 1)} s`;
    return `${+ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function enc(name) {
    return encodeURIComponent(name);
  }

  /** An alias's target as the catalog gives it: a published version's number, 0 for $LATEST. */
  function versionName(version) {
    return Number(version) === 0 ? "$LATEST" : String(version);
  }

  function sleep(ms) {
    return new Promise((resolve) => window.setTimeout(resolve, ms));
  }

  // -- the key secret (sessionStorage) ------------------------------------------------------------

  function readSecret() {
    try {
      return sessionStorage.getItem(SECRET_KEY) || "";
    } catch (exc) {
      return "";
    }
  }

  function writeSecret(secret) {
    try {
      if (secret) sessionStorage.setItem(SECRET_KEY, secret);
      else sessionStorage.removeItem(SECRET_KEY);
    } catch (exc) {
      reportError("sessionStorage", "", 0, "", `the secret cannot be kept: ${exc.message}`);
    }
    showSecretState();
  }

  function takeSecretFromUrl() {
    const url = new URL(window.location.href);
    if (!url.searchParams.has("secret")) return;
    writeSecret(url.searchParams.get("secret") || "");
    url.searchParams.delete("secret");          // out of the address bar and the history
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  function showSecretState() {
    $("secret-state").textContent = readSecret() ? "a secret is set (this tab only)" : "no secret: invocations only";
  }

  // -- API calls and their errors -----------------------------------------------------------------

  /** fetch with the secret; never throws for an HTTP status, only for a network failure. */
  async function request(method, path, body, extraHeaders) {
    const headers = { Accept: "application/json", ...extraHeaders };
    const secret = readSecret();
    if (secret) headers.Authorization = `Bearer ${secret}`;
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (exc) {
      reportError(method, path, 0, "NetworkError", `the gateway did not answer (${exc.message})`);
      throw exc;
    }
    const text = await response.text();
    let data = text;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (exc) {
      // not JSON: keep the text
    }
    return { status: response.status, ok: response.ok, statusText: response.statusText, data, text,
             headers: response.headers };
  }

  class ApiError extends Error {
    constructor(answer) {
      super(describe(answer));
      this.answer = answer;
    }
  }

  function describe(answer) {
    const data = answer.data;
    if (data && typeof data === "object") return data.message || data.errorMessage || JSON.stringify(data);
    return String(data || answer.statusText || "");
  }

  /** A JSON API call: the parsed body, or ApiError (shown in the page) for any status but 2xx. */
  async function api(method, path, body) {
    const answer = await request(method, path, body);
    const key = errorKey(method, path);
    if (!answer.ok) {
      const code = answer.data && typeof answer.data === "object" ? answer.data.error || answer.data.errorType : "";
      reportError(method, path, answer.status, code || "", describe(answer));
      throw new ApiError(answer);
    }
    if (state.errors.delete(key)) renderErrors();     // the same call works again: its error is over
    return answer.data;
  }

  function errorKey(method, path) {
    return `${method} ${path.split("?")[0]}`;
  }

  function reportError(method, path, status, code, message) {
    const key = path ? errorKey(method, path) : `${method} ${message}`;
    const known = state.errors.get(key);
    state.errors.set(key, { method, path, status, code, message, count: known ? known.count + 1 : 1, at: new Date() });
    renderErrors();
  }

  function renderErrors() {
    const list = $("errors-list");
    const items = [...state.errors.entries()].sort((a, b) => b[1].at - a[1].at).map(([key, error]) => el("li",
      { testid: "error-item", data: { key } },
      el("span", { class: "muted", text: formatTime(error.at.toISOString(), { date: false }) }), " ",
      el("code", { text: error.path ? `${error.method} ${error.path}` : error.method }), " ",
      error.status ? el("span", { class: "badge bad", text: String(error.status) }) : null, " ",
      error.code ? el("strong", { text: error.code }) : null, " ",
      el("span", { testid: "error-message", text: error.message }),
      error.count > 1 ? el("span", { class: "muted", text: ` (×${error.count})` }) : null, " ",
      el("button", { type: "button", class: "small", text: "Dismiss",
                     onclick: () => { state.errors.delete(key); renderErrors(); } })));
    replaceChildren(list, items);
    $("errors").hidden = items.length === 0;
  }

  window.addEventListener("error", (event) => {
    reportError("page", "", 0, "ScriptError", String(event.message || event.error));
  });
  window.addEventListener("unhandledrejection", (event) => {
    if (!(event.reason instanceof ApiError)) reportError("page", "", 0, "ScriptError", String(event.reason));
  });

  // -- polling ------------------------------------------------------------------------------------

  async function poll() {
    if (state.polling) {
      state.pollAgain = true;
      return;
    }
    state.polling = true;
    window.clearTimeout(state.timer);
    try {
      const results = await Promise.allSettled([loadHealth(), loadFunctions(), loadSchedules(), loadSelected()]);
      const failed = results.some((r) => r.status === "rejected" || r.value === false);
      $("live-dot").className = failed ? "dot bad" : "dot ok";
      $("live-text").textContent = `${failed ? "errors, " : ""}updated ${formatTime(new Date().toISOString(), { date: false })}`;
      document.body.dataset.polled = String(Number(document.body.dataset.polled || 0) + 1);
    } finally {
      state.polling = false;
      if (state.pollAgain) {
        state.pollAgain = false;
        poll();
      } else {
        state.timer = window.setTimeout(poll, POLL_MS);
      }
    }
  }

  async function loadSelected() {
    const name = state.selected;
    if (!name) return true;
    const results = await Promise.allSettled([loadDetail(name), loadStats(name), loadDlq(name), loadStreams(name)]);
    return results.every((r) => r.status === "fulfilled");
  }

  // -- health: the isolation in force on the node that serves this page ------------------------------

  async function loadHealth() {
    const answer = await request("GET", "/healthz");
    const isolation = answer.data && answer.data.isolation;
    if (!isolation) return answer.ok;
    const jailed = isolation.mode === "jail";
    const text = jailed ? `jailed (cgroup v${isolation.cgroups})` : "NO JAIL";
    replaceChildren($("isolation"), [el("span", { class: `badge ${jailed ? "ok" : "bad"}`, testid: "isolation-mode",
                                                  text })]);
    $("isolation").title = jailed ? "Functions run jailed: namespaces, cgroup limits, seccomp, their own user"
      : `Functions run without a jail: ${isolation.reason || "sandbox.isolation is none"}`;
    return answer.ok;
  }

  // -- functions ----------------------------------------------------------------------------------

  async function loadFunctions() {
    const data = await api("GET", "/functions");
    const functions = data.functions || [];
    state.functions = functions;
    const names = functions.map((f) => f.name);
    if (!state.selected || !names.includes(state.selected)) {
      const remembered = initialSelection();
      const wanted = names.includes(remembered) ? remembered : names[0] || null;
      if (wanted !== state.selected) select(wanted, { poll: false });
      if (wanted) loadSelected();
    }
    await loadQualifiers(names);
    renderOnce("functions", { functions, selected: state.selected }, $("functions-body"),
               () => renderFunctions(functions));
    fillInvokeChoices(names);
    $("functions-count").textContent = `(${functions.length})`;
    return true;
  }

  /** The versions and aliases the invoke form offers: the selected function's come with its details
   * (loadDetail), another function's in the form are read here. */
  async function loadQualifiers(names) {
    for (const name of [...state.qualifiers.keys()]) {
      if (!names.includes(name)) state.qualifiers.delete(name);
    }
    const invoked = $("invoke-function").value;
    if (invoked && invoked !== state.selected && names.includes(invoked)) await readQualifiers(invoked);
  }

  async function readQualifiers(name) {
    let answer;
    try {
      answer = await request("GET", `/functions/${enc(name)}`);
    } catch (exc) {
      return;                      // reported by request(); the last known ones stay
    }
    if (answer.ok) rememberQualifiers(answer.data);    // 404: deleted meanwhile, the next poll drops it
  }

  function rememberQualifiers(fn) {
    state.qualifiers.set(fn.name, { versions: (fn.versions || []).map((v) => v.version), aliases: fn.aliases || {} });
    if ($("invoke-function").value === fn.name) fillQualifierChoices();
  }

  function aliasBadges(aliases) {
    return Object.entries(aliases).sort(([a], [b]) => a.localeCompare(b))
      .map(([alias, version]) => el("span", { class: "badge", text: `${alias} → ${versionName(version)}` }));
  }

  function initialSelection() {
    const fromHash = new URLSearchParams(window.location.hash.slice(1)).get("fn");
    if (fromHash) return fromHash;
    try {
      return sessionStorage.getItem(SELECTED_KEY);
    } catch (exc) {
      return null;
    }
  }

  function renderFunctions(functions) {
    const rows = functions.map((fn) => el("tr", {
      class: fn.name === state.selected ? "selected clickable" : "clickable",
      testid: "function-row", data: { function: fn.name }, tabindex: "0",
      onclick: () => select(fn.name),
      onkeydown: (event) => { if (event.key === "Enter") select(fn.name); },
    },
      el("td", {}, el("button", { type: "button", class: "link mono", text: fn.name, testid: `select-${fn.name}` })),
      el("td", { text: fn.version === null || fn.version === undefined ? "$LATEST only" : String(fn.version) }),
      el("td", { testid: "function-aliases" }, aliasBadges(fn.aliases || {})),
      el("td", { class: "mono", text: fn.handler }),
      el("td", { class: "desc", text: fn.description || "" }),
      el("td", { text: `${fn.timeout} s` }),
      el("td", { text: `${fn.memory_mb} MB` }),
      el("td", { text: fn.reserved_concurrency === null || fn.reserved_concurrency === undefined ? "—" : String(fn.reserved_concurrency) }),
      el("td", {}, (fn.triggers || []).map((t) => el("span", { class: "badge", text: t }))),
      el("td", { class: "mono", text: (fn.code_hash || "").slice(0, 12), title: fn.code_hash || "" }),
      timeCell(fn.created)));
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "11", class: "muted", text: "No functions deployed." })));
    replaceChildren($("functions-body"), rows);
  }

  function select(name, { poll: refresh = true } = {}) {
    if (name === state.selected) return;
    state.selected = name;
    state.dlqOffset = 0;
    state.expanded.clear();
    for (const key of ["detail", "stats", "dlq", "streams", "functions", "schedules"]) state.rendered.delete(key);
    try {
      if (name) sessionStorage.setItem(SELECTED_KEY, name);
    } catch (exc) {
      // not kept: fine
    }
    if (name) window.history.replaceState(null, "", `${window.location.pathname}${window.location.search}#fn=${enc(name)}`);
    for (const row of document.querySelectorAll("#functions-body tr[data-function]")) {
      row.classList.toggle("selected", row.dataset.function === name);
    }
    // Nothing of the previous function stays on screen while the new one loads.
    const loading = () => el("p", { class: "muted", text: name ? "loading…" : "No function selected." });
    replaceChildren($("detail-body"), loading());
    replaceChildren($("chart"), loading());
    replaceChildren($("streams-body"), loading());
    replaceChildren($("dlq-body"), el("tr", {}, el("td", { colspan: "7" }, loading())));
    $("detail-state").hidden = true;
    $("stats-summary").textContent = "";
    $("dlq-total").textContent = "";
    $("dlq-message").textContent = "";
    $("detail-name").textContent = name || "—";
    $("dlq-function").textContent = name || "";
    $("streams-function").textContent = name || "";
    if (name && $("invoke-function").querySelector(`option[value="${CSS.escape(name)}"]`)) {
      $("invoke-function").value = name;
      fillQualifierChoices();
    }
    if (refresh) poll();
  }

  // -- one function -------------------------------------------------------------------------------

  async function loadDetail(name) {
    const data = await api("GET", `/functions/${enc(name)}`);
    rememberQualifiers(data);
    if (name !== state.selected) return;
    const badge = $("detail-state");
    badge.hidden = false;
    badge.textContent = data.state;
    badge.className = data.state === "Active" ? "badge ok" : "badge bad";
    renderOnce("detail", data, $("detail-body"), () => renderDetail(data));
  }

  function renderDetail(fn) {
    const aliases = Object.entries(fn.aliases || {});
    const facts = [
      ["ARN", el("span", { class: "mono", text: fn.arn || "" })],
      ["Description", fn.description || "—"],
      ["Handler", el("span", { class: "mono", text: fn.handler })],
      ["Newest published version", fn.version === null || fn.version === undefined ? "none ($LATEST only)" : String(fn.version)],
      ["Timeout", `${fn.timeout} s`],
      ["Memory", `${fn.memory_mb} MB`],
      ["Reserved concurrency", fn.reserved_concurrency ?? "—"],
      ["Triggers", (fn.triggers || []).length ? fn.triggers.join(", ") : "—"],
      ["Aliases", aliases.length ? aliasBadges(fn.aliases) : "—"],
    ];
    const versions = (fn.versions || []).slice().reverse().map((v) => el("tr", { testid: "version-row" },
      el("td", { text: String(v.version) }),
      el("td", { class: "mono", text: (v.code_hash || "").slice(0, 12), title: v.code_hash || "" }),
      el("td", { class: "mono", text: v.handler }),
      el("td", { text: `${v.timeout} s / ${v.memory_mb} MB` }),
      timeCell(v.created),
      el("td", {}, aliases.filter(([, version]) => String(version) === String(v.version))
        .map(([alias]) => el("span", { class: "badge", text: alias })))));
    replaceChildren($("detail-body"),
      el("dl", { class: "facts" }, facts.map(([term, value]) => [el("dt", { text: term }), el("dd", {}, value)])),
      el("h3", { text: `Versions (${(fn.versions || []).length})` }),
      el("div", { class: "scroll short" }, el("table", { testid: "versions-table" },
        el("thead", {}, el("tr", {}, ["Version", "Code", "Handler", "Limits", "Created", "Aliases"].map((h) => el("th", { text: h })))),
        el("tbody", {}, versions))),
      el("details", { data: { key: "configuration" } }, el("summary", { text: "Configuration" }),
        el("pre", { testid: "detail-configuration", text: pretty(fn.configuration) })),
      fn.node ? el("details", { data: { key: "node" } }, el("summary", { text: "This gateway's executor state" }),
        el("pre", { text: pretty(fn.node) })) : null);
  }

  // -- chart of the last hour ---------------------------------------------------------------------

  async function loadStats(name) {
    const data = await api("GET", `/functions/${enc(name)}/stats?minutes=60`);
    if (name !== state.selected) return;
    const points = data.points || [];
    const sum = (field) => points.reduce((total, p) => total + (p[field] || 0), 0);
    $("stats-summary").textContent =
      `· ${plural(sum("invocations"), "invocation")}, ${plural(sum("errors"), "error")}, ${plural(sum("throttles"), "throttle")}`;
    renderOnce("stats", points, $("chart"), () => {
      replaceChildren($("chart"), drawChart(points));
      spaceTimeLabels($("chart").querySelector("svg"));
    });
  }

  /** Measured once the chart is in the page, as the font renders it: the newest minute's label is kept (moved
   * inside the chart's right edge if it sticks out), and going left each label that would come within LABEL_GAP
   * of the one kept to its right, or stick out on the left, is removed with its grid line. The chart scales as a
   * whole, so labels that fit at one width fit at all. */
  function spaceTimeLabels(chart) {
    const labels = [...chart.querySelectorAll('[data-testid="time-label"]')].reverse();
    const width = chart.viewBox.baseVal.width;
    let left = Infinity;          // where the label kept to the right begins
    for (const label of labels) {
      let box = label.getBBox();
      if (left === Infinity && box.x + box.width > width) {
        label.setAttribute("text-anchor", "end");
        label.setAttribute("x", String(width - 1));
        box = label.getBBox();
      }
      if (box.x + box.width + LABEL_GAP > left || box.x < 0) {
        label.remove();
        const line = chart.querySelector(`line.vertical[data-minute="${CSS.escape(label.dataset.minute)}"]`);
        if (line) line.remove();
        continue;
      }
      left = box.x;
    }
  }

  function niceCeil(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  function drawChart(points) {
    const W = 1000;
    const H = 330;
    const left = 64;
    const right = 16;
    const plotW = W - left - right;
    const countsTop = 34;
    const countsH = 110;
    const msTop = countsTop + countsH + 30;
    const msH = 100;
    const axisY = msTop + msH;
    const n = Math.max(points.length, 1);
    const slot = plotW / n;
    const xOf = (i) => left + i * slot + slot / 2;

    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "data-testid": "stats-chart",
                              "data-newest": points.length ? points[points.length - 1].minute : "",
                              "aria-label": "invocations, errors, throttles and duration per minute, last hour" });
    const grid = svg("g", { class: "grid" });
    const axes = svg("g", { class: "axes" });
    root.append(grid, axes);

    // legend
    const legend = svg("g", { class: "legend" });
    let lx = left;
    for (const [label, cls, kind] of [["invocations", "c-inv", "box"], ["errors", "c-err", "box"], ["throttles", "c-thr", "box"],
                                       ["p50 duration", "c-p50", "line"], ["p99 duration", "c-p99", "line"]]) {
      legend.append(kind === "box" ? svg("rect", { x: lx, y: 8, width: 10, height: 10, class: cls })
                                   : svg("line", { x1: lx - 1, y1: 13, x2: lx + 11, y2: 13, class: `line ${cls}` }));
      legend.append(svg("text", { x: lx + 15, y: 17, class: "label" }, label));
      lx += 30 + label.length * 6.5;
    }
    root.append(legend);

    // counts: invocations (errors at their foot) with throttles stacked on top
    // counts are whole numbers: four whole ticks from 0
    const countStep = Math.max(1, Math.ceil(niceCeil(Math.max(0, ...points.map((p) => (p.invocations || 0) + (p.throttles || 0))) / 4)));
    const maxCount = countStep * 4;
    const yCount = (v) => countsTop + countsH - (v / maxCount) * countsH;
    for (let t = 0; t <= 4; t++) {
      const value = (maxCount / 4) * t;
      const y = yCount(value);
      grid.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y }));
      axes.append(svg("text", { x: left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, String(value)));
    }
    axes.append(svg("text", { x: 14, y: countsTop + countsH / 2, class: "axis-title", "text-anchor": "middle",
                              transform: `rotate(-90 14 ${countsTop + countsH / 2})` }, "per minute"));

    const bars = svg("g", { class: "bars" });
    points.forEach((p, i) => {
      const x = left + i * slot + slot * 0.15;
      const w = Math.max(slot * 0.7, 1);
      const inv = p.invocations || 0;
      const err = Math.min(p.errors || 0, inv);
      const thr = p.throttles || 0;
      if (inv > 0) {
        bars.append(svg("rect", { x, y: yCount(inv), width: w, height: yCount(0) - yCount(inv), class: "c-inv",
                                  "data-testid": "chart-point", "data-series": "invocations", "data-minute": p.minute, "data-value": inv }));
      }
      if (err > 0) {
        bars.append(svg("rect", { x, y: yCount(err), width: w, height: yCount(0) - yCount(err), class: "c-err",
                                  "data-testid": "chart-point", "data-series": "errors", "data-minute": p.minute, "data-value": err }));
      }
      if (thr > 0) {
        bars.append(svg("rect", { x, y: yCount(inv + thr), width: w, height: yCount(inv) - yCount(inv + thr), class: "c-thr",
                                  "data-testid": "chart-point", "data-series": "throttles", "data-minute": p.minute, "data-value": thr }));
      }
    });
    root.append(bars);

    // duration: p50 and p99 on a log scale (the values are upper bounds of histogram buckets)
    const durations = points.flatMap((p) => [p.p50_ms, p.p99_ms]).filter((v) => v !== null && v !== undefined && v > 0);
    const topDecade = Math.max(1, Math.ceil(Math.log10(Math.max(10, ...durations))));
    const yMs = (v) => msTop + msH - 6 - (Math.log10(Math.max(v, 1)) / topDecade) * (msH - 10);   // 1 ms clear of the axis
    for (let d = 0; d <= topDecade; d++) {
      const y = yMs(10 ** d);
      grid.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y }));
      axes.append(svg("text", { x: left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, formatMs(10 ** d)));
    }
    axes.append(svg("text", { x: 14, y: msTop + msH / 2, class: "axis-title", "text-anchor": "middle",
                              transform: `rotate(-90 14 ${msTop + msH / 2})` }, "duration (log)"));
    for (const [field, cls] of [["p50_ms", "c-p50"], ["p99_ms", "c-p99"]]) {
      let d = "";
      let pen = false;
      const dots = svg("g", { class: cls });
      points.forEach((p, i) => {
        const v = p[field];
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${xOf(i).toFixed(1)} ${yMs(v).toFixed(1)} `;
        pen = true;
        dots.append(svg("circle", { cx: xOf(i).toFixed(1), cy: yMs(v).toFixed(1), r: 3, "data-testid": "chart-point",
                                    "data-series": field, "data-minute": p.minute, "data-value": v }));
      });
      if (d) root.append(svg("path", { d, class: `line ${cls}` }));
      root.append(dots);
    }

    // x axis: a tick every 10 minutes and one at the newest minute, local time (spaceTimeLabels drops the ones
    // that would touch their right neighbour once the chart is in the page)
    axes.append(svg("line", { x1: left, x2: W - right, y1: yCount(0), y2: yCount(0), class: "axis" }));
    axes.append(svg("line", { x1: left, x2: W - right, y1: axisY, y2: axisY, class: "axis" }));
    axes.append(svg("line", { x1: left, x2: left, y1: countsTop, y2: yCount(0), class: "axis" }));
    axes.append(svg("line", { x1: left, x2: left, y1: msTop, y2: axisY, class: "axis" }));
    points.forEach((p, i) => {
      const moment = new Date(p.minute.replace(/Z$/, ":00Z"));
      if (Number.isNaN(moment.getTime()) || (i !== points.length - 1 && moment.getMinutes() % 10 !== 0)) return;
      const x = xOf(i);
      grid.append(svg("line", { x1: x, x2: x, y1: countsTop, y2: axisY, class: "vertical", "data-minute": p.minute }));
      axes.append(svg("text", { x, y: axisY + 16, class: "tick", "text-anchor": "middle", "data-testid": "time-label",
                                "data-minute": p.minute }, `${pad(moment.getHours())}:${pad(moment.getMinutes())}`));
    });
    axes.append(svg("text", { x: left + plotW / 2, y: H - 4, class: "axis-title", "text-anchor": "middle" },
                    "minute (local time)"));

    if (!points.some((p) => p.invocations || p.throttles)) {
      root.append(svg("text", { x: left + plotW / 2, y: countsTop + countsH / 2, class: "empty", "text-anchor": "middle" },
                      "no invocations in the last hour"));
    }

    // one hover target per minute, with everything about it as a tooltip
    const hover = svg("g", { class: "hover" });
    points.forEach((p, i) => {
      const when = new Date(p.minute.replace(/Z$/, ":00Z"));
      hover.append(svg("rect", { x: left + i * slot, y: countsTop, width: slot, height: axisY - countsTop },
        svg("title", {}, `${formatTime(when.toISOString(), { seconds: false })}: ${plural(p.invocations || 0, "invocation")}, ` +
            `${plural(p.errors || 0, "error")}, ${plural(p.throttles || 0, "throttle")}; ` +
            `p50 ≤ ${formatMs(p.p50_ms)}, p99 ≤ ${formatMs(p.p99_ms)}`)));
    });
    root.append(hover);
    return root;
  }

  // -- dead letters -------------------------------------------------------------------------------

  async function loadDlq(name) {
    const data = await api("GET", `/functions/${enc(name)}/dlq?offset=${state.dlqOffset}&limit=${DLQ_LIMIT}`);
    if (name !== state.selected) return;
    if (data.total > 0 && data.offset >= data.total) {      // the page emptied (purge, redrive): go back
      state.dlqOffset = Math.max(0, Math.floor((data.total - 1) / DLQ_LIMIT) * DLQ_LIMIT);
      return loadDlq(name);
    }
    state.dlqTotal = data.total;
    const items = data.items || [];
    $("dlq-total").textContent = data.total
      ? `(${data.total}; showing ${data.offset + 1}–${data.offset + items.length})` : "(empty)";
    $("dlq-total").dataset.total = String(data.total);
    $("dlq-redrive-all").disabled = data.total === 0;
    $("dlq-purge").disabled = data.total === 0;
    $("dlq-prev").disabled = data.offset === 0;
    $("dlq-next").disabled = data.next === null || data.next === undefined;
    $("dlq-next").dataset.next = data.next ?? "";
    for (const id of [...state.expanded]) {
      if (!items.some((item) => item.requestId === id)) state.expanded.delete(id);
    }
    renderOnce("dlq", { items, expanded: [...state.expanded] }, $("dlq-body"), () => renderDlq(name, items));
  }

  function renderDlq(name, items) {
    const rows = [];
    for (const item of items) {
      const context = (item.record && item.record.requestContext) || {};
      const response = (item.record && item.record.responsePayload) || {};
      const open = state.expanded.has(item.requestId);
      const error = response.errorType ? `${response.errorType}: ${response.errorMessage || ""}` : "";
      rows.push(el("tr", { testid: "dlq-row", data: { requestId: item.requestId } },
        el("td", { class: "mono", text: item.requestId }),
        el("td", { class: "mono", text: item.qualifier || "" }),
        timeCell(item.deadLetteredAt),
        el("td", {}, el("span", { class: "badge bad", text: context.condition || "?" })),
        el("td", { text: String(context.approximateInvokeCount ?? (item.attempts || []).length) }),
        el("td", { class: "desc", text: error, title: error }),
        el("td", { class: "actions" },
          el("button", { type: "button", class: "small", testid: "dlq-show", text: open ? "Hide" : "Show",
                         onclick: () => toggleDlq(name, item.requestId) }),
          el("button", { type: "button", class: "small", testid: "dlq-redrive", text: "Redrive",
                         onclick: (event) => redrive(name, item.requestId, event.currentTarget) }))));
      if (open) {
        rows.push(el("tr", { class: "json-row", data: { requestId: item.requestId } },
          el("td", { colspan: "7" }, el("pre", { testid: "dlq-json", text: pretty(item) }))));
      }
    }
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "No dead letters." })));
    replaceChildren($("dlq-body"), rows);
  }

  function toggleDlq(name, id) {
    if (state.expanded.has(id)) state.expanded.delete(id);
    else state.expanded.add(id);
    state.rendered.delete("dlq");
    loadDlq(name).catch(() => {});
  }

  function dlqMessage(text) {
    $("dlq-message").textContent = text;
  }

  async function redrive(name, id, button) {
    if (button) button.disabled = true;
    try {
      const answer = await (id ? api("POST", `/functions/${enc(name)}/dlq/redrive`, { requestId: id })
                               : api("POST", `/functions/${enc(name)}/dlq/redrive`));
      const ids = answer.redriven || [];
      dlqMessage(id ? `Redriven ${ids.join(", ") || "nothing"}` : `Redriven ${plural(ids.length, "event")}`);
    } catch (exc) {
      dlqMessage(`Redrive failed: ${exc.message}`);
    } finally {
      if (button) button.disabled = false;
      state.rendered.delete("dlq");
      poll();
    }
  }

  async function purge() {
    const name = state.selected;
    if (!name) return;
    if (!window.confirm(`Purge all ${plural(state.dlqTotal, "dead letter")} of ${name}? They cannot be redriven afterwards.`)) return;
    try {
      const answer = await api("DELETE", `/functions/${enc(name)}/dlq`);
      dlqMessage(`Purged ${plural(answer.purged, "dead letter")}`);
    } catch (exc) {
      dlqMessage(`Purge failed: ${exc.message}`);
    } finally {
      state.dlqOffset = 0;
      state.rendered.delete("dlq");
      poll();
    }
  }

  // -- stream mappings ----------------------------------------------------------------------------

  async function loadStreams(name) {
    const data = await api("GET", `/functions/${enc(name)}/streams`);
    if (name !== state.selected) return;
    const shown = { mappings: data.mappings || [], queues: data.queues || [] };
    renderOnce("streams", shown, $("streams-body"), () => renderStreams(shown.mappings, shown.queues));
  }

  function renderQueue(q) {
    const problem = (q.lastProcessingResult || "").startsWith("PROBLEM");
    const counters = ["received", "deleted", "failed", "filtered", "throttled"];
    return el("div", { class: "mapping", testid: "sqs-mapping", data: { queue: q.queue } },
      el("h3", {}, "SQS ", el("span", { class: "mono", text: q.queue }), " ",
        el("span", { class: q.inFlight ? "badge warn" : "badge ok", testid: "sqs-in-flight", text: `in flight ${q.inFlight}` }), " ",
        el("span", { class: problem ? "badge warn" : "muted", testid: "sqs-result", text: q.lastProcessingResult || "" })),
      el("table", { testid: "sqs-table" },
        el("thead", {}, el("tr", {}, [...counters, "Pollers"].map((h) => el("th", { text: h[0].toUpperCase() + h.slice(1) })))),
        el("tbody", {}, el("tr", {},
          ...counters.map((c) => el("td", { testid: `sqs-${c}`, text: String(q[c] ?? 0) })),
          el("td", { class: "mono", text: (q.processes || []).map((p) => `${p.owner} (${p.pollers})`).join(", ") || "none running" })))));
  }

  function renderStreams(mappings, queues) {
    if (mappings.length === 0 && queues.length === 0) {
      replaceChildren($("streams-body"), el("p", { class: "muted", testid: "streams-empty", text: "No Kafka or SQS event source mappings." }));
      return;
    }
    replaceChildren($("streams-body"), ...queues.map(renderQueue), ...mappings.map((m) => {
      const partitions = m.partitions || [];
      const maxLag = Math.max(1, ...partitions.map((p) => p.lag || 0));
      return el("div", { class: "mapping", testid: "stream-mapping", data: { mapping: String(m.mapping) } },
        el("h3", {}, `#${m.mapping} `, el("span", { class: "mono", text: m.topic }), " ",
          el("span", { class: "muted", text: `group ${m.consumerGroup}` }), " ",
          el("span", { class: m.lag ? "badge warn" : "badge ok", testid: "stream-lag", text: `lag ${m.lag}` })),
        partitions.length === 0 ? el("p", { class: "muted", text: "No partition state yet (is a lambent streams process running?)." })
          : el("table", { testid: "partitions-table" },
            el("thead", {}, el("tr", {}, ["Partition", "Owner", "Committed", "High watermark", "Lag", ""].map((h) => el("th", { text: h })))),
            el("tbody", {}, partitions.map((p) => el("tr", { testid: "partition-row", class: p.stale ? "stale" : "",
                                                              data: { partition: String(p.partition) } },
              el("td", { text: String(p.partition) }),
              el("td", { class: "mono", text: p.owner || "—" }),
              el("td", { text: p.committed ?? "—" }),
              el("td", { text: p.highWatermark ?? "—" }),
              el("td", { testid: "partition-lag" }, p.lag ?? "—", p.stale ? el("span", { class: "badge warn", text: "stale" }) : null),
              el("td", { class: "lagbar" }, svg("svg", { viewBox: "0 0 200 12", class: "lag-svg", preserveAspectRatio: "none" },
                svg("rect", { x: 0, y: 0, width: 200, height: 12, class: "track" }),
                svg("rect", { x: 0, y: 0, width: ((p.lag || 0) / maxLag) * 200, height: 12, class: p.stale ? "bar stale" : "bar" }))))))));
    }));
  }

  // -- schedules ----------------------------------------------------------------------------------

  async function loadSchedules() {
    const data = await api("GET", "/schedules");
    const schedules = data.schedules || [];
    $("schedules-count").textContent = `(${schedules.length})`;
    renderOnce("schedules", { schedules, selected: state.selected }, $("schedules-body"), () => renderSchedules(schedules));
    return true;
  }

  function renderSchedules(schedules) {
    const rows = schedules.map((s) => {
      const stats = s.stats || {};
      const last = s.last;
      return el("tr", { testid: "schedule-row", class: s.function === state.selected ? "selected" : "",
                        data: { function: s.function, index: String(s.index) } },
        el("td", { class: "mono", text: s.function }),
        el("td", { text: String(s.index) }),
        el("td", { class: "mono", text: s.expression }),
        el("td", { text: s.timezone }),
        el("td", {}, el("span", { class: s.enabled ? "badge ok" : "badge", text: s.enabled ? "yes" : "no" })),
        el("td", {}, (s.next || []).map((t) => el("div", { text: formatTime(t), title: t }))),
        el("td", { text: String(stats.fired || 0) }),
        el("td", { text: String(stats.late || 0) }),
        el("td", { text: String(stats.missed || 0) }),
        el("td", {}, last ? [
          el("div", { text: `${formatTime(last.scheduled)} (+${formatMs(last.lateMs)})`, title: `fired at ${last.firedAt}` }),
          el("div", {}, el("span", { class: last.outcome === "fired" || last.outcome === "queued" ? "badge ok" : "badge", text: last.outcome || "?" }), " ",
            last.status ? el("span", { class: last.status === "succeeded" ? "badge ok" : last.status === "queued" || last.status === "running" ? "badge" : "badge bad", text: last.status }) : null),
          last.requestId ? el("div", { class: "mono small", text: last.requestId }) : null,
        ] : el("span", { class: "muted", text: "never fired" })));
    });
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "10", class: "muted", text: "No schedules." })));
    replaceChildren($("schedules-body"), rows);
  }

  // -- invoke -------------------------------------------------------------------------------------

  function fillInvokeChoices(names) {
    const choice = $("invoke-function");
    const current = [...choice.options].map((o) => o.value);
    if (JSON.stringify(current) === JSON.stringify(names)) return;
    const keep = choice.value || state.selected;
    replaceChildren(choice, names.map((name) => el("option", { value: name, text: name })));
    if (names.includes(keep)) choice.value = keep;
    fillQualifierChoices();
  }

  /** $LATEST, the published versions (newest first) and the aliases of the form's function; the choice is kept
   * while it exists, and is $LATEST again for another function. */
  function fillQualifierChoices() {
    const name = $("invoke-function").value;
    const choice = $("invoke-qualifier");
    const known = state.qualifiers.get(name) || { versions: [], aliases: {} };
    const versions = known.versions.map(Number).sort((a, b) => b - a).map(String);
    const aliases = Object.entries(known.aliases).sort(([a], [b]) => a.localeCompare(b));
    const shown = JSON.stringify([name, versions, aliases]);
    if (choice.dataset.shown === shown) return;
    const keep = choice.dataset.function === name ? choice.value : "";
    choice.dataset.shown = shown;
    choice.dataset.function = name;
    replaceChildren(choice, el("option", { value: "", text: "$LATEST" }),
      versions.length ? el("optgroup", { label: "Published versions" },
        versions.map((v) => el("option", { value: v, text: `version ${v}` }))) : null,
      aliases.length ? el("optgroup", { label: "Aliases" },
        aliases.map(([alias, v]) => el("option", { value: alias, text: `${alias} → ${versionName(v)}` }))) : null);
    choice.value = [...choice.options].some((o) => o.value === keep) ? keep : "";
  }

  function showHead(target, status, ok, rid, version = "") {
    $("invoke-output").hidden = false;
    $("invoke-target").textContent = target;
    $("invoke-status").textContent = status;
    $("invoke-status").className = ok ? "badge ok" : "badge bad";
    $("invoke-request-id").textContent = rid;
    $("invoke-rid").hidden = !rid;
    $("invoke-version").textContent = version;
    $("invoke-async").hidden = true;
  }

  function showResult(text, ok) {
    $("invoke-result").textContent = text;
    $("invoke-result").className = ok ? "" : "error";
  }

  /** The Logs box holds `text`, or is hidden (null): when the function did not run there are none to wait for. */
  function showLogsText(text) {
    $("invoke-logs-box").hidden = text === null;
    $("invoke-logs").textContent = text || "";
  }

  async function invoke(event) {
    event.preventDefault();
    const name = $("invoke-function").value;
    if (!name) return;
    const qualifier = $("invoke-qualifier").value;
    const queue = $("invoke-type").value === "Event";
    const target = qualifier ? `${name}:${qualifier}` : name;
    const payload = $("invoke-payload").value.trim() || "{}";
    const output = $("invoke-output");
    const token = ++state.invocations;                     // a later invocation takes the output over
    const current = () => state.invocations === token;
    output.dataset.done = "false";
    const done = () => {
      if (current()) output.dataset.done = "true";
    };
    try {
      JSON.parse(payload);
    } catch (exc) {
      showHead(target, "not sent", false, "");
      showResult(`The payload is not valid JSON, so it was not sent: ${exc.message}`, false);
      showLogsText(null);
      done();
      return;
    }
    $("invoke-button").disabled = true;
    $("invoke-busy").textContent = queue ? "queueing…" : "invoking…";
    const path = `/functions/${enc(name)}/invoke${qualifier ? `?qualifier=${enc(qualifier)}` : ""}`;
    let answer;
    try {
      answer = await request("POST", path, payload, queue ? { "X-Invocation-Type": "Event" } : {});
    } catch (exc) {
      if (current()) {
        showHead(target, "no answer", false, "");
        showResult(`The gateway did not answer: ${exc.message}`, false);
        showLogsText(null);
      }
      done();
      return;
    } finally {
      $("invoke-busy").textContent = "";
      $("invoke-button").disabled = false;
    }
    if (!current()) return;
    const rid = answer.headers.get("x-request-id") || (answer.data && answer.data.requestId) || "";
    const functionError = answer.headers.get("x-function-error");
    const version = answer.headers.get("x-executed-version");
    showHead(target, `${answer.status} ${functionError ? `function error (${functionError})` : answer.statusText || ""}`.trim(),
             answer.ok, rid, version ? `executed version ${version}` : "");
    showResult(pretty(answer.data), answer.ok);
    if (answer.ok) {
      if (state.errors.delete(errorKey("POST", path))) renderErrors();
    } else if (!functionError && answer.status !== 504) {
      reportError("POST", path, answer.status, (answer.data && answer.data.error) || "", describe(answer));
    }
    const ran = answer.ok || functionError || answer.status === 504;
    showLogsText(ran && rid ? "waiting for the logs…" : null);
    if (answer.status === 202 && rid) await followInvocation(name, rid, current);
    else if (ran && rid) await showLogs(name, rid, current);
    done();
    poll();
  }

  /** Read GET /invocations/{id} until the queued invocation has succeeded or is dead-lettered; then its result
   * (or last error) and its logs. */
  async function followInvocation(name, rid, current) {
    $("invoke-async").hidden = false;
    showQueued({ status: "queued" });
    let record;
    for (let round = 0; ; round++) {
      await sleep(FOLLOW_MS[Math.min(round, FOLLOW_MS.length - 1)]);
      if (!current()) return;
      try {
        record = await api("GET", `/invocations/${enc(rid)}`);
      } catch (exc) {
        if (!current()) return;
        $("invoke-async-detail").textContent = `its status could not be read: ${exc.message}`;
        showLogsText(null);
        return;
      }
      if (!current()) return;
      showQueued(record);
      if (FINAL.has(record.status)) break;
    }
    if (record.status === "succeeded") showResult(pretty(record.result ?? null), true);
    else showResult(pretty(record.error ?? record), false);
    await showLogs(name, rid, current);
  }

  function showQueued(record) {
    const badge = $("invoke-async-status");
    badge.textContent = record.status;
    badge.dataset.status = record.status;
    badge.className = { succeeded: "badge ok", "dead-lettered": "badge bad", retrying: "badge warn" }[record.status] || "badge";
    const facts = [];
    if (record.attemptCount) facts.push(plural(record.attemptCount, "attempt"));
    if (record.executedVersion) facts.push(`executed version ${record.executedVersion}`);
    if (record.nextAttemptAt) facts.push(`next attempt at ${formatTime(record.nextAttemptAt)}`);
    $("invoke-async-detail").textContent = facts.join(", ");
  }

  async function showLogs(name, rid, current) {
    for (const delay of [0, ...LOG_RETRY_MS]) {
      if (delay) await sleep(delay);
      if (!current()) return;
      let data;
      try {
        data = await api("GET", `/functions/${enc(name)}/logs?request_id=${enc(rid)}`);
      } catch (exc) {
        if (current()) showLogsText(`the logs could not be read: ${exc.message}`);
        return;
      }
      const records = data.records || [];
      const text = records.map((r) => r.text).join("");
      if (records.length && /^REPORT /m.test(text)) {
        if (current()) showLogsText(text);
        return;
      }
    }
    if (current()) showLogsText("no logs recorded for this request (yet)");
  }

  // -- start --------------------------------------------------------------------------------------

  function start() {
    takeSecretFromUrl();
    showSecretState();
    $("secret-form").addEventListener("submit", (event) => {
      event.preventDefault();
      writeSecret($("secret-input").value.trim());
      $("secret-input").value = "";
      poll();
    });
    $("secret-clear").addEventListener("click", () => {
      writeSecret("");
      poll();
    });
    $("errors-clear").addEventListener("click", () => {
      state.errors.clear();
      renderErrors();
    });
    $("invoke-form").addEventListener("submit", invoke);
    $("invoke-function").addEventListener("change", () => {
      fillQualifierChoices();
      readQualifiers($("invoke-function").value);
    });
    $("dlq-redrive-all").addEventListener("click", (event) => {
      if (state.selected && window.confirm(`Queue all ${plural(state.dlqTotal, "dead letter")} of ${state.selected} again?`)) {
        redrive(state.selected, null, event.currentTarget);
      }
    });
    $("dlq-purge").addEventListener("click", purge);
    $("dlq-prev").addEventListener("click", () => {
      state.dlqOffset = Math.max(0, state.dlqOffset - DLQ_LIMIT);
      poll();
    });
    $("dlq-next").addEventListener("click", () => {
      const next = Number($("dlq-next").dataset.next);
      if (Number.isFinite(next)) state.dlqOffset = next;
      poll();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") poll();
    });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
