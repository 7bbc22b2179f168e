// Small shared pieces: state badges, progress bars, error boxes, job summaries.
import { html } from "htm/preact";
import { fmtDuration, fmtNum, fmtPct } from "./format.js";

export function StateBadge({ state, reason, message }) {
  const tip = [reason, message].filter(Boolean).join(": ");
  return html`<span class=${"state " + (state || "").toLowerCase()} title=${tip}>${state}${reason && state !== "RUNNING" && state !== "QUEUED" && state !== "SUCCEEDED" ? html`<small> ${reason}</small>` : ""}</span>`;
}

export function epochsOf(job) {
  const e = job && job.spec && job.spec.train && job.spec.train.epochs;
  return Number.isInteger(e) && e > 0 ? e : 10;
}

// {frac, text} of a job's progress
export function progressOf(job) {
  const p = job.progress || {};
  const total = p.total_steps || 0;
  const frac = job.state === "SUCCEEDED" ? 1 : total > 0 ? Math.min(1, (p.step || 0) / total) : 0;
  const E = epochsOf(job);
  const epoch = job.state === "SUCCEEDED" ? E : Math.min(E, (p.epoch || 0) + (p.step > 0 ? 1 : 0));
  return { frac, epoch, epochs: E, step: p.step || 0, total };
}

export function ProgressBar({ job }) {
  const { frac } = progressOf(job);
  const cls = "progress " + (job.state || "").toLowerCase();
  return html`<div class=${cls} role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow=${Math.round(frac * 100)}>
    <div style=${{ width: (frac * 100).toFixed(1) + "%" }}></div><span>${(frac * 100).toFixed(0)}%</span>
  </div>`;
}

export function ErrorBox({ error, onClose }) {
  if (!error) return null;
  const msg = typeof error === "string" ? error : error.message || String(error);
  const code = error && error.code && !String(error.code).startsWith("HTTP_") ? error.code : "";
  return html`<div class="error-box" role="alert">
    ${code && html`<b>${code}</b> `}${msg}
    ${onClose && html`<button class="link" onClick=${onClose} aria-label="dismiss">×</button>`}
  </div>`;
}

export function top1Of(m) {
  if (!m) return null;
  return m.ema_top1 != null ? m.ema_top1 : m.top1 != null ? m.top1 : null;
}

export function MetricsSummary({ job }) {
  const m = job.latest_metrics || {};
  const items = [
    ["loss", fmtNum(m.loss)],
    ["top-1", fmtPct(m.top1)],
    ["EMA top-1", fmtPct(m.ema_top1)],
    ["top-5", fmtPct(m.top5)],
    ["img/s", fmtNum(m.img_per_s, 3)],
    ["lr", fmtNum(m.lr, 3)],
  ].filter(([, v]) => v !== "–");
  return html`<dl class="summary">
    ${items.map(([k, v]) => html`<div><dt>${k}</dt><dd>${v}</dd></div>`)}
    ${job.eta_seconds != null && html`<div><dt>ETA</dt><dd>${fmtDuration(job.eta_seconds)}</dd></div>`}
  </dl>`;
}

export function Spinner() {
  return html`<span class="spinner" aria-label="loading"></span>`;
}
