// Predict: choose a registered model, drop or pick a picture, see the top-5
// classes and the per-token prediction drawn over the part of the picture
// the model sees (the centre crop).
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../api.js";
import { fmtNum } from "../format.js";
import { classColor } from "../palette.js";
import { setQuery } from "../router.js";
import { ClassLegend, TokenCanvas, loadImage } from "../tokens.js";
import { ErrorBox } from "../ui.js";

// Any picture the browser can decode becomes a JPEG (the daemon decodes JPEG only).
async function asJpeg(file) {
  if (file.type === "image/jpeg" || /\.jpe?g$/i.test(file.name || "")) return file;
  const img = await loadImage(URL.createObjectURL(file));
  const c = document.createElement("canvas");
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(img, 0, 0);
  URL.revokeObjectURL(img.src);
  return new Promise((res, rej) => c.toBlob((b) => (b ? res(b) : rej(new Error("cannot convert the picture to JPEG"))), "image/jpeg", 0.92));
}

export function PredictView({ query }) {
  const [models, setModels] = useState(null);
  const [unavailable, setUnavailable] = useState(false);
  const [error, setError] = useState(null);
  const [image, setImage] = useState(null); // HTMLImageElement of the picked file
  const [fileName, setFileName] = useState("");
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);
  const [drag, setDrag] = useState(false);
  const [opacity, setOpacity] = useState(0.5);
  const blobRef = useRef(null);
  const name = query.get("model") || "";
  const model = models && models.find((m) => m.name === name);

  const loadModels = async () => {
    try {
      const d = await api("/api/v1/models");
      setModels(d.models || []);
      if (!name && d.models && d.models.length) {
        const ready = d.models.find((m) => m.state === "READY") || d.models[0];
        setQuery({ model: ready.name });
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) setUnavailable(true);
      else setError(e);
    }
  };
  useEffect(() => {
    loadModels();
  }, []);
  // a model still loading: look again until it is ready
  useEffect(() => {
    if (!model || model.state !== "LOADING") return;
    const t = setTimeout(loadModels, 1000);
    return () => clearTimeout(t);
  }, [models, name]);

  const predict = async (blob) => {
    if (!blob || !name) return;
    setBusy(true);
    setError(null);
    try {
      const url = `/api/v1/models/${encodeURIComponent(name)}/predict?top_k=5&tokens=true`;
      const opts = { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" }, auth: false };
      let r;
      try {
        r = await api(url, opts);
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) r = await api(url, { ...opts, auth: true });
        else throw e;
      }
      setResult(r);
    } catch (e) {
      setResult(null);
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const takeFile = async (file) => {
    if (!file) return;
    setResult(null);
    setError(null);
    setFileName(file.name || "picture");
    try {
      const blob = await asJpeg(file);
      blobRef.current = blob;
      const img = await loadImage(URL.createObjectURL(blob));
      setImage(img);
      await predict(blob);
    } catch (e) {
      setError(e);
    }
  };

  useEffect(() => {
    if (blobRef.current && model && model.state === "READY") predict(blobRef.current);
  }, [name]);

  if (unavailable)
    return html`<section class="panel"><h1>Predict</h1><p class="notice" data-test="predict-unavailable">This daemon does not serve models
      (no <code>/api/v1/models</code>).</p></section>`;

  const crop = (() => {
    if (!image || !model) return null;
    const w = image.naturalWidth,
      h = image.naturalHeight;
    const side = Math.min(w, h) * ((model.input && model.input.crop_pct) || 0.9);
    return { x: (w - side) / 2 / w, y: (h - side) / 2 / h, w: side / w, h: side / h };
  })();
  const classes = (model && model.classes) || [];
  const className = (c) => (classes[c] && classes[c].index === c ? classes[c].label : classes.find((x) => x.index === c)?.label || "class " + c);
  const tokens = result && result.tokens;
  const present = tokens ? new Set(tokens.index) : null;
  const size = image ? (image.naturalWidth >= image.naturalHeight ? 460 : Math.round((460 * image.naturalWidth) / image.naturalHeight)) : 460;

  return html`
    <section class="panel">
      <div class="row wrap">
        <h1>Predict</h1>
        <div class="spacer"></div>
        <label>model
          <select value=${name} onChange=${(e) => setQuery({ model: e.target.value })} data-test="model-select">
            ${!name && html`<option value="">choose a model…</option>`}
            ${(models || []).map((m) => html`<option value=${m.name}>${m.name} (${m.state.toLowerCase()}, ${m.num_classes} classes)</option>`)}
          </select>
        </label>
      </div>
      ${models && models.length === 0 &&
      html`<p class="notice">No model is registered. Open a finished job and use <b>Register as a model</b> next to its
        checkpoints (or upload a checkpoint with <code>PUT /api/v1/models/NAME</code>).</p>`}
      ${model &&
      html`<p class="muted small">${model.num_classes} classes · ${model.input ? model.input.size : "?"} px input · ${model.grid}×${model.grid} tokens ·
        ${fmtNum(model.params, 3)} parameters ·
        ${model.source && model.source.kind === "job" ? html`from <a href=${"#/jobs/" + model.source.job_id}>job #${model.source.job_id}</a> (${model.source.checkpoint}${model.source.ema ? ", EMA" : ""})` : "uploaded"}
        ${model.state !== "READY" && html` · <b>${model.state}</b> ${model.error || ""}`}</p>`}
      <label class=${"dropzone" + (drag ? " drag" : "")}
        onDragOver=${(e) => { e.preventDefault(); setDrag(true); }}
        onDragLeave=${() => setDrag(false)}
        onDrop=${(e) => { e.preventDefault(); setDrag(false); takeFile(e.dataTransfer.files[0]); }}>
        <input type="file" accept="image/*" data-test="file-input" onChange=${(e) => {
          takeFile(e.target.files[0]);
          e.target.value = ""; // choosing the same file again predicts again
        }} />
        <span>${busy ? "Predicting…" : html`Drop a picture here or <u>choose a file</u>`}${fileName && !busy ? html` <span class="muted">(${fileName})</span>` : ""}</span>
      </label>
      <${ErrorBox} error=${error} onClose=${() => setError(null)} />
    </section>
    ${image &&
    html`<section class="panel predict-result">
      <div class="pair">
        <${TokenCanvas} image=${image} grid=${tokens ? tokens.grid : 0} index=${tokens ? tokens.index : null} score=${tokens ? tokens.score : null}
          className=${className} opacity=${opacity} size=${size} crop=${crop} title=${tokens ? "token predictions over the centre crop the model sees" : "picture"}
          test="predict-canvas" />
        <div class="top5-box">
          <h2>Top 5</h2>
          ${result
            ? html`<ol class="bars" data-test="top5">${result.predictions.map(
                (p) => html`<li><span class="bar-label"><i class="swatch" style=${{ background: classColor(p.index) }}></i>${p.label}</span>
                  <span class="bar"><span style=${{ width: (p.score * 100).toFixed(1) + "%", background: classColor(p.index) }}></span></span>
                  <b>${(p.score * 100).toFixed(1)}%</b></li>`,
              )}</ol>
              ${result.timing_ms && html`<p class="muted small">decode ${fmtNum(result.timing_ms.decode, 3)} ms · queue ${fmtNum(result.timing_ms.queue, 3)} ms · inference ${fmtNum(result.timing_ms.infer, 3)} ms</p>`}`
            : html`<p class="muted">${busy ? "…" : "no prediction"}</p>`}
          <label>overlay <input type="range" min="0" max="1" step="0.05" value=${opacity} onInput=${(e) => setOpacity(Number(e.target.value))} /></label>
          ${tokens && html`<${ClassLegend} classes=${classes} present=${present} title="Token classes" />`}
        </div>
      </div>
    </section>`}
  `;
}
