// Live updates for every view: one connection to the daemon's global event
// stream (/api/v1/events) shared by the whole page. When the daemon has no
// global stream (404), views fall back to per-job streams
// (/api/v1/jobs/{id}/events, opened only for the jobs being watched) and to
// polling the job list. Browsers allow only a few connections per server, so
// streams are shared and reference-counted rather than opened per component.

import { openStream } from "./sse.js";
import { isFinal } from "./api.js";

function jobIdOf(data) {
  if (!data || typeof data !== "object") return null;
  const v = data.job_id != null ? data.job_id : data.id;
  return typeof v === "number" ? v : v != null && /^\d+$/.test(String(v)) ? Number(v) : null;
}

class Live {
  constructor() {
    this.mode = "connecting"; // "global" | "fallback"
    this.status = "connecting"; // shown in the header: "live", "reconnecting", "polling", "connecting"
    this.listeners = new Set(); // fn(event) for every event (global mode only)
    this.statusListeners = new Set();
    this.jobWatchers = new Map(); // jobId -> Set(fn)
    this.jobStreams = new Map(); // jobId -> {stream, final}
    this.started = false;
  }

  start() {
    if (this.started) return;
    this.started = true;
    this.global = openStream("/api/v1/events", {
      onEvent: (e) => this.dispatch(e, null),
      onStatus: (s) => {
        if (s.state === "open") {
          this.setMode("global");
          this.setStatus("live");
        } else if (s.state === "http" && (s.status === 404 || s.status === 410)) {
          this.setMode("fallback");
          this.setStatus("polling");
        } else if (s.state === "reconnecting" || s.state === "error" || s.state === "ended") {
          if (this.mode !== "fallback") this.setStatus("reconnecting");
        }
      },
    });
  }

  setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    for (const fn of this.statusListeners) fn(s);
  }

  setMode(m) {
    if (this.mode === m) return;
    this.mode = m;
    if (m === "fallback") for (const id of this.jobWatchers.keys()) this.openJobStream(id);
    for (const fn of this.statusListeners) fn(this.status);
  }

  onStatus(fn) {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  // Every event of every job (only delivered when the global stream exists; see `mode`).
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  dispatch(raw, fromJob) {
    const ev = { type: raw.type, id: raw.id, data: raw.data, jobId: fromJob != null ? fromJob : jobIdOf(raw.data) };
    if (fromJob == null) for (const fn of this.listeners) fn(ev);
    const targets =
      ev.type === "reset" && (ev.jobId == null || ev.jobId === 0) ? [...this.jobWatchers.keys()] : [ev.jobId];
    for (const id of targets) {
      if (fromJob == null && this.mode !== "global") continue;
      const set = this.jobWatchers.get(id);
      if (set) for (const fn of set) fn(ev);
    }
  }

  // Events of one job: fn(event) until the returned function is called.
  watchJob(jobId, fn) {
    jobId = Number(jobId);
    let set = this.jobWatchers.get(jobId);
    if (!set) {
      set = new Set();
      this.jobWatchers.set(jobId, set);
    }
    set.add(fn);
    if (this.mode === "fallback") this.openJobStream(jobId);
    return () => {
      set.delete(fn);
      if (set.size === 0) {
        this.jobWatchers.delete(jobId);
        const s = this.jobStreams.get(jobId);
        if (s) {
          s.stream.close();
          this.jobStreams.delete(jobId);
        }
      }
    };
  }

  openJobStream(jobId) {
    if (this.jobStreams.has(jobId)) return;
    const entry = { final: false, stream: null };
    entry.stream = openStream(`/api/v1/jobs/${jobId}/events`, {
      onEvent: (e) => {
        if ((e.type === "snapshot" || e.type === "state") && e.data && e.data.state) entry.final = isFinal(e.data.state);
        if (e.type === "deleted") entry.final = true;
        this.dispatch(e, jobId);
      },
      shouldReconnect: () => !entry.final && this.jobWatchers.has(jobId),
    });
    this.jobStreams.set(jobId, entry);
  }

  // Forget a per-job stream that ended for good, so that watching again reopens it (e.g. a job resubmitted).
  reopen(jobId) {
    const s = this.jobStreams.get(jobId);
    if (s) {
      s.stream.close();
      this.jobStreams.delete(jobId);
    }
    if (this.mode === "fallback" && this.jobWatchers.has(jobId)) this.openJobStream(jobId);
  }
}

export const live = new Live();
