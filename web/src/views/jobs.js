// The job list: newest first, filtered by state, updated live from the
// global event stream (or polled when the daemon has none), with cancel,
// delete and a selection to compare.
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ALL_STATES, api, isFinal } from "../api.js";
import { fmtAgo, fmtDuration, fmtNum, fmtPct, fmtTime } from "../format.js";
import { live } from "../live.js";
import { go, setQuery } from "../router.js";
import { ErrorBox, ProgressBar, StateBadge, progressOf, top1Of } from "../ui.js";

export function JobsView({ query }) {
  const state = query.get("state") || "";
  const [jobs, setJobs] = useState(null);
  const [error, setError] = useState(null);
  const [selected, setSelected] = useState(new Set());
  const [busy, setBusy] = useState({});
  const reloadTimer = useRef(null);
  const jobsRef = useRef(jobs);
  jobsRef.current = jobs;

  const [older, setOlder] = useState({ jobs: [], cursor: null }); // pages past the first, loaded on request
  const load = async () => {
    try {
      const d = await api(`/api/v1/jobs?limit=200${state ? "&state=" + state : ""}`);
      setJobs(d.jobs);
      setOlder((o) => (o.jobs.length ? o : { jobs: [], cursor: d.next_cursor }));
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  const loadOlder = async () => {
    try {
      const d = await api(`/api/v1/jobs?limit=200&cursor=${older.cursor}${state ? "&state=" + state : ""}`);
      setOlder((o) => ({ jobs: [...o.jobs, ...d.jobs], cursor: d.next_cursor }));
    } catch (e) {
      setError(e);
    }
  };
  const reloadSoon = () => {
    clearTimeout(reloadTimer.current);
    reloadTimer.current = setTimeout(load, 300);
  };

  useEffect(() => {
    setJobs(null);
    setOlder({ jobs: [], cursor: null });
    load();
  }, [state]);

  // live updates: patch rows in place from events; reload on anything structural
  useEffect(() => {
    const off = live.subscribe((ev) => {
      const list = jobsRef.current;
      if (!list) return;
      if (ev.type === "reset") return reloadSoon();
      if (ev.jobId == null) return;
      const i = list.findIndex((j) => j.id === ev.jobId);
      if (ev.type === "deleted") {
        if (i >= 0) setJobs(list.filter((j) => j.id !== ev.jobId));
        return;
      }
      if (i < 0) {
        if (ev.type === "state" || ev.type === "snapshot") reloadSoon(); // a new job (or one entering the filter)
        return;
      }
      const j = { ...list[i] };
      const d = ev.data || {};
      if (ev.type === "progress") {
        j.progress = { epoch: d.epoch, step: d.step, total_steps: d.total_steps };
        j.eta_seconds = d.eta_seconds;
        j.latest_metrics = { ...j.latest_metrics, ...(d.metrics || {}) };
      } else if (ev.type === "eval") {
        j.latest_metrics = { ...j.latest_metrics, ...(d.metrics || {}) };
      } else if (ev.type === "state") {
        j.state = d.state;
        j.state_reason = d.state_reason;
        j.state_message = d.state_message;
        reloadSoon(); // times, queue positions, filter membership
      } else return;
      const next = list.slice();
      next[i] = j;
      setJobs(next);
    });
    // polling: always now and then, often when there is no global stream
    let ticks = 0;
    const t = setInterval(() => {
      if (live.mode !== "global" || ++ticks % 8 === 0) load();
    }, 2000);
    return () => {
      off();
      clearInterval(t);
      clearTimeout(reloadTimer.current);
    };
  }, [state]);

  const act = async (job, what) => {
    if (what === "delete" && !confirm(`Delete job #${job.id} "${job.name}" with its metrics, logs and checkpoints?`)) return;
    setBusy({ ...busy, [job.id]: true });
    try {
      if (what === "cancel") await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
      else await api(`/api/v1/jobs/${job.id}`, { method: "DELETE" });
      await load();
    } catch (e) {
      setError(e);
    } finally {
      setBusy((b) => ({ ...b, [job.id]: false }));
    }
  };

  const toggle = (id) => {
    const s = new Set(selected);
    if (s.has(id)) s.delete(id);
    else s.add(id);
    setSelected(s);
  };

  const firstIds = new Set((jobs || []).map((j) => j.id));
  const minId = jobs && jobs.length ? Math.min(...jobs.map((j) => j.id)) : Infinity;
  const shown = jobs ? [...jobs, ...older.jobs.filter((j) => !firstIds.has(j.id) && j.id < minId)] : null;
  return html`
    <section class="panel">
      <div class="row wrap">
        <h1>Jobs</h1>
        <div class="filters" role="tablist" aria-label="filter by state">
          ${["", ...ALL_STATES].map(
            (s) => html`<button role="tab" aria-selected=${state === s} class=${"chip" + (state === s ? " on" : "")}
              onClick=${() => setQuery({ state: s })} data-state=${s || "ALL"}>${s ? s.toLowerCase() : "all"}</button>`,
          )}
        </div>
        <div class="spacer"></div>
        <button class="secondary" disabled=${selected.size < 2}
          onClick=${() => go("/compare?ids=" + [...selected].sort((a, b) => a - b).join(","))}>
          Compare ${selected.size ? `(${selected.size})` : ""}
        </button>
        <a class="button" href="#/submit">New job</a>
      </div>
      <${ErrorBox} error=${error} onClose=${() => setError(null)} />
      ${jobs == null && !error && html`<p class="muted">Loading…</p>`}
      ${jobs && jobs.length === 0 &&
      html`<div class="empty">
        <p>${state ? `No ${state.toLowerCase()} jobs.` : "No jobs yet."}</p>
        <p><a class="button" href="#/submit">Submit a training job</a></p>
      </div>`}
      ${shown && shown.length > 0 &&
      html`<div class="table-wrap"><table class="jobs">
        <thead>
          <tr>
            <th title="select to compare"></th><th>#</th><th>name</th><th>state</th><th class="w-progress">progress</th>
            <th>epoch</th><th>step</th><th>ETA</th><th>loss</th><th>top-1</th><th>img/s</th><th>created</th><th></th>
          </tr>
        </thead>
        <tbody>
          ${shown.map((j) => {
            const p = progressOf(j);
            const m = j.latest_metrics || {};
            return html`<tr key=${j.id} data-job=${j.id} data-state=${j.state}>
              <td><input type="checkbox" aria-label=${"select job " + j.id} checked=${selected.has(j.id)} onChange=${() => toggle(j.id)} /></td>
              <td class="num"><a href=${"#/jobs/" + j.id}>${j.id}</a></td>
              <td class="name"><a href=${"#/jobs/" + j.id}>${j.name}</a>${j.attempt > 1 && html` <small class="muted" title="attempts (resumed after a restart)">×${j.attempt}</small>`}</td>
              <td><${StateBadge} state=${j.state} reason=${j.state_reason} message=${j.state_message} />
                ${j.state === "QUEUED" && j.queue_position != null && html`<small class="muted"> #${j.queue_position} in queue</small>`}</td>
              <td><${ProgressBar} job=${j} /></td>
              <td class="num">${p.step > 0 || j.state === "SUCCEEDED" ? `${p.epoch}/${p.epochs}` : "–"}</td>
              <td class="num">${p.total ? `${p.step}/${p.total}` : "–"}</td>
              <td class="num">${j.state === "RUNNING" ? fmtDuration(j.eta_seconds) : "–"}</td>
              <td class="num">${fmtNum(m.loss)}</td>
              <td class="num" title=${`raw ${fmtPct(m.top1)}, EMA ${fmtPct(m.ema_top1)}`}>${fmtPct(top1Of(m))}</td>
              <td class="num">${j.state === "RUNNING" ? fmtNum(m.img_per_s, 3) : "–"}</td>
              <td title=${fmtTime(j.created_ms)}>${fmtAgo(j.created_ms)}</td>
              <td class="actions">
                ${(j.state === "RUNNING" || j.state === "QUEUED") &&
                html`<button class="danger small" disabled=${busy[j.id]} onClick=${() => act(j, "cancel")}>cancel</button>`}
                ${isFinal(j.state) && html`<button class="secondary small" disabled=${busy[j.id]} onClick=${() => act(j, "delete")}>delete</button>`}
              </td>
            </tr>`;
          })}
        </tbody>
      </table></div>
      ${older.cursor != null && html`<p><button class="secondary" onClick=${loadOlder}>Load older jobs</button></p>`}`}
    </section>
  `;
}
