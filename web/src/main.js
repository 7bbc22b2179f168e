// The dashboard's shell: header and navigation, the live-connection badge,
// the token dialog, and hash routing to the views.
import { render } from "preact";
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { getToken, setToken, setTokenAsker } from "./api.js";
import { live } from "./live.js";
import { useRoute } from "./router.js";
import { JobsView } from "./views/jobs.js";
import { JobView } from "./views/job.js";
import { CompareView } from "./views/compare.js";
import { InspectView } from "./views/inspect.js";
import { PredictView } from "./views/predict.js";
import { SubmitView } from "./views/submit.js";
import { LabelmapsView } from "./views/labelmaps.js";

// Token dialog state lives outside components so that api.js can ask from anywhere.
let dialogSetter = null;
const pendingAsks = [];

setTokenAsker(
  (reason) =>
    new Promise((resolve) => {
      pendingAsks.push(resolve);
      if (dialogSetter) dialogSetter({ open: true, reason });
    }),
);

function finishAsk(value) {
  while (pendingAsks.length) pendingAsks.shift()(value);
  if (dialogSetter) dialogSetter({ open: false, reason: "" });
}

function TokenDialog() {
  const [st, setSt] = useState({ open: pendingAsks.length > 0, reason: "" });
  const [value, setValue] = useState("");
  useEffect(() => {
    dialogSetter = setSt;
    return () => (dialogSetter = null);
  }, []);
  useEffect(() => {
    if (st.open) setValue("");
  }, [st.open]);
  if (!st.open) return null;
  const submit = (e) => {
    e.preventDefault();
    if (value.trim()) finishAsk(value.trim());
  };
  return html`
    <div class="modal-backdrop" role="presentation">
      <form class="modal" role="dialog" aria-modal="true" aria-labelledby="token-title" onSubmit=${submit}
        onKeyDown=${(e) => e.key === "Escape" && finishAsk(null)}>
        <h2 id="token-title">API token</h2>
        ${st.reason && html`<p class="error">${st.reason}</p>`}
        <p>
          Submitting, cancelling and deleting need the daemon's admin token. It is in the file <code>token</code>
          of the daemon's state folder (<code>tokenlab-data/token</code> by default); the daemon prints its path
          on first start. A daemon bound to an address other than loopback also wants a token for reading: the
          admin token, or a read-only one made with <code>tokenlabd token add --read NAME</code>. It is kept in
          this browser's storage.
        </p>
        <input
          id="token-input"
          type="password"
          autocomplete="off"
          placeholder="paste the token"
          value=${value}
          onInput=${(e) => setValue(e.target.value)}
          autofocus
        />
        <div class="row end">
          <button type="button" class="secondary" onClick=${() => finishAsk(null)}>Cancel</button>
          <button type="submit" id="token-save" disabled=${!value.trim()}>Save token</button>
        </div>
      </form>
    </div>
  `;
}

function LiveBadge() {
  const [status, setStatus] = useState(live.status);
  useEffect(() => live.onStatus(setStatus), []);
  const text = { live: "live", reconnecting: "reconnecting…", polling: "polling", connecting: "connecting…" }[status];
  const title =
    status === "polling"
      ? "The daemon has no global event stream: the job list is polled, job pages use their own streams."
      : "Live updates through Server-Sent Events";
  return html`<span class=${"live-badge " + status} title=${title}><i></i>${text}</span>`;
}

function TokenButton() {
  const [has, setHas] = useState(!!getToken());
  useEffect(() => {
    const on = () => setHas(!!getToken());
    window.addEventListener("tokenlab-token", on);
    window.addEventListener("storage", on); // other tabs
    return () => {
      window.removeEventListener("tokenlab-token", on);
      window.removeEventListener("storage", on);
    };
  }, []);
  const click = () => {
    if (has) {
      if (confirm("Forget the API token stored in this browser?")) setToken("");
    } else {
      pendingAsks.push((t) => t && setToken(t));
      if (dialogSetter) dialogSetter({ open: true, reason: "" });
    }
  };
  return html`<button class="link token-btn" onClick=${click} title=${has ? "Forget the stored API token" : "Enter the API token"}>
    ${has ? "token ✓" : "set token"}
  </button>`;
}

function NotFound() {
  return html`<div class="panel"><h2>Not found</h2><p>No such page. <a href="#/jobs">Back to the jobs</a>.</p></div>`;
}

function App() {
  const route = useRoute();
  useEffect(() => live.start(), []);
  const [a, b, c] = route.parts;
  let view;
  if (!a || a === "jobs") {
    if (!b) view = html`<${JobsView} query=${route.query} />`;
    else if (!c) view = html`<${JobView} id=${Number(b)} query=${route.query} key=${"job" + b} />`;
    else if (c === "inspect") view = html`<${InspectView} id=${Number(b)} query=${route.query} key=${"ins" + b} />`;
    else view = html`<${NotFound} />`;
  } else if (a === "compare") view = html`<${CompareView} query=${route.query} />`;
  else if (a === "predict") view = html`<${PredictView} query=${route.query} />`;
  else if (a === "submit") view = html`<${SubmitView} query=${route.query} />`;
  else if (a === "labelmaps") view = html`<${LabelmapsView} query=${route.query} />`;
  else view = html`<${NotFound} />`;
  const nav = (href, label, active) => html`<a href=${href} class=${active ? "active" : ""}>${label}</a>`;
  useEffect(() => {
    const names = { jobs: "Jobs", compare: "Compare", predict: "Predict", submit: "Submit", labelmaps: "Label maps" };
    document.title = "tokenlab · " + (b && (!a || a === "jobs") ? "job " + b : names[a || "jobs"] || "");
  }, [route.path]);
  return html`
    <header class="top">
      <a class="brand" href="#/jobs"><img src="/favicon.svg" alt="" width="22" height="22" />tokenlab</a>
      <nav>
        ${nav("#/jobs", "Jobs", !a || a === "jobs")} ${nav("#/submit", "Submit", a === "submit")}
        ${nav("#/predict", "Predict", a === "predict")} ${nav("#/labelmaps", "Label maps", a === "labelmaps")}
        ${a === "compare" && nav(location.hash, "Compare", true)}
      </nav>
      <div class="spacer"></div>
      <${LiveBadge} />
      <${TokenButton} />
      <a class="api-link" href="/api/v1/openapi.json" target="_blank" rel="noopener">API</a>
    </header>
    <main>${view}</main>
    <${TokenDialog} />
  `;
}

render(html`<${App} />`, document.getElementById("app"));
