// Submit a training job: a form for the common fields and a JSON editor for
// everything, both editing one spec, checked against the job schema (and the
// daemon's cross-field rules) before anything is sent; the daemon's own
// refusal (422 with a JSON pointer) lands on the same field. "Start from"
// (fine-tuning, issue 15) sets model.init: a registered model or a finished
// training job's checkpoint; the architecture then comes from the source, so
// only image size, classes and drop-path rate stay in the form.
import { html } from "htm/preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, api, isFinal } from "../api.js";
import { go } from "../router.js";
import { getAt, schemaAt, setAt, validateSpec } from "../spec.js";
import { ErrorBox } from "../ui.js";

const TEMPLATES = {
  small: {
    label: "small LV-ViT for 64 px pictures (minutes on a laptop)",
    spec: {
      kind: "train",
      name: "my-job",
      model: { img_size: 64, patch_size: 8, embed_dim: 128, depth: 6, num_heads: 4, mlp_ratio: 3, stem_channels: 32,
               skip_lam: 1.0, num_classes: 10, drop_path_rate: 0.05 },
      data: { train: "" },
      train: { epochs: 10, batch_size: 64, lr: 0.001, warmup_epochs: 1, ema_decay: 0.999, mixtoken: true, seed: 42 },
    },
  },
  lvvit_t: {
    label: "LV-ViT-T preset (224 px, as in the paper)",
    spec: { kind: "train", name: "lvvit-t", model: { preset: "lvvit_t" }, data: { train: "" },
            train: { epochs: 300, batch_size: 128, lr: 0.0016, warmup_epochs: 5, ema_decay: 0.99992, seed: 42 } },
  },
};

const MODEL_FIELDS = [
  ["/model/img_size", "image size (px)", "int"],
  ["/model/patch_size", "patch size (px)", "int"],
  ["/model/embed_dim", "embedding width", "int"],
  ["/model/depth", "blocks", "int"],
  ["/model/num_heads", "attention heads", "int"],
  ["/model/mlp_ratio", "MLP ratio", "num"],
  ["/model/stem_channels", "stem channels", "int"],
  ["/model/skip_lam", "residual scale (skip_lam)", "num"],
  ["/model/num_classes", "classes", "int"],
  ["/model/drop_path_rate", "drop-path rate", "num"],
];
const TRAIN_FIELDS = [
  ["/train/epochs", "epochs", "int"],
  ["/train/batch_size", "batch size", "int"],
  ["/train/lr", "learning rate", "num"],
  ["/train/warmup_epochs", "warm-up epochs", "num"],
  ["/train/weight_decay", "weight decay", "num"],
  ["/train/label_smoothing", "label smoothing", "num"],
  ["/train/dense_weight", "token loss weight", "num"],
  ["/train/ema_decay", "EMA decay (0 = off)", "num"],
  ["/train/eval_every_epochs", "evaluate every (epochs)", "num"],
  ["/train/checkpoint_every_epochs", "checkpoint every (epochs)", "num"],
  ["/train/seed", "seed", "int"],
];
// With model.init only these model fields may differ from the source (engine: tl_jobspec_apply_init).
const INIT_MODEL_FIELDS = new Set(["/model/img_size", "/model/num_classes", "/model/drop_path_rate"]);
const INIT_POINTERS = ["/model/init", "/model/init/model", "/model/init/job_id", "/model/init/checkpoint", "/model/init/ema", "/model/init/head"];
const FORM_POINTERS = new Set([
  "/name", "/data/train", "/data/val", "/data/label_maps", "/model/preset", "/train/mixtoken", "/model", ...INIT_POINTERS,
  ...MODEL_FIELDS.map((f) => f[0]), ...TRAIN_FIELDS.map((f) => f[0]),
]);

const pretty = (o) => JSON.stringify(o, null, 2);

function parseNumber(text, kind) {
  const t = text.trim();
  if (t === "") return undefined;
  const n = Number(t);
  return isFinite(n) && /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t) ? n : text; // junk stays a string: the schema names it
}

function FieldErrors({ errors }) {
  return errors.map((e) => html`<span class="field-error" role="alert">${e.message}</span>`);
}

