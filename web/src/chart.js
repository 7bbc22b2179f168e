// A metric chart on uPlot: one or more traces (a job's metric series, as
// bucketed by the daemon: last value with a min/max band per bucket), each
// drawn faint when smoothed with the smoothed line on top; x by step, wall
// time or time since the job started; linear or log y. Dragging across the
// plot asks the parent to zoom (it refetches that range at full detail);
// double-click asks to reset. The daemon always sends at most about one
// bucket per pixel, so a million-point series costs what a thousand-point one does.
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import { fmtDuration, fmtNum } from "./format.js";

export const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// Tick labels with as many decimals as the tick spacing needs (uPlot's default stops at three).
function linearTicks(u, vals, axis, space, incr) {
  const big = Math.max(0, ...vals.map((v) => Math.abs(v || 0)));
  const lg = (x) => Math.floor(Math.log10(x) + 1e-9);
  if (!(incr > 0)) return vals.map((v) => (v == null ? "" : fmtNum(v, 3)));
  if (big !== 0 && (big < 1e-3 || big >= 1e6)) {
    const digits = Math.max(0, Math.min(4, lg(big) - lg(incr)));
    return vals.map((v) => (v == null ? "" : v === 0 ? "0" : v.toExponential(digits)));
  }
  let dec = Math.max(0, -lg(incr));
  while (dec < 8 && Math.abs(incr * 10 ** dec - Math.round(incr * 10 ** dec)) > 1e-6) dec++;
  return vals.map((v) => (v == null ? "" : v.toFixed(dec)));
}

function logTicks(u, vals) {
  return vals.map((v) => (v == null ? "" : fmtNum(v, 3)));
}

// Accuracy axes: padded, but never below 0 or above 100.
function percentRange(u, min, max) {
  if (min == null || max == null) return [0, 100];
  const pad = Math.max(1, (max - min) * 0.08);
  return [Math.max(0, min - pad), Math.min(100, max + pad)];
}

function rgba(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
export function smoothSeries(values, w) {
  const out = new Array(values.length);
  let acc = 0,
    n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || !isFinite(v)) {
      out[i] = null;
      continue;
    }
    acc = acc * w + (1 - w) * v;
    n++;
    out[i] = acc / (1 - Math.pow(w, n));
  }
  return out;
}

const ids = new WeakMap();
let nextId = 1;
function objectId(o) {
  let v = ids.get(o);
  if (!v) ids.set(o, (v = nextId++));
  return v;
}

// Test and debugging hook: what each chart currently draws.
const registry = (window.__tokenlab = window.__tokenlab || {}).charts || new Map();
window.__tokenlab.charts = registry;

function xValues(tr, xMode) {
  const s = tr.series;
  const src = xMode === "step" ? s.step : s.time;
  const off = xMode === "relative" ? tr.t0 || (s.time.length ? s.time[0] : 0) : 0;
  const xs = new Array(src.length);
  let prev = -Infinity;
  for (let i = 0; i < src.length; i++) {
    let x = src[i] - off;
    if (x <= prev) x = prev + (xMode === "step" ? 1e-6 : 1e-3); // uPlot needs strictly increasing x
    xs[i] = x;
    prev = x;
  }
  return xs;
}

function buildData(traces, { xMode, log, smoothing, smooth, scale }) {
  const tables = [];
  const layout = []; // per trace: {raw, sm, min, max} column indices within the joined table
  const tf = (v) => {
    if (v == null || !isFinite(v)) return null;
    v = v * scale;
    return log && v <= 0 ? null : v;
  };
  for (const tr of traces) {
    const s = tr.series;
    const xs = xValues(tr, xMode);
    const raw = s.last.map(tf);
    const cols = [xs, raw];
    const lay = { raw: 1 };
    if (smooth && smoothing > 0) {
      lay.sm = cols.length;
      cols.push(smoothSeries(raw, smoothing));
    }
    if (s.bucketed) {
      lay.min = cols.length;
      cols.push(s.min.map(tf));
      lay.max = cols.length;
      cols.push(s.max.map(tf));
    }
    tables.push(cols);
    layout.push(lay);
  }
  if (tables.length === 1) return { data: tables[0], layout: layout.map((l) => ({ ...l })), offsets: [0] };
  const joined = uPlot.join(tables);
  const offsets = [];
  let off = 0;
  for (const t of tables) {
    offsets.push(off);
    off += t.length - 1;
  }
  return { data: joined, layout, offsets };
}

