// One job: its state, progress and message, live charts, state history,
// checkpoints, spec and log; actions (cancel, delete, clone, register as a
// model, inspect tokens, compare).
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api, isFinal } from "../api.js";
import { COLORS, Chart } from "../chart.js";
import { fmtBytes, fmtDuration, fmtTime } from "../format.js";
import { live } from "../live.js";
import { ChartControls, toStepRange, usePersisted, useSeriesSet, useThrottledRefresh, xExtent } from "../metrics.js";
import { go } from "../router.js";
import { labelmapHref } from "./labelmaps.js";
import { ErrorBox, MetricsSummary, ProgressBar, StateBadge, progressOf } from "../ui.js";

export const JOB_CHARTS = [
  { id: "loss", title: "Training loss", metrics: [["loss", "loss"], ["loss_cls", "loss_cls"], ["loss_dense", "loss_dense"]], smooth: true },
  { id: "top1", title: "Validation top-1 (%)", metrics: [["top1", "raw"], ["ema_top1", "EMA"]], percent: true },
  { id: "top5", title: "Validation top-5 (%)", metrics: [["top5", "raw"], ["ema_top5", "EMA"]], percent: true },
  { id: "val_loss", title: "Validation loss", metrics: [["val_loss", "raw"], ["ema_val_loss", "EMA"]] },
  { id: "lr", title: "Learning rate", metrics: [["lr", "lr"]] },
  { id: "img_per_s", title: "Training images/s", metrics: [["img_per_s", "img/s"]], smooth: true },
];
const NAMES = JOB_CHARTS.flatMap((c) => c.metrics.map((m) => m[0]));
const EMPTY = { name: "", bucketed: false, step: [], time: [], last: [], min: [], max: [] };

