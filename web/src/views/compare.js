// Two or more jobs overlaid: one chart per metric with a line per job, and
// the differences between their specs.
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { api, isFinal } from "../api.js";
import { COLORS, Chart } from "../chart.js";
import { live } from "../live.js";
import { ChartControls, toStepRange, usePersisted, useSeriesSet, useThrottledRefresh, xExtent } from "../metrics.js";
import { go } from "../router.js";
import { ErrorBox, StateBadge } from "../ui.js";

const CHARTS = [
  ["loss", "Training loss", { smooth: true }],
  ["loss_cls", "Class-token loss", { smooth: true }],
  ["loss_dense", "Token-labeling loss", { smooth: true }],
  ["top1", "Validation top-1 (%)", { percent: true }],
  ["ema_top1", "Validation top-1, EMA (%)", { percent: true }],
  ["top5", "Validation top-5 (%)", { percent: true }],
  ["ema_top5", "Validation top-5, EMA (%)", { percent: true }],
  ["val_loss", "Validation loss", {}],
  ["lr", "Learning rate", {}],
  ["img_per_s", "Training images/s", { smooth: true }],
];
const NAMES = CHARTS.map((c) => c[0]);
const EMPTY = { name: "", bucketed: false, step: [], time: [], last: [], min: [], max: [] };

