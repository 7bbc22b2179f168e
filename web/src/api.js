// The REST client: JSON in and out, problem+json errors as ApiError, and the
// bearer token (asked for once, kept in localStorage, sent with every call
// once known; a 401 or 403 about the token asks again and retries). Mutating
// calls always need one; reads only from a daemon bound off loopback, which
// answers them 401 without a token (an admin or a read-only token will do).

const TOKEN_KEY = "tokenlab.token";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || "HTTP " + status);
    this.status = status;
    this.code = (problem && problem.code) || "HTTP_" + status;
    this.pointer = problem ? problem.pointer : undefined;
    this.problem = problem || {};
  }
}

let asker = null; // (reason) => Promise<string|null>, installed by the app shell

export function setTokenAsker(fn) {
  asker = fn;
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || memoryToken;
  } catch {
    return memoryToken;
  }
}

let memoryToken = ""; // when the browser refuses storage (private mode), the token lives for this page only

export function setToken(t) {
  memoryToken = t || "";
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* kept in memoryToken */
  }
  window.dispatchEvent(new Event("tokenlab-token"));
}

async function askToken(reason) {
  if (!asker) return null;
  const t = await asker(reason);
  if (t) setToken(t.trim());
  return t ? t.trim() : null;
}

async function readProblem(r) {
  const ct = r.headers.get("Content-Type") || "";
  try {
    if (ct.includes("json")) return await r.json();
    const text = await r.text();
    return { status: r.status, title: r.statusText, detail: text.slice(0, 300) || r.statusText };
  } catch {
    return { status: r.status, title: r.statusText, detail: r.statusText };
  }
}

// api(path, {method, json, body, headers, signal, auth, raw}) -> parsed JSON, null (204) or the Response (raw).
export async function api(path, opts = {}) {
  const method = opts.method || "GET";
  const needAuth = opts.auth !== undefined ? opts.auth : !(method === "GET" || method === "HEAD");
  let body = opts.body;
  const headers = { ...(opts.headers || {}) };
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  let reason = "";
  for (let attempt = 0; ; attempt++) {
    let t = getToken();
    if (needAuth && !t) {
      t = await askToken(reason);
      if (!t) throw new ApiError(401, { code: "NO_TOKEN", detail: "no API token was given" });
    }
    if (t) headers.Authorization = "Bearer " + t;
    else delete headers.Authorization;
    let r;
    try {
      r = await fetch(path, { method, headers, body, signal: opts.signal, cache: "no-store" });
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ApiError(0, { code: "NETWORK", detail: "the daemon does not answer (" + (e && e.message) + ")" });
    }
    if (r.ok) {
      if (opts.raw) return r;
      if (r.status === 204) return null;
      const ct = r.headers.get("Content-Type") || "";
      return ct.includes("json") ? r.json() : r.text();
    }
    const p = await readProblem(r);
    if (["UNAUTHENTICATED", "FORBIDDEN", "READ_ONLY_TOKEN"].includes(p.code) && attempt < 5) {
      if (t) setToken(""); // refused, or only a read-only token where the admin token is needed
      reason =
        p.code === "READ_ONLY_TOKEN"
          ? "That token may only read; this needs the daemon's admin token."
          : p.code === "FORBIDDEN"
            ? "The daemon refused that token."
            : needAuth
              ? "The daemon needs a token."
              : "This daemon needs a token for reading too.";
      // mutating calls ask at the top of the loop; reads ask here, and only when refused
      if (!needAuth && !(await askToken(reason))) throw new ApiError(r.status, p);
      continue;
    }
    throw new ApiError(r.status, p);
  }
}

// Job-level helpers used by several views.
export const FINAL_STATES = ["SUCCEEDED", "FAILED", "CANCELLED"];
export const ALL_STATES = ["QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED"];
export const isFinal = (s) => FINAL_STATES.includes(s);

// One metric series, normalised: {name, bucketed, step, time, last, min, max} (plain arrays).
export async function fetchSeries(jobId, name, { start, end, maxPoints = 1000, signal } = {}) {
  const q = new URLSearchParams({ max_points: String(Math.max(1, Math.min(100000, Math.round(maxPoints)))) });
  if (start != null) q.set("start_step", String(Math.max(0, Math.floor(start))));
  if (end != null) q.set("end_step", String(Math.max(0, Math.ceil(end))));
  const d = await api(`/api/v1/jobs/${jobId}/metrics/${encodeURIComponent(name)}?${q}`, { signal });
  const rows = d.bucketed ? d.buckets || [] : d.points || [];
  const out = { name, bucketed: !!d.bucketed, step: [], time: [], last: [], min: [], max: [] };
  for (const p of rows) {
    const v = d.bucketed ? p.last : p.value;
    out.step.push(p.step);
    out.time.push(p.time_ms / 1000);
    out.last.push(v);
    out.min.push(d.bucketed ? p.min : v);
    out.max.push(d.bucketed ? p.max : v);
  }
  return out;
}