export function Chart({ title, traces, xMode = "step", log = false, smoothing = 0, smooth = false, percent = false,
                        height = 200, onZoom, syncKey = "tl", empty = "no data yet", id, xRange = null }) {
  const box = useRef(null);
  const plot = useRef(null);
  const structure = useRef("");
  const zoomRef = useRef(onZoom);
  zoomRef.current = onZoom;
  const rangeRef = useRef(xRange);
  rangeRef.current = xRange;
  const [hover, setHover] = useState(null);
  const scale = percent ? 100 : 1;
  const withData = traces.filter((t) => t.series && t.series.step.length > 0);
  const points = withData.reduce((m, t) => Math.max(m, t.series.step.length), 0);
  const sig = withData.map((t) => objectId(t.series) + ":" + t.label + ":" + t.color).join("|");

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    if (withData.length === 0) {
      if (plot.current) {
        plot.current.destroy();
        plot.current = null;
        structure.current = "";
      }
      registry.set(id || title, { title, traces: 0, points: 0 });
      return;
    }
    const { data, layout, offsets } = buildData(withData, { xMode, log, smoothing, smooth, scale });
    const smoothOn = smooth && smoothing > 0;
    const key = JSON.stringify([xMode, log, smoothOn, percent, withData.map((t) => [t.label, t.color, !!t.series.bucketed])]);
    registry.set(id || title, { title, traces: withData.length, points, series: data.length - 1 });
    if (plot.current && structure.current === key) {
      plot.current.setData(data);
      return;
    }
    if (plot.current) plot.current.destroy();
    structure.current = key;
    const series = [{}];
    const bands = [];
    withData.forEach((t, i) => {
      const lay = layout[i];
      const base = offsets[i];
      series.push({
        label: t.label,
        stroke: smoothOn ? rgba(t.color, 0.28) : t.color,
        width: smoothOn ? 1 : 1.5,
        spanGaps: true,
      });
      if (lay.sm) series.push({ label: t.label + " (smoothed)", stroke: t.color, width: 2, spanGaps: true, points: { show: false } });
      if (lay.min) {
        series.push({ label: t.label + " min", stroke: "transparent", width: 0, spanGaps: true, points: { show: false } });
        series.push({ label: t.label + " max", stroke: "transparent", width: 0, spanGaps: true, points: { show: false } });
        bands.push({ series: [base + lay.max, base + lay.min], fill: rgba(t.color, 0.13) });
      }
    });
    const width = Math.max(200, el.clientWidth || 400);
    const muted = cssVar("--muted", "#6b7280"), grid = cssVar("--grid", "#e5e7eb");
    const xAxis = { stroke: muted, grid: { stroke: grid }, ticks: { stroke: grid } };
    if (xMode === "relative") xAxis.values = (u, vals) => vals.map((v) => fmtDuration(v));
    const opts = {
      width,
      height,
      padding: [8, 12, 0, 0],
      legend: { show: false },
      scales: {
        x: { time: xMode === "wall", range: (u, min, max) => (rangeRef.current ? [rangeRef.current[0], rangeRef.current[1]] : [min, max]) },
        y: log ? { distr: 3, log: 10 } : percent ? { range: percentRange } : {},
      },
      series,
      bands,
      axes: [
        xAxis,
        { stroke: muted, grid: { stroke: grid }, ticks: { stroke: grid }, values: log ? logTicks : linearTicks,
          size: (u, values) => (values ? Math.max(36, 18 + 7 * Math.max(...values.map((v) => String(v).length))) : 40) },
      ],
      cursor: {
        sync: { key: syncKey },
        drag: { x: true, y: false, setScale: false },
        bind: {
          dblclick: () => () => {
            if (zoomRef.current) zoomRef.current(null);
            return null;
          },
        },
      },
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width > 3 && zoomRef.current) {
              const min = u.posToVal(u.select.left, "x");
              const max = u.posToVal(u.select.left + u.select.width, "x");
              zoomRef.current({ min, max });
            }
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          },
        ],
        setCursor: [
          (u) => {
            const i = u.cursor.idx;
            if (i == null) return setHover(null);
            const rows = withData.map((t, k) => {
              const lay = layout[k];
              const col = offsets[k] + (lay.sm || lay.raw);
              return { label: t.label, color: t.color, value: u.data[col][i] };
            });
            setHover({ x: u.data[0][i], rows });
          },
        ],
      },
    };
    plot.current = new uPlot(opts, data, el);
  }, [sig, xMode, log, smoothing, smooth, percent, height, xRange ? xRange[0] : null, xRange ? xRange[1] : null]);

  useEffect(() => {
    const el = box.current;
    if (!el || typeof ResizeObserver === "undefined") return;
    const ro = new ResizeObserver(() => {
      if (plot.current) plot.current.setSize({ width: Math.max(200, el.clientWidth), height });
    });
    ro.observe(el);
    return () => ro.disconnect();
  }, [height]);

  useEffect(
    () => () => {
      if (plot.current) plot.current.destroy();
      plot.current = null;
      registry.delete(id || title);
    },
    [],
  );

  const fmtX = (x) =>
    xMode === "step" ? "step " + Math.round(x) : xMode === "wall" ? new Date(x * 1000).toLocaleTimeString() : fmtDuration(x);
  const unit = percent ? "%" : "";
  return html`
    <div class="chart" data-chart=${id || title} data-series=${withData.length} data-points=${points}>
      <div class="chart-head">
        <span class="chart-title">${title}</span>
        <span class="chart-legend">
          ${(hover ? hover.rows : withData.map((t) => ({ label: t.label, color: t.color, value: null }))).map(
            (r) => html`<span class="lg"><i style=${{ background: r.color }}></i>${r.label}${r.value != null ? html`: <b>${fmtNum(r.value)}${unit}</b>` : ""}</span>`,
          )}
          ${hover && html`<span class="lg muted">${fmtX(hover.x)}</span>`}
        </span>
      </div>
      <div class="chart-plot" ref=${box}></div>
      ${withData.length === 0 && html`<div class="chart-empty" style=${{ height: height + "px" }}>${empty}</div>`}
    </div>
  `;
}