export function JobView({ id }) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const [gone, setGone] = useState(false);
  const [ckpts, setCkpts] = useState(null);
  const [busy, setBusy] = useState(false);
  const [xMode, setXMode] = usePersisted("xMode", "step");
  const [logScale, setLogScale] = usePersisted("logScale", false);
  const [smoothing, setSmoothing] = usePersisted("smoothing", 0.6);
  const [stepRange, setStepRange] = useState(null);
  const running = !!job && !isFinal(job.state);
  const refresh = useThrottledRefresh(running);
  const logPoke = useRef(null);

  const loadJob = async () => {
    try {
      setJob(await api(`/api/v1/jobs/${id}`));
      setError(null);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) setGone(true);
      else setError(e);
    }
  };
  const loadCkpts = async () => {
    try {
      setCkpts((await api(`/api/v1/jobs/${id}/checkpoints`)).checkpoints);
    } catch {
      /* shown as empty */
    }
  };

  useEffect(() => {
    loadJob();
    loadCkpts();
    return live.watchJob(id, (ev) => {
      const d = ev.data || {};
      switch (ev.type) {
        case "progress":
          setJob((j) => j && { ...j, progress: { epoch: d.epoch, step: d.step, total_steps: d.total_steps },
            eta_seconds: d.eta_seconds, latest_metrics: { ...j.latest_metrics, ...(d.metrics || {}) } });
          refresh.mark();
          break;
        case "eval":
          setJob((j) => j && { ...j, latest_metrics: { ...j.latest_metrics, ...(d.metrics || {}) } });
          refresh.mark();
          break;
        case "state":
        case "reset":
          loadJob();
          loadCkpts();
          refresh.now();
          if (logPoke.current) logPoke.current();
          break;
        case "snapshot":
          setJob((j) => (j ? { ...j, ...d, state_history: j.state_history } : j));
          break;
        case "checkpoint":
          loadCkpts();
          break;
        case "log":
          if (logPoke.current) logPoke.current();
          break;
        case "deleted":
          setGone(true);
          break;
      }
    });
  }, [id]);

  const { set } = useSeriesSet([id], NAMES, { range: stepRange, version: stepRange ? -1 : refresh.version });
  const loss = set[id + "/loss"];
  const t0 = loss && loss.time.length ? loss.time[0] : job && job.started_ms ? job.started_ms / 1000 : 0;
  const allSeries = NAMES.map((n) => set[id + "/" + n]).filter(Boolean);
  const xRange = xExtent(allSeries, xMode, allSeries.map(() => t0));
  const onZoom = (z) => {
    if (!z) return setStepRange(null);
    setStepRange(toStepRange(z, xMode, allSeries, allSeries.map(() => t0)));
  };

  if (gone)
    return html`<section class="panel"><h1>Job #${id}</h1><p>No such job (it may have been deleted). <a href="#/jobs">All jobs</a></p></section>`;
  if (!job) return html`<section class="panel"><${ErrorBox} error=${error} />${!error && html`<p class="muted">Loading job #${id}…</p>`}</section>`;

  const p = progressOf(job);
  // annotate jobs write a label map (spec.data.out, relative to the data root)
  const annotate = job.spec && job.spec.kind === "annotate" && job.spec.data && job.spec.data.out ? { out: job.spec.data.out } : null;
  const act = async (what) => {
    if (what === "delete" && !confirm(`Delete job #${id} with its metrics, logs and checkpoints?`)) return;
    setBusy(true);
    try {
      if (what === "cancel") await api(`/api/v1/jobs/${id}/cancel`, { method: "POST" });
      else {
        await api(`/api/v1/jobs/${id}`, { method: "DELETE" });
        go("/jobs");
        return;
      }
      await loadJob();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return html`
    <section class="panel job-head">
      <div class="row wrap">
        <h1><span class="muted">#${job.id}</span> ${job.name}</h1>
        <${StateBadge} state=${job.state} reason=${job.state_reason} message=${job.state_message} />
        <div class="spacer"></div>
        ${(job.state === "RUNNING" || job.state === "QUEUED") &&
        html`<button class="danger" disabled=${busy} onClick=${() => act("cancel")}>Cancel</button>`}
        ${annotate
          ? job.state === "SUCCEEDED"
            ? html`<a class="button" href=${labelmapHref({ path: annotate.out })} data-test="open-labelmap"
                title=${"the label map this job wrote: " + annotate.out}>Open label map</a>`
            : html`<span class="button secondary disabled" data-test="open-labelmap"
                title=${"the job writes " + annotate.out + "; it can be opened once the job has succeeded"}>Open label map</span>`
          : html`<a class="button secondary" href=${`#/jobs/${id}/inspect`}>Inspect tokens</a>`}
        <a class="button secondary" href=${`#/submit?from=${id}`} title="a new job with this spec">Clone</a>
        ${isFinal(job.state) && html`<button class="secondary" disabled=${busy} onClick=${() => act("delete")}>Delete</button>`}
      </div>
      ${job.state_message && html`<p class=${"message " + (job.state === "FAILED" ? "error" : "")} data-test="state-message">${job.state_message}</p>`}
      <div class="progress-line">
        <${ProgressBar} job=${job} />
        <span>epoch <b>${p.step > 0 || job.state === "SUCCEEDED" ? p.epoch : 0}</b>/${p.epochs} · step <b>${p.step}</b>/${p.total || "?"}
          ${job.state === "RUNNING" && job.eta_seconds != null && html` · ETA <b>${fmtDuration(job.eta_seconds)}</b>`}
          ${job.state === "QUEUED" && job.queue_position != null && html` · position ${job.queue_position} in the queue`}
          ${job.attempt > 1 && html` · attempt ${job.attempt}`}</span>
      </div>
      <${InitSource} init=${job.init} />
      <${Ranks} dist=${job.distributed} />
      <${MetricsSummary} job=${job} />
      <${ErrorBox} error=${error} onClose=${() => setError(null)} />
    </section>

    <section class="panel">
      <div class="row wrap">
        <h2>Metrics</h2>
        <div class="spacer"></div>
        <${CompareWith} id=${id} />
      </div>
      <${ChartControls} xMode=${xMode} setXMode=${setXMode} log=${logScale} setLog=${setLogScale}
        smoothing=${smoothing} setSmoothing=${setSmoothing} zoomed=${!!stepRange} resetZoom=${() => setStepRange(null)} />
      ${stepRange && html`<p class="hint">showing steps ${stepRange.start}–${stepRange.end} at full detail</p>`}
      <div class="charts">
        ${JOB_CHARTS.map(
          (c) => html`<${Chart} key=${c.id} id=${c.id} title=${c.title} xMode=${xMode} log=${logScale} smoothing=${smoothing}
            smooth=${!!c.smooth} percent=${!!c.percent} onZoom=${onZoom} xRange=${xRange}
            empty=${c.percent || c.id === "val_loss" ? "no evaluation yet" : "no data yet"}
            traces=${c.metrics.map(([name, label], k) => ({ label, color: COLORS[k], series: set[id + "/" + name] || EMPTY, t0 }))} />`,
        )}
      </div>
    </section>

    <div class="grid2">
      <section class="panel">
        <h2>State history</h2>
        <table class="compact">
          <thead><tr><th>time</th><th>state</th><th>reason</th><th>message</th></tr></thead>
          <tbody>
            ${(job.state_history || []).map(
              (h) => html`<tr><td title=${new Date(h.time_ms).toISOString()}>${fmtTime(h.time_ms)}</td>
                <td>${h.from ? html`<span class="muted">${h.from} →</span> ` : ""}<b>${h.to}</b></td>
                <td>${h.reason}</td><td class="msg">${h.message}</td></tr>`,
            )}
          </tbody>
        </table>
        <p class="muted small">created ${fmtTime(job.created_ms)}${job.started_ms ? " · started " + fmtTime(job.started_ms) : ""}${job.ended_ms ? " · ended " + fmtTime(job.ended_ms) : ""}${job.started_ms && job.ended_ms ? " · took " + fmtDuration((job.ended_ms - job.started_ms) / 1000) : ""}</p>
        <h2>Checkpoints</h2>
        ${!ckpts || ckpts.length === 0
          ? html`<p class="muted">none yet</p>`
          : html`<table class="compact" data-test="checkpoints">
              <thead><tr><th>step</th><th>kind</th><th>size</th><th>written</th></tr></thead>
              <tbody>${ckpts.map((c) => html`<tr><td class="num">${c.step}</td><td>${c.kind}</td><td class="num">${fmtBytes(c.bytes)}</td><td>${fmtTime(c.time_ms)}</td></tr>`)}</tbody>
            </table>`}
        ${ckpts && ckpts.length > 0 && html`<${RegisterModel} job=${job} ckpts=${ckpts} />`}
      </section>
      <section class="panel">
        <h2>Spec</h2>
        <pre class="spec" data-test="spec">${JSON.stringify(job.spec, null, 2)}</pre>
      </section>
    </div>

    <section class="panel">
      <${LogView} jobId=${id} active=${running} pokeRef=${logPoke} />
    </section>
  `;
}

// Where a fine-tuned job started (Job.init): the source with a link, then what was loaded.
function InitSource({ init }) {
  if (!init) return null;
  const ck = init.checkpoint == null ? "" : typeof init.checkpoint === "number" ? `step ${init.checkpoint}` : init.checkpoint;
  const src = init.model != null
    ? html`model <a href=${"#/predict?model=" + encodeURIComponent(init.model)} data-test="init-model">${init.model}</a>`
    : html`job <a href=${"#/jobs/" + init.job_id} data-test="init-job">#${init.job_id}</a>, ${ck} checkpoint`;
  const parts = [];
  if (init.step != null) parts.push(html`step <b>${init.step}</b>`);
  if (init.ema != null) parts.push(init.ema ? "EMA weights" : "raw weights");
  if (init.head) parts.push(html`head <b>${init.head}</b>${init.head === "match" && init.classes_matched != null ? ` (${init.classes_matched} classes matched)` : ""}`);
  if (init.pos_embed) parts.push(html`position embedding ${init.pos_embed.from}×${init.pos_embed.from} → ${init.pos_embed.to}×${init.pos_embed.to}`);
  return html`<p class="init-source" data-test="init-source">Fine-tuned from ${src}${parts.map((p) => html` · ${p}`)}
    ${!init.loaded && html` <span class="muted">(as asked; not loaded yet)</span>`}</p>`;
}

// A distributed job (Job.distributed): the ranks it runs on, each rank's host and images/s at the latest step.
function Ranks({ dist }) {
  if (!dist) return null;
  const fewer = dist.ranks < dist.ranks_requested ? html` <span class="muted">(of ${dist.ranks_requested} asked for)</span>` : "";
  const comm = dist.comm_seconds != null ? html` · gradient sum ${(dist.comm_seconds * 1000).toFixed(1)} ms per step` : "";
  const rows = dist.hosts.length ? dist.hosts : Array.from({ length: dist.ranks }, () => "?");
  return html`<div class="ranks" data-test="ranks"><p><b>${dist.ranks}</b> ranks${fewer}${comm}</p>
    <table class="ranks-table"><thead><tr><th>rank</th><th>host</th><th>images/s</th></tr></thead><tbody>
      ${rows.map((h, k) => html`<tr data-test="rank-row"><td>${k}</td><td>${h}</td>
        <td>${dist.rank_img_per_s[k] != null ? dist.rank_img_per_s[k].toFixed(0) : "–"}</td></tr>`)}
    </tbody></table></div>`;
}

function CompareWith({ id }) {
  const [jobs, setJobs] = useState(null);
  const open = async () => {
    if (jobs) return;
    try {
      setJobs((await api("/api/v1/jobs?limit=100")).jobs.filter((j) => j.id !== id));
    } catch {
      setJobs([]);
    }
  };
  return html`<label class="compare-with">compare with
    <select onFocus=${open} onMouseDown=${open} onChange=${(e) => e.target.value && go(`/compare?ids=${id},${e.target.value}`)}>
      <option value="">choose a job…</option>
      ${(jobs || []).map((j) => html`<option value=${j.id}>#${j.id} ${j.name} (${j.state.toLowerCase()})</option>`)}
    </select></label>`;
}

function RegisterModel({ job, ckpts }) {
  const [open, setOpen] = useState(false);
  const [name, setName] = useState(
    (job.name || "job").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 48) + "-" + job.id,
  );
  const hasBest = ckpts.some((c) => c.kind === "best");
  const [which, setWhich] = useState(hasBest ? "best" : "last");
  const [msg, setMsg] = useState(null);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      const m = await api("/api/v1/models", { method: "POST", json: { name, job_id: job.id, checkpoint: which } });
      setMsg(m.name);
    } catch (err) {
      setError(err.status === 404 && err.code === "NOT_FOUND" && !err.pointer
        ? "This daemon does not serve models (no /api/v1/models)." : err);
    }
  };
  if (!open) return html`<button class="secondary" onClick=${() => setOpen(true)} data-test="register-model">Register as a model…</button>`;
  return html`<form class="inline-form" onSubmit=${submit}>
    <label>model name <input value=${name} onInput=${(e) => setName(e.target.value)} pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}" required /></label>
    <label>checkpoint <select value=${which} onChange=${(e) => setWhich(e.target.value)}>
      ${hasBest && html`<option value="best">best</option>`}<option value="last">last</option></select></label>
    <button type="submit">Register</button>
    ${msg && html`<span class="ok">Registered <b>${msg}</b>: <a href=${"#/predict?model=" + encodeURIComponent(msg)}>predict with it</a></span>`}
    <${ErrorBox} error=${error} />
  </form>`;
}

const LOG_KEEP = 512 * 1024;

function LogView({ jobId, active, pokeRef }) {
  const [text, setText] = useState("");
  const [follow, setFollow] = useState(true);
  const [error, setError] = useState(null);
  const offset = useRef(0);
  const inflight = useRef(false);
  const again = useRef(false);
  const pre = useRef(null);

  const fetchMore = async () => {
    if (inflight.current) {
      again.current = true;
      return;
    }
    inflight.current = true;
    try {
      let add = "";
      for (let i = 0; i < 16; i++) {
        const d = await api(`/api/v1/jobs/${jobId}/logs?offset=${offset.current}&limit_bytes=262144`);
        add += d.text || "";
        offset.current = d.next_offset;
        if (d.eof || !d.text) break;
      }
      if (add) setText((t) => (t + add).slice(-LOG_KEEP));
      setError(null);
    } catch (e) {
      setError(e);
    } finally {
      inflight.current = false;
      if (again.current) {
        again.current = false;
        fetchMore();
      }
    }
  };
  pokeRef.current = fetchMore;

  useEffect(() => {
    offset.current = 0;
    setText("");
    fetchMore();
  }, [jobId]);
  useEffect(() => {
    if (!active) {
      fetchMore();
      return;
    }
    const t = setInterval(fetchMore, 2000);
    return () => clearInterval(t);
  }, [active, jobId]);
  useEffect(() => {
    if (follow && pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text, follow]);

  return html`
    <div class="row">
      <h2>Log</h2>
      <div class="spacer"></div>
      <label class="check"><input type="checkbox" checked=${follow} onChange=${(e) => setFollow(e.target.checked)} /> follow</label>
    </div>
    <${ErrorBox} error=${error} />
    <pre class="log" ref=${pre} data-test="log"
      onScroll=${(e) => {
        const el = e.target;
        const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
        if (follow !== atEnd) setFollow(atEnd);
      }}>${text || html`<span class="muted">(empty)</span>`}</pre>
  `;
}