// {"/train/lr": 0.001, ...}: the leaves of a JSON value by JSON pointer (arrays are leaves).
export function flatten(v, prefix = "", out = {}) {
  if (v && typeof v === "object" && !Array.isArray(v)) {
    for (const k of Object.keys(v)) flatten(v[k], prefix + "/" + k.replace(/~/g, "~0").replace(/\//g, "~1"), out);
    if (!Object.keys(v).length && prefix) out[prefix] = {};
  } else out[prefix || "/"] = v;
  return out;
}

export function specDiff(specs) {
  const flats = specs.map((s) => flatten(s || {}));
  const keys = [...new Set(flats.flatMap((f) => Object.keys(f)))].sort();
  return keys
    .filter((k) => {
      const vals = flats.map((f) => (k in f ? JSON.stringify(f[k]) : undefined));
      return vals.some((v) => v !== vals[0]);
    })
    .map((k) => ({ key: k, values: flats.map((f) => (k in f ? f[k] : undefined)) }));
}

export function CompareView({ query }) {
  const ids = (query.get("ids") || "")
    .split(",")
    .map((s) => parseInt(s, 10))
    .filter((n) => n > 0)
    .filter((n, i, a) => a.indexOf(n) === i);
  const [jobs, setJobs] = useState({});
  const [all, setAll] = useState([]);
  const [error, setError] = useState(null);
  const [xMode, setXMode] = usePersisted("cmpXMode", "step");
  const [logScale, setLogScale] = usePersisted("logScale", false);
  const [smoothing, setSmoothing] = usePersisted("smoothing", 0.6);
  const [stepRange, setStepRange] = useState(null);
  const anyRunning = ids.some((id) => jobs[id] && !isFinal(jobs[id].state));
  const refresh = useThrottledRefresh(anyRunning);

  const loadJobs = async () => {
    const out = {};
    await Promise.all(
      ids.map(async (id) => {
        try {
          out[id] = await api(`/api/v1/jobs/${id}`);
        } catch (e) {
          out[id] = { id, name: "(unavailable)", state: "?", error: e, spec: {} };
        }
      }),
    );
    setJobs(out);
  };

  useEffect(() => {
    loadJobs();
    api("/api/v1/jobs?limit=100").then((d) => setAll(d.jobs), (e) => setError(e));
    const offs = ids.map((id) =>
      live.watchJob(id, (ev) => {
        if (ev.type === "progress" || ev.type === "eval") refresh.mark();
        if (ev.type === "state") {
          loadJobs();
          refresh.now();
        }
      }),
    );
    return () => offs.forEach((f) => f());
  }, [ids.join(",")]);

  const { set } = useSeriesSet(ids, NAMES, { range: stepRange, version: stepRange ? -1 : refresh.version });
  const t0 = (id) => {
    const s = set[id + "/loss"];
    return s && s.time.length ? s.time[0] : jobs[id] && jobs[id].started_ms ? jobs[id].started_ms / 1000 : 0;
  };
  const list = [],
    t0s = [];
  for (const id of ids)
    for (const n of NAMES) {
      list.push(set[id + "/" + n]);
      t0s.push(t0(id));
    }
  const xRange = xMode === "wall" ? null : xExtent(list, xMode, t0s);
  const onZoom = (z) => {
    if (!z) return setStepRange(null);
    setStepRange(toStepRange(z, xMode, list, t0s));
  };
  const setIds = (next) => go("/compare?ids=" + next.join(","));
  const diff = specDiff(ids.map((id) => (jobs[id] ? jobs[id].spec : {})));
  const label = (id) => `#${id} ${jobs[id] ? jobs[id].name : ""}`;

  return html`
    <section class="panel">
      <div class="row wrap">
        <h1>Compare jobs</h1>
        <div class="spacer"></div>
        <label>add a job
          <select onChange=${(e) => e.target.value && setIds([...ids, Number(e.target.value)])}>
            <option value="">choose…</option>
            ${all.filter((j) => !ids.includes(j.id)).map((j) => html`<option value=${j.id}>#${j.id} ${j.name}</option>`)}
          </select>
        </label>
      </div>
      <${ErrorBox} error=${error} onClose=${() => setError(null)} />
      ${ids.length < 2 && html`<p class="hint">Choose at least two jobs (tick them in the <a href="#/jobs">job list</a>, or add them here).</p>`}
      <ul class="cmp-jobs">
        ${ids.map(
          (id, i) => html`<li key=${id}><i class="swatch" style=${{ background: COLORS[i % COLORS.length] }}></i>
            <a href=${"#/jobs/" + id}>${label(id)}</a> ${jobs[id] && html`<${StateBadge} state=${jobs[id].state} />`}
            <button class="link" title="remove from the comparison" onClick=${() => setIds(ids.filter((x) => x !== id))}>×</button></li>`,
        )}
      </ul>
      <h2>Spec differences</h2>
      ${diff.length === 0
        ? html`<p class="muted">${ids.length > 1 ? "The specs are identical." : "–"}</p>`
        : html`<div class="table-wrap"><table class="compact diff" data-test="spec-diff">
            <thead><tr><th>field</th>${ids.map((id, i) => html`<th><i class="swatch" style=${{ background: COLORS[i % COLORS.length] }}></i>${label(id)}</th>`)}</tr></thead>
            <tbody>${diff.map(
              (d) => html`<tr data-key=${d.key}><td><code>${d.key}</code></td>${d.values.map(
                (v) => html`<td>${v === undefined ? html`<span class="muted">default</span>` : html`<code>${JSON.stringify(v)}</code>`}</td>`,
              )}</tr>`,
            )}</tbody>
          </table></div>`}
    </section>
    <section class="panel">
      <${ChartControls} xMode=${xMode} setXMode=${setXMode} log=${logScale} setLog=${setLogScale}
        smoothing=${smoothing} setSmoothing=${setSmoothing} zoomed=${!!stepRange} resetZoom=${() => setStepRange(null)} />
      <div class="charts">
        ${CHARTS.map(
          ([name, title, o]) => html`<${Chart} key=${name} id=${"cmp-" + name} title=${title} xMode=${xMode} log=${logScale}
            smoothing=${smoothing} smooth=${!!o.smooth} percent=${!!o.percent} onZoom=${onZoom} xRange=${xRange}
            traces=${ids.map((id, i) => ({ label: label(id), color: COLORS[i % COLORS.length], series: set[id + "/" + name] || EMPTY, t0: t0(id) }))} />`,
        )}
      </div>
    </section>
  `;
}
