// Metric series for the charts: fetching (bucketed by the daemon, at most
// about one bucket per pixel), live refresh, zoom (a step range refetched at
// full detail) and the chart controls (x axis, log scale, smoothing).
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { fetchSeries } from "./api.js";

export const MAX_POINTS = 800;

const EMPTY = { name: "", bucketed: false, step: [], time: [], last: [], min: [], max: [] };

// series for every (job, name) pair: {"3/loss": series}. Refetched whenever `version` changes.
export function useSeriesSet(jobIds, names, { range = null, version = 0 } = {}) {
  const [set, setSet] = useState({});
  const [error, setError] = useState(null);
  const key = jobIds.join(",") + "|" + names.join(",");
  const rkey = range ? `${range.start}-${range.end}` : "";
  useEffect(() => {
    if (!jobIds.length) return;
    const ctrl = new AbortController();
    const opts = { maxPoints: MAX_POINTS, signal: ctrl.signal };
    if (range) {
      opts.start = range.start;
      opts.end = range.end;
    }
    const jobs = [];
    for (const id of jobIds)
      for (const n of names)
        jobs.push(
          fetchSeries(id, n, opts).then(
            (s) => [id + "/" + n, s],
            (e) => {
              if (e && e.name === "AbortError") throw e;
              return [id + "/" + n, { ...EMPTY, name: n, error: e }];
            },
          ),
        );
    Promise.all(jobs).then(
      (pairs) => {
        if (ctrl.signal.aborted) return;
        const out = {};
        for (const [k, s] of pairs) out[k] = s;
        setSet(out);
        setError(null);
      },
      (e) => {
        if (!(e && e.name === "AbortError")) setError(e);
      },
    );
    return () => ctrl.abort();
  }, [key, rkey, version]);
  return { set, error };
}

// A zoom range in x units (as the chart reports it) -> a step range, using the loaded series.
export function toStepRange(zoom, xMode, seriesList, t0s) {
  if (!zoom) return null;
  if (xMode === "step") return { start: Math.max(0, Math.floor(zoom.min)), end: Math.ceil(zoom.max) };
  let lo = Infinity,
    hi = -Infinity;
  seriesList.forEach((s, i) => {
    if (!s || !s.time.length) return;
    const off = xMode === "relative" ? t0s[i] || s.time[0] : 0;
    for (let k = 0; k < s.time.length; k++) {
      const x = s.time[k] - off;
      if (x >= zoom.min && x <= zoom.max) {
        lo = Math.min(lo, s.step[k]);
        hi = Math.max(hi, s.step[k]);
      }
    }
  });
  if (!isFinite(lo)) return null;
  return { start: Math.max(0, lo - 1), end: hi + 1 };
}

// The x range [lo, hi] covered by a set of series (so that every chart of a page spans the same steps).
export function xExtent(seriesList, xMode, t0s) {
  let lo = Infinity,
    hi = -Infinity;
  seriesList.forEach((s, i) => {
    if (!s || !s.step.length) return;
    const a = xMode === "step" ? s.step : s.time;
    const off = xMode === "relative" ? t0s[i] || s.time[0] : 0;
    lo = Math.min(lo, a[0] - off);
    hi = Math.max(hi, a[a.length - 1] - off);
  });
  return isFinite(lo) && hi > lo ? [lo, hi] : null;
}

// Calls fn at most every `ms` while `active`, when `dirty` was marked since the last call,
// and every `idleMs` regardless (so that a missed event never freezes the charts).
export function useThrottledRefresh(active, ms = 2000, idleMs = 6000) {
  const [version, setVersion] = useState(0);
  const dirty = useRef(false);
  const last = useRef(Date.now());
  useEffect(() => {
    if (!active) return;
    const t = setInterval(() => {
      const now = Date.now();
      if ((dirty.current && now - last.current >= ms) || now - last.current >= idleMs) {
        dirty.current = false;
        last.current = now;
        setVersion((v) => v + 1);
      }
    }, 250);
    return () => clearInterval(t);
  }, [active, ms, idleMs]);
  return {
    version,
    mark: () => (dirty.current = true),
    now: () => {
      last.current = Date.now();
      dirty.current = false;
      setVersion((v) => v + 1);
    },
  };
}

export function ChartControls({ xMode, setXMode, log, setLog, smoothing, setSmoothing, zoomed, resetZoom, wall = true }) {
  return html`
    <div class="chart-controls">
      <label
        >x axis
        <select value=${xMode} onChange=${(e) => setXMode(e.target.value)} data-test="x-mode">
          <option value="step">step</option>
          <option value="relative">time since start</option>
          ${wall && html`<option value="wall">wall-clock time</option>`}
        </select>
      </label>
      <label class="check"><input type="checkbox" checked=${log} onChange=${(e) => setLog(e.target.checked)} data-test="log-scale" /> log scale</label>
      <label class="smoothing"
        >smoothing
        <input type="range" min="0" max="0.99" step="0.01" value=${smoothing}
          onInput=${(e) => setSmoothing(Number(e.target.value))} data-test="smoothing" />
        <span class="num">${smoothing.toFixed(2)}</span>
      </label>
      ${zoomed
        ? html`<button class="secondary small" onClick=${resetZoom}>reset zoom</button>`
        : html`<span class="hint">drag across a chart to zoom, double-click to reset</span>`}
    </div>
  `;
}

// Chart settings kept across page loads.
export function usePersisted(key, initial) {
  const [v, setV] = useState(() => {
    try {
      const s = localStorage.getItem("tokenlab." + key);
      return s == null ? initial : JSON.parse(s);
    } catch {
      return initial;
    }
  });
  const set = (x) => {
    setV(x);
    try {
      localStorage.setItem("tokenlab." + key, JSON.stringify(x));
    } catch {
      /* ignore */
    }
  };
  return [v, set];
}