function NumberField({ ptr, label, kind, spec, update, errors }) {
  const value = getAt(spec, ptr);
  const [text, setText] = useState(value == null ? "" : String(value));
  const focused = useRef(false);
  useEffect(() => {
    if (!focused.current) setText(value == null ? "" : String(value));
  }, [value]);
  const sch = schemaAt(ptr);
  const errs = errors.filter((e) => e.pointer === ptr);
  return html`<label class=${"field" + (errs.length ? " invalid" : "")} data-pointer=${ptr}>
    <span class="field-label" title=${sch.description || ""}>${label}</span>
    <input type="text" inputmode=${kind === "int" ? "numeric" : "decimal"} value=${text}
      placeholder=${sch.default != null && typeof sch.default !== "object" ? String(sch.default) : ""}
      aria-invalid=${errs.length > 0}
      onFocus=${() => (focused.current = true)} onBlur=${() => (focused.current = false)}
      onInput=${(e) => {
        setText(e.target.value);
        update(ptr, parseNumber(e.target.value, kind));
      }} />
    <${FieldErrors} errors=${errs} />
  </label>`;
}

function PathField({ ptr, label, spec, update, errors, options, allowNone, onPick }) {
  const value = getAt(spec, ptr);
  const errs = errors.filter((e) => e.pointer === ptr);
  const sch = schemaAt(ptr);
  const known = options && options.some((o) => o.value === value);
  const [other, setOther] = useState(false);
  const useSelect = options && options.length > 0 && !other && (known || !value);
  return html`<label class=${"field wide" + (errs.length ? " invalid" : "")} data-pointer=${ptr}>
    <span class="field-label" title=${sch.description || ""}>${label}</span>
    ${useSelect
      ? html`<select value=${value || ""} aria-invalid=${errs.length > 0} onChange=${(e) => {
          const v = e.target.value;
          if (v === "\u0000other") return setOther(true);
          update(ptr, v || undefined);
          if (onPick) onPick(v);
        }}>
          <option value="">${allowNone ? "(none)" : "choose…"}</option>
          ${options.map((o) => html`<option value=${o.value}>${o.label}</option>`)}
          <option value="\u0000other">other path…</option>
        </select>`
      : html`<input type="text" value=${value || ""} placeholder="a path under the daemon's data root" aria-invalid=${errs.length > 0}
          onInput=${(e) => update(ptr, e.target.value || undefined)} />`}
    <${FieldErrors} errors=${errs} />
  </label>`;
}

// "Start from": none, a registered model, or a finished training job with its checkpoint (best or last).
// value: the spec's model.init (or undefined); onChange(init or undefined).
function StartFrom({ value, onChange, errors }) {
  const [models, setModels] = useState(null);
  const [jobs, setJobs] = useState(null);
  useEffect(() => {
    api("/api/v1/models").then((d) => setModels(d.models || []), () => setModels([]));
    api("/api/v1/jobs?limit=200").then(
      (d) => setJobs((d.jobs || []).filter((j) => isFinal(j.state) && !(j.spec && j.spec.kind === "annotate"))),
      () => setJobs([]),
    );
  }, []);
  const kind = value && typeof value === "object" ? (value.model != null ? "model" : "job") : "none";
  const errs = errors.filter((e) => INIT_POINTERS.includes(e.pointer));
  const ck = value && value.checkpoint != null ? String(value.checkpoint) : "best";
  const pickKind = (k) => {
    if (k === "none") return onChange(undefined);
    if (k === "model") return onChange(models && models.length ? { model: models[0].name } : { model: "" });
    const j = jobs && jobs.find((x) => x.state === "SUCCEEDED") || (jobs && jobs[0]);
    onChange(j ? { job_id: j.id, checkpoint: "best" } : { job_id: 0, checkpoint: "best" });
  };
  return html`<div class=${"start-from" + (errs.length ? " invalid" : "")} data-test="start-from" data-pointer="/model/init">
    <label class="field">
      <span class="field-label" title="Fine-tuning: start from trained weights instead of random ones (model.init)">start from</span>
      <select value=${kind} data-test="start-from-kind" onChange=${(e) => pickKind(e.target.value)}>
        <option value="none">random weights (train from scratch)</option>
        <option value="model">a registered model</option>
        <option value="job">a finished training job</option>
      </select>
    </label>
    ${kind === "model" && html`<label class="field">
      <span class="field-label">model</span>
      <select value=${value.model} data-test="start-from-model" onChange=${(e) => onChange({ ...value, model: e.target.value })}>
        ${!(models || []).some((m) => m.name === value.model) && html`<option value=${value.model}>${value.model || "choose…"}</option>`}
        ${(models || []).map((m) => html`<option value=${m.name}>${m.name}${m.num_classes ? ` (${m.num_classes} classes)` : ""}</option>`)}
      </select>
    </label>`}
    ${kind === "job" && html`<label class="field">
      <span class="field-label">job</span>
      <select value=${String(value.job_id)} data-test="start-from-job" onChange=${(e) => onChange({ ...value, job_id: Number(e.target.value) })}>
        ${!(jobs || []).some((j) => j.id === value.job_id) && html`<option value=${String(value.job_id)}>${value.job_id ? "#" + value.job_id : "choose…"}</option>`}
        ${(jobs || []).map((j) => html`<option value=${String(j.id)}>#${j.id} ${j.name} (${j.state.toLowerCase()})</option>`)}
      </select>
    </label>
    <label class="field">
      <span class="field-label">checkpoint</span>
      <select value=${ck} data-test="start-from-checkpoint" onChange=${(e) => onChange({ ...value, checkpoint: e.target.value })}>
        ${!["best", "last"].includes(ck) && html`<option value=${ck}>step ${ck}</option>`}
        <option value="best">best</option><option value="last">last</option>
      </select>
    </label>`}
    ${kind !== "none" && html`<p class="hint">The architecture comes from the source; image size, classes and drop-path rate may differ
      (a new class count gets fresh heads, another image size a resampled position embedding).</p>`}
    <${FieldErrors} errors=${errs} />
  </div>`;
}

