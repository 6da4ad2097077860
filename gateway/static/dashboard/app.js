// expertgate dashboard: polls /ui/api/summary every 2 s and explains prompts via /v1/route.
// Plain DOM code, no build step. Every value from the server is set with textContent, never
// as HTML: prompts and reasons are client input.
"use strict";

const KEY_ITEM = "expertgate.adminKey";
const POLL_MS = 2000;
let since = 0;
let feed = "";  // the feed `since` counts in: a restarted gateway or another worker has its own
let decisions = [];  // newest first, at most MAX_ROWS
const MAX_ROWS = 100;
let policiesShown = "";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "title") e.title = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function headers() {
  const h = { "content-type": "application/json" };
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) h.authorization = "Bearer " + key;
  return h;
}

const usd = (x) => x === null || x === undefined ? "–" :
  (Math.abs(x) >= 1 ? "$" + x.toFixed(2) : "$" + x.toPrecision(3));
const pct = (x) => x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%";
const ms = (x) => x === null || x === undefined ? "–" : x.toFixed(x < 10 ? 2 : 1) + " ms";
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
const listing = (o) => Object.entries(o || {}).map(([k, v]) => `${k} ${v}`).join(", ");

async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

async function refresh() {
  try {
    const q = `since=${since}` + (feed ? `&feed=${encodeURIComponent(feed)}` : "");
    const r = await fetch(`/ui/api/summary?${q}`, { headers: headers() });
    if (r.status === 401 || r.status === 403) {
      $("key-form").hidden = false;
      showError("The dashboard needs the admin API key: enter it above.");
      setLive(false, "needs a key");
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    $("error").hidden = true;
    render(s);
    setLive(true, `live · up ${Math.round(s.uptime_s)} s`);
  } catch (e) {
    setLive(false, "gateway unreachable");
  }
}

function setLive(ok, text) {
  const l = $("live");
  l.className = "live " + (ok ? "ok" : "down");
  l.textContent = text;
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = false;
}

function render(s) {
  $("c-requests").textContent = s.requests.toLocaleString();
  $("c-requests-sub").textContent = `${s.routed} routed, ${s.errors} errors`;
  const c = s.cost;
  if (c.strongest_expert && c.saved_usd !== null) {
    $("c-saved").textContent = pct(c.saved_share);
    $("c-saved-sub").textContent = `${usd(c.saved_usd)} of ${usd(c.if_strongest_usd)}, ` +
      `vs always ${c.strongest_expert}`;
  } else {
    $("c-saved").textContent = "–";
    $("c-saved-sub").textContent = "no expert has a price in the config";
  }
  $("c-cache").textContent = pct(s.cache.hit_rate);
  $("c-cache-sub").textContent = `${s.cache.hit} hits, ${s.cache.miss} misses` +
    (s.cache.bypass ? `, ${s.cache.bypass} bypassed` : "");
  const a = s.added_ms, dm = s.decision_ms;
  $("c-latency").textContent = a.p50 === null ? "–" : ms(a.p50);
  $("c-latency-sub").textContent = (a.p50 === null ? "" :
    `p50; p99 ${ms(a.p99)} (${a.n} answers) · `) +
    (dm.p50 === null ? "no routing decision yet" :
      `routing decision p50 ${ms(dm.p50)}, p99 ${ms(dm.p99)}`);
  $("c-rejections").textContent = sum(s.rejections);
  $("c-rejections-sub").textContent = listing(s.rejections) || "none";
  $("c-degraded").textContent = sum(s.degraded);
  $("c-degraded-sub").textContent = listing(s.degraded) || "no fallback taken";
  renderCandidates(s.candidates || {});
  renderExperts(s);
  renderPolicies(s.policies);
  since = s.seq;
  feed = s.feed || "";
  // another feed's decisions (another worker, a restarted gateway) may repeat rows already
  // shown or be older than them: one row per request, newest first
  const fresh = s.recent.filter((d) => !decisions.some((o) => o.request_id === d.request_id));
  if (fresh.length) {
    decisions = fresh.concat(decisions).sort((a, b) => b.ts - a.ts).slice(0, MAX_ROWS);
    renderDecisions();
  }
}

// shadow / canary candidates: what serves, and a canary's automatic revert (with its reason)
function renderCandidates(cands) {
  const names = Object.keys(cands);
  const serving = names.filter((n) => cands[n].serving).length;
  $("c-candidates").textContent = names.length ? `${serving} canary serving` : "–";
  $("c-candidates-sub").textContent = names.map((n) => {
    const c = cands[n];
    if (c.mode === "shadow") return `${n}: shadow (logged, not served)`;
    if (c.reverted) return `${n}: canary REVERTED (${c.reverted})`;
    const a = c.arms || {};
    const can = a.canary || {}, inc = a.incumbent || {};
    return `${n}: canary ${pct(c.share)}, errors ${can.errors ?? 0}/${can.requests ?? 0} ` +
      `vs ${inc.errors ?? 0}/${inc.requests ?? 0}`;
  }).join("; ") || "no shadow or canary router";
}

function renderExperts(s) {
  const body = $("experts").tBodies[0];
  body.replaceChildren();
  const top = Math.max(0.0001, ...s.experts.map((e) => e.share));
  for (const e of s.experts) {
    const bar = el("span", { class: "bar" });
    bar.style.width = Math.round(90 * e.share / top) + "px";
    body.append(el("tr", { "data-expert": e.name },
      el("td", {}, e.name, e.parent ? el("span", { class: "sub" }, ` (adapter of ${e.parent})`) : null),
      el("td", { class: "share" }, bar, pct(e.share)),
      el("td", { class: "num" }, e.requests),
      el("td", { class: "num" }, (e.prompt_tokens + e.completion_tokens).toLocaleString()),
      el("td", { class: "num" }, usd(e.cost_usd))));
  }
  if (s.unserved > 0) {
    body.append(el("tr", { class: "muted" },
      el("td", {}, "no expert (refusals, errors)"),
      el("td", { class: "share" }, pct(s.unserved / s.requests)),
      el("td", { class: "num" }, s.unserved), el("td", {}), el("td", {})));
  }
  $("experts-note").textContent = s.cost.strongest_expert ?
    `Cost saved compares what routed requests cost with what the same tokens would have cost on ` +
    `the most expensive expert, ${s.cost.strongest_expert}.` : "";
}

function renderPolicies(policies) {
  const key = policies.join(",");
  if (key === policiesShown) return;
  policiesShown = key;
  const sel = $("pg-policy");
  const keep = sel.value;
  sel.replaceChildren(...policies.map((p) => el("option", { value: p }, p)));
  if (policies.includes(keep)) sel.value = keep;
}

function pills(d) {
  const out = [];
  if (d.cache === "hit") out.push(el("span", { class: "pill hit" }, "hit"));
  else out.push(el("span", { class: "pill" }, d.cache || "none"));
  return out;
}

function renderDecisions() {
  const body = $("decisions").tBodies[0];
  body.replaceChildren();
  $("decisions-empty").hidden = decisions.length > 0;
  $("decisions-sub").textContent = decisions.length ? `(latest ${decisions.length})` : "";
  for (const d of decisions) {
    const t = new Date(d.ts * 1000).toLocaleTimeString();
    const prompt = d.text || (d.policy ? "(prompt not logged by this policy)" : "(explicit expert)");
    const status = d.http_status >= 400 ?
      el("span", { class: "pill err" }, `${d.http_status} ${d.error_type || ""}`) :
      d.mode === "reject" ? el("span", { class: "pill reject" }, "rejected") :
      el("span", { class: "pill" }, d.http_status);
    const why = el("div", { class: "why" }, d.reason || "");
    if (d.targets && d.targets.length > 1) {
      why.append(el("div", {}, "candidates: " + d.targets.map((e, i) => {
        const sc = d.scores ? d.scores[i] : null;
        return sc === null || sc === undefined ? e : `${e} ${sc.toFixed(3)}`;
      }).join(", ")));
    }
    for (const c of d.degraded || []) why.append(el("span", { class: "pill degraded" }, c));
    body.append(el("tr", { "data-request-id": d.request_id },
      el("td", {}, t),
      el("td", {}, d.policy || "–"),
      el("td", { class: "prompt", title: prompt }, prompt),
      el("td", { class: "expert" }, d.expert || "–"),
      el("td", {}, ...pills(d)),
      el("td", { class: "num" }, ms(d.decision_ms)),
      el("td", {}, status),
      el("td", {}, why)));
  }
}

async function explain(ev) {
  ev.preventDefault();
  const text = $("pg-text").value.trim();
  const err = $("pg-error");
  err.hidden = true;
  if (!text) return;
  const r = await fetch("/v1/route", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: $("pg-policy").value, text }),
  });
  const body = await r.json();
  if (!r.ok) {
    $("pg-result").hidden = true;
    err.textContent = body.error ? body.error.message : `HTTP ${r.status}`;
    err.hidden = false;
    return;
  }
  $("pg-expert").textContent = body.mode === "reject" ? "rejected" :
    (body.targets[0] ? body.targets[0].expert : "no expert");
  $("pg-mode").textContent = body.mode;
  $("pg-cache").textContent = body.cached ? "cached decision" : "fresh decision";
  $("pg-reason").textContent = body.reason;
  const tb = $("pg-targets").tBodies[0];
  tb.replaceChildren(...body.targets.map((t) =>
    el("tr", {}, el("td", {}, t.expert), el("td", {}, t.score === null ? "–" : t.score.toFixed(4)))));
  const g = body.guard;
  $("pg-guard").textContent = g ?
    `guard: ${g.rejected ? "rejected (" + g.reject_reason + ")" : "accepted"}` +
    (g.label ? `, label ${g.label}` : "") +
    (g.ood_score !== null && g.ood_score !== undefined ? `, OOD score ${g.ood_score.toFixed(3)}` +
      (g.threshold !== null && g.threshold !== undefined ?
        ` vs threshold ${g.threshold.toFixed(3)}` : "") : "") :
    "no guard on this policy";
  $("pg-timings").textContent = "timings: " + Object.entries(body.timings_ms)
    .map(([k, v]) => `${k} ${v.toFixed(2)} ms`).join(", ");
  $("pg-chain").textContent = "tried in this order: " + body.fallback_chain.join(" → ") +
    (body.degraded.length ? ` (degraded: ${body.degraded.join(", ")})` : "");
  $("pg-result").hidden = false;
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  $("error").hidden = true;
  refresh();  // show the data now, not at the next poll
});
$("pg-form").addEventListener("submit", explain);
poll();
