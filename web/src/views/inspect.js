// Token inspection: for each of the job's inspection samples, the picture
// the model sees with its target token labels and the model's per-token
// predictions side by side, at any recorded evaluation (step slider, raw or
// EMA weights); hover a token for its top classes.
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../api.js";
import { live } from "../live.js";
import { classColor } from "../palette.js";
import { ClassLegend, TokenCanvas, loadImage } from "../tokens.js";
import { ErrorBox } from "../ui.js";
import { setQuery } from "../router.js";

export function InspectView({ id, query }) {
  const [job, setJob] = useState(null);
  const [meta, setMeta] = useState(null);
  const [unavailable, setUnavailable] = useState(false);
  const [error, setError] = useState(null);
  const [details, setDetails] = useState({});
  const [images, setImages] = useState({});
  const [opacity, setOpacity] = useState(0.55);
  const [split, setSplit] = useState("");
  const followLatest = useRef(!query.get("step"));

  const steps = meta ? [...new Set(meta.steps.map((s) => s.step))].sort((a, b) => a - b) : [];
  const qStep = query.get("step") != null ? Number(query.get("step")) : null;
  const step = qStep != null && steps.includes(qStep) ? qStep : steps.length ? steps[steps.length - 1] : null;
  const variants = meta && step != null ? meta.steps.filter((s) => s.step === step).map((s) => !!s.ema) : [];
  const qEma = query.get("ema");
  const ema = variants.length === 0 ? null : variants.includes(qEma !== "0") ? qEma !== "0" : variants[0];

  const loadMeta = async () => {
    try {
      const m = await api(`/api/v1/jobs/${id}/samples`);
      setMeta(m);
      setError(null);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        // the job exists but the daemon has no inspection API, or the job is gone
        try {
          await api(`/api/v1/jobs/${id}`);
          setUnavailable(true);
        } catch (e2) {
          setError(e2);
        }
      } else setError(e);
    }
  };

  useEffect(() => {
    api(`/api/v1/jobs/${id}`).then(setJob, () => {});
    loadMeta();
    return live.watchJob(id, (ev) => {
      if (ev.type === "inspect" || ev.type === "state" || ev.type === "reset") loadMeta();
    });
  }, [id]);

  // the sample pictures (the same crop at every step)
  useEffect(() => {
    if (!meta) return;
    for (const s of meta.samples)
      if (!images[s.k])
        api(`/api/v1/jobs/${id}/samples/${s.k}/image`, { raw: true }) // through api(): it sends the token
          .then(async (r) => {
            const url = URL.createObjectURL(await r.blob());
            try {
              return await loadImage(url);
            } finally {
              URL.revokeObjectURL(url);
            }
          })
          .then(
          (img) => setImages((m) => ({ ...m, [s.k]: img })),
          () => {},
        );
  }, [meta]);

  // per-sample targets and predictions at the chosen step
  useEffect(() => {
    if (!meta || !meta.samples.length) return;
    const ctrl = new AbortController();
    const q = step != null ? `?step=${step}&ema=${ema ? 1 : 0}` : "";
    Promise.all(
      meta.samples.map((s) =>
        api(`/api/v1/jobs/${id}/samples/${s.k}${q}`, { signal: ctrl.signal }).then((d) => [s.k, d], (e) => [s.k, { error: e }]),
      ),
    ).then((pairs) => {
      if (ctrl.signal.aborted) return;
      const out = {};
      for (const [k, d] of pairs) out[k] = d;
      setDetails(out);
    }, () => {});
    return () => ctrl.abort();
  }, [meta, step, ema]);

  // follow the newest evaluation unless the user picked a step
  useEffect(() => {
    if (followLatest.current && qStep != null && steps.length && qStep !== steps[steps.length - 1]) setQuery({ step: null });
  }, [steps.length]);

  const title = html`<h1>Token inspection <span class="muted">· <a href=${"#/jobs/" + id}>#${id} ${job ? job.name : ""}</a></span></h1>`;
  if (unavailable)
    return html`<section class="panel">${title}<p class="notice" data-test="inspect-unavailable">
      This daemon does not record token inspections (no <code>GET /api/v1/jobs/${id}/samples</code>). A daemon
      with inspection support records a fixed set of samples at every evaluation.</p></section>`;
  if (!meta) return html`<section class="panel">${title}<${ErrorBox} error=${error} />${!error && html`<p class="muted">Loading…</p>`}</section>`;

  const className = (c) => {
    const cl = meta.classes && meta.classes[c];
    return cl && cl.index === c ? cl.label : (meta.classes || []).find((x) => x.index === c)?.label || "class " + c;
  };
  const present = new Set();
  for (const d of Object.values(details)) {
    if (!d || d.error) continue;
    (d.target?.index || []).forEach((c) => present.add(c));
    (d.pred?.index || []).forEach((c) => present.add(c));
  }
  const splits = [...new Set(meta.samples.map((s) => s.split))];
  const samples = meta.samples.filter((s) => !split || s.split === split);
  const si = step != null ? steps.indexOf(step) : -1;

  return html`
    <section class="panel">
      ${title}
      <p class="muted small">The ${meta.samples.length} pictures below are the job's inspection samples: the ${meta.size}×${meta.size} px crops
        the model sees, with its ${meta.grid}×${meta.grid} token grid. Left: the token labels the model is trained on
        (${meta.samples.some((s) => s.target_kind === "labelmap") ? "from the label maps" : "the picture's class on every token"}); right: the
        model's prediction for each token. Colour = class, strength = probability. Hover a token for its top classes.</p>
      <div class="inspect-controls">
        ${steps.length === 0
          ? html`<span class="notice">No evaluation recorded yet: predictions appear after the job's first evaluation.</span>`
          : html`<label class="step-slider">step
              <input type="range" min="0" max=${steps.length - 1} value=${si} data-test="step-slider"
                onInput=${(e) => {
                  const i = Number(e.target.value);
                  followLatest.current = i === steps.length - 1;
                  setQuery({ step: i === steps.length - 1 ? null : steps[i] });
                }} />
              <b data-test="step-value">${step}</b> <span class="muted">(evaluation ${si + 1} of ${steps.length})</span>
            </label>`}
        ${variants.length > 1 &&
        html`<label class="check"><input type="checkbox" checked=${!!ema} onChange=${(e) => setQuery({ ema: e.target.checked ? 1 : 0 })} /> EMA weights</label>`}
        ${variants.length === 1 && html`<span class="muted">${ema ? "EMA weights" : "raw weights"}</span>`}
        <label>overlay <input type="range" min="0" max="1" step="0.05" value=${opacity} onInput=${(e) => setOpacity(Number(e.target.value))} /></label>
        ${splits.length > 1 &&
        html`<label>split <select value=${split} onChange=${(e) => setSplit(e.target.value)}>
          <option value="">all</option>${splits.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>`}
      </div>
      <${ClassLegend} classes=${meta.classes || []} present=${meta.classes && meta.classes.length > 24 ? present : null} />
      <${ErrorBox} error=${error} onClose=${() => setError(null)} />
    </section>
    <div class="samples">
      ${samples.map((s) => {
        const d = details[s.k];
        const img = images[s.k];
        const top = d && d.pred && d.pred.top5 ? d.pred.top5[0] : null;
        const right = top && top.index === s.label;
        return html`<section class="panel sample" key=${s.k} data-sample=${s.k}>
          <div class="sample-head">
            <b>${s.label_name}</b> <span class="muted small">${s.split} · ${s.path}</span>
            ${top && html`<span class=${"verdict " + (right ? "ok" : "bad")}>${right ? "✓" : "✗"} ${top.label} ${(top.score * 100).toFixed(0)}%</span>`}
          </div>
          ${d && d.error && html`<${ErrorBox} error=${d.error} />`}
          <div class="pair">
            <${TokenCanvas} image=${img} grid=${meta.grid} index=${d?.target?.index} score=${d?.target?.score} topk=${d?.target?.topk}
              className=${className} opacity=${opacity} size=${200} title="target" test="target-canvas" />
            ${d && d.pred
              ? html`<${TokenCanvas} image=${img} grid=${meta.grid} index=${d.pred.index} score=${d.pred.score} topk=${d.pred.topk}
                  className=${className} opacity=${opacity} size=${200} title="prediction" test="pred-canvas" />`
              : html`<figure class="tokens"><figcaption>prediction</figcaption><div class="tokens-empty" style=${{ width: "200px", height: "200px" }}>no evaluation yet</div></figure>`}
          </div>
          ${d && d.pred && d.pred.top5 &&
          html`<ol class="top5 small">${d.pred.top5.map((p) => html`<li class=${p.index === s.label ? "hit" : ""}>
            <i class="swatch" style=${{ background: classColor(p.index) }}></i>${p.label} <b>${(p.score * 100).toFixed(1)}%</b></li>`)}</ol>`}
        </section>`;
      })}
    </div>
  `;
}