export function SubmitView({ query }) {
  const from = query.get("from");
  const [spec, setSpec] = useState(TEMPLATES.small.spec);
  const [jsonText, setJsonText] = useState(pretty(TEMPLATES.small.spec));
  const [jsonError, setJsonError] = useState(null);
  const [datasets, setDatasets] = useState(null); // null: unknown (no API), [] none
  const [touched, setTouched] = useState(new Set());
  const [attempted, setAttempted] = useState(false);
  const [serverError, setServerError] = useState(null);
  const [error, setError] = useState(null);
  const [sending, setSending] = useState(false);
  const idemKey = useRef(Math.random().toString(36).slice(2) + Date.now().toString(36));
  const modelBeforeInit = useRef(null); // the model fields to restore when "start from" goes back to none

  const allErrors = useMemo(() => validateSpec(spec), [spec]);
  const shown = [
    ...allErrors.filter((e) => attempted || [...touched].some((t) => e.pointer === t || e.pointer.startsWith(t + "/"))),
    ...(serverError && serverError.pointer != null ? [{ pointer: serverError.pointer, message: serverError.message, server: true }] : []),
  ];

  const specRef = useRef(spec); // the latest spec, for several edits before a render
  const replaceSpec = (s, { keepText = false } = {}) => {
    specRef.current = s;
    setSpec(s);
    if (!keepText) {
      setJsonText(pretty(s));
      setJsonError(null);
    }
    setServerError(null);
  };
  const update = (ptr, value) => {
    setTouched((t) => new Set(t).add(ptr));
    replaceSpec(setAt(specRef.current, ptr, value));
  };

  // model.init: choosing a source keeps only the fields that may differ from it; "none" restores the others
  const setInit = (init) => {
    const cur = specRef.current;
    const m = cur.model && typeof cur.model === "object" ? cur.model : {};
    setTouched((t) => new Set(t).add("/model/init"));
    if (init === undefined) {
      const back = modelBeforeInit.current ? { ...modelBeforeInit.current } : { ...m };
      delete back.init;
      for (const k of ["img_size", "num_classes", "drop_path_rate"]) if (m[k] !== undefined) back[k] = m[k];
      modelBeforeInit.current = null;
      return replaceSpec(setAt(cur, "/model", back));
    }
    if (!m.init) modelBeforeInit.current = m;
    const next = { init };
    for (const k of ["img_size", "num_classes", "drop_path_rate"]) if (m[k] !== undefined) next[k] = m[k];
    replaceSpec(setAt(cur, "/model", next));
  };

  // datasets under the data root
  useEffect(() => {
    api("/api/v1/datasets").then(
      (d) => setDatasets(d.datasets || []),
      () => setDatasets(null),
    );
  }, []);
  // clone an existing job
  useEffect(() => {
    if (!from) return;
    api(`/api/v1/jobs/${from}`).then(
      (j) => {
        const s = typeof j.spec === "object" && j.spec ? { ...j.spec } : {};
        s.name = ((s.name || "job") + " (copy)").slice(0, 127);
        replaceSpec(s);
      },
      (e) => setError(e),
    );
  }, [from]);
  // a fresh form picks the first dataset with label maps
  useEffect(() => {
    if (from || !datasets || !datasets.length || getAt(specRef.current, "/data/train")) return;
    const d = datasets.find((x) => x.has_label_maps && /train$/.test(x.path)) || datasets.find((x) => x.has_label_maps) || datasets[0];
    replaceSpec(pickDataset(specRef.current, d.path));
  }, [datasets]);

  const dsOptions = (datasets || []).map((d) => ({
    value: d.path,
    label: `${d.path} — ${d.classes} classes, ${d.images} images${d.has_label_maps ? ", label maps" : ""}`,
  }));
  const mapOptions = (datasets || []).filter((d) => d.has_label_maps).map((d) => ({ value: d.label_maps || d.path + ".tllm", label: d.label_maps || d.path + ".tllm" }));

  // choosing the training set also fills in its validation split, label maps and class count
  function pickDataset(s, path) {
    const d = (datasets || []).find((x) => x.path === path);
    s = setAt(s, "/data/train", path || undefined);
    if (!d) return s;
    const sib = path.replace(/train$/, "val");
    if (sib !== path && datasets.some((x) => x.path === sib)) s = setAt(s, "/data/val", sib);
    s = setAt(s, "/data/label_maps", d.has_label_maps ? d.label_maps || path + ".tllm" : undefined);
    if (!getAt(s, "/model/preset") || getAt(s, "/model/num_classes") != null) s = setAt(s, "/model/num_classes", d.classes);
    return s;
  }

  const onJson = (text) => {
    setJsonText(text);
    try {
      const v = JSON.parse(text);
      if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("the spec must be a JSON object");
      setJsonError(null);
      replaceSpec(v, { keepText: true });
      setTouched(new Set(Object.keys(v).map((k) => "/" + k)));
    } catch (e) {
      setJsonError(e.message);
    }
  };

  const submit = async (e) => {
    e.preventDefault();
    setAttempted(true);
    setError(null);
    if (jsonError) return;
    const errs = validateSpec(specRef.current);
    if (errs.length) {
      requestAnimationFrame(() => {
        const el = document.querySelector(".field.invalid input, .field.invalid select, .json-errors");
        if (el) {
          el.scrollIntoView({ block: "center", behavior: "smooth" });
          if (el.focus) el.focus({ preventScroll: true });
        }
      });
      return; // nothing is sent
    }
    setSending(true);
    try {
      const j = await api("/api/v1/jobs", { method: "POST", json: specRef.current, headers: { "Idempotency-Key": idemKey.current } });
      idemKey.current = Math.random().toString(36).slice(2) + Date.now().toString(36);
      go("/jobs/" + j.id);
    } catch (err) {
      if (err instanceof ApiError && err.pointer != null && (err.status === 422 || err.status === 400)) {
        const msg = (err.message || "").replace(err.pointer + ": ", "");
        setServerError({ pointer: err.pointer, message: msg });
      } else setError(err);
    } finally {
      setSending(false);
    }
  };

  const presetErrs = shown.filter((e) => e.pointer === "/model/preset" || e.pointer === "/model");
  const otherErrors = shown.filter((e) => !FORM_POINTERS.has(e.pointer));
  const init = getAt(spec, "/model/init");
  const hasPreset = !!getAt(spec, "/model/preset") && !init;
  const nameErrs = shown.filter((e) => e.pointer === "/name");
  const mix = getAt(spec, "/train/mixtoken");

  return html`
    <form class="submit" onSubmit=${submit} novalidate>
      <section class="panel">
        <div class="row wrap">
          <h1>${from ? `New job from #${from}` : "New training job"}</h1>
          <div class="spacer"></div>
          <label>template
            <select onChange=${(e) => {
              const t = TEMPLATES[e.target.value];
              e.target.value = "";
              if (t) replaceSpec(pickDataset({ ...t.spec, data: { train: "" } }, getAt(specRef.current, "/data/train")));
            }}>
              <option value="">a template…</option>
              ${Object.entries(TEMPLATES).map(([k, t]) => html`<option value=${k}>${t.label}</option>`)}
            </select>
          </label>
        </div>
        <div class="form-grid">
          <div class="form-col">
            <fieldset>
              <legend>Job</legend>
              <label class=${"field wide" + (nameErrs.length ? " invalid" : "")} data-pointer="/name">
                <span class="field-label">name</span>
                <input type="text" value=${getAt(spec, "/name") || ""} maxlength="127" aria-invalid=${nameErrs.length > 0}
                  onInput=${(e) => update("/name", e.target.value)} />
                <${FieldErrors} errors=${nameErrs} />
              </label>
            </fieldset>
            <fieldset>
              <legend>Data</legend>
              ${datasets && datasets.length === 0 &&
              html`<p class="hint">No image-folder dataset was found under the daemon's data root. <code>tokenlabd synth --out DIR</code>
                writes a synthetic one with label maps.</p>`}
              <${PathField} ptr="/data/train" label="training images" spec=${spec} errors=${shown} options=${dsOptions}
                update=${(p, v) => { setTouched((t) => new Set(t).add(p)); replaceSpec(pickDataset(specRef.current, v)); }} />
              <${PathField} ptr="/data/val" label="validation images" spec=${spec} update=${update} errors=${shown} options=${dsOptions} allowNone />
              <${PathField} ptr="/data/label_maps" label="label maps (token labeling)" spec=${spec} update=${update} errors=${shown} options=${mapOptions} allowNone />
            </fieldset>
            <fieldset>
              <legend>Model</legend>
              <${StartFrom} value=${init} onChange=${setInit} errors=${shown} />
              ${!init && html`<label class=${"field" + (presetErrs.length ? " invalid" : "")} data-pointer="/model/preset">
                <span class="field-label" title=${schemaAt("/model/preset").description}>preset</span>
                <select value=${getAt(spec, "/model/preset") || ""} onChange=${(e) => update("/model/preset", e.target.value || undefined)}>
                  <option value="">none: all fields below</option>
                  ${["lvvit_t", "lvvit_s", "lvvit_m", "lvvit_l"].map((p) => html`<option value=${p}>${p}</option>`)}
                </select>
                <${FieldErrors} errors=${presetErrs} />
              </label>`}
              ${hasPreset && html`<p class="hint">Fields left empty take the preset's values.</p>`}
              <div class="fields">
                ${MODEL_FIELDS.filter(([p]) => !init || INIT_MODEL_FIELDS.has(p)).map(([p, l, k]) => html`<${NumberField} key=${p} ptr=${p} label=${l} kind=${k} spec=${spec} update=${update} errors=${shown} />`)}
              </div>
            </fieldset>
            <fieldset>
              <legend>Training</legend>
              <div class="fields">
                ${TRAIN_FIELDS.map(([p, l, k]) => html`<${NumberField} key=${p} ptr=${p} label=${l} kind=${k} spec=${spec} update=${update} errors=${shown} />`)}
                <label class="field check" data-pointer="/train/mixtoken">
                  <input type="checkbox" checked=${mix == null ? true : !!mix} onChange=${(e) => update("/train/mixtoken", e.target.checked)} />
                  <span class="field-label" title=${schemaAt("/train/mixtoken").description}>MixToken</span>
                </label>
              </div>
            </fieldset>
          </div>
          <div class="form-col json-col">
            <fieldset>
              <legend>Spec (JSON)</legend>
              <p class="hint">Every field of <a href="/api/v1/openapi.json" target="_blank" rel="noopener">the job schema</a> can be set here
                (augmentation, mixing, loader threads, …); the form and this text edit the same spec.</p>
              <textarea class=${"json" + (jsonError ? " invalid" : "")} spellcheck="false" value=${jsonText}
                onInput=${(e) => onJson(e.target.value)} data-test="json-editor" rows="28"></textarea>
              ${jsonError && html`<p class="field-error" role="alert">JSON: ${jsonError}</p>`}
              ${otherErrors.length > 0 &&
              html`<ul class="json-errors" role="alert">${otherErrors.map((e) => html`<li><code>${e.pointer || "/"}</code> ${e.message}</li>`)}</ul>`}
            </fieldset>
          </div>
        </div>
        <${ErrorBox} error=${error} onClose=${() => setError(null)} />
        <div class="row submit-bar">
          ${attempted && (allErrors.length > 0 || jsonError) &&
          html`<span class="error" data-test="form-invalid">${jsonError ? "The JSON does not parse." : `${allErrors.length} problem${allErrors.length > 1 ? "s" : ""} to fix before submitting.`}</span>`}
          ${serverError && html`<span class="error">The daemon refused the spec: <code>${serverError.pointer}</code> ${serverError.message}</span>`}
          <div class="spacer"></div>
          <a class="button secondary" href="#/jobs">Cancel</a>
          <button type="submit" disabled=${sending} data-test="submit">${sending ? "Submitting…" : "Submit job"}</button>
        </div>
      </section>
    </form>
  `;
}
