// Label maps: the per-token soft labels a machine annotator wrote for a
// dataset (or the exact maps of the synthetic data). The list of maps under
// the daemon's data root; for one map, its images (paged, filtered by path
// prefix); for one image, the picture with the map over it: each location
// coloured by its top-1 class (strength = probability), its stored top-k
// classes with logits and probabilities on hover, and the class legend.
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../api.js";
import { fmtBytes, fmtTime } from "../format.js";
import { classColor } from "../palette.js";
import { setQuery } from "../router.js";
import { ClassLegend, TokenCanvas, loadImage } from "../tokens.js";
import { ErrorBox } from "../ui.js";

const PAGE = 50;
const VIEW = 448; // longer side of the picture on screen, px

// "#/labelmaps?path=..&key=.." with the empty parameters left out.
export function labelmapHref(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, String(v));
  const qs = q.toString();
  return "#/labelmaps" + (qs ? "?" + qs : "");
}

function apiQuery(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, String(v));
  return q.toString();
}

// Probabilities of a location's stored top-k logits as the trainer's targets give them: softmax over
// all K classes, the K-k classes that were not stored having logit 0.
export function topkProbs(logits, K) {
  const k = logits.length;
  let mx = K > k ? 0 : -Infinity;
  for (const v of logits) mx = Math.max(mx, v);
  let se = (K - k) * Math.exp(-mx);
  for (const v of logits) se += Math.exp(v - mx);
  return logits.map((v) => Math.exp(v - mx) / se);
}

export function LabelmapsView({ query }) {
  const path = query.get("path") || "";
  const [maps, setMaps] = useState(null);
  const [truncated, setTruncated] = useState(false);
  const [unavailable, setUnavailable] = useState(false);
  const [error, setError] = useState(null);

  const load = async () => {
    try {
      const d = await api("/api/v1/labelmaps");
      setMaps(d.labelmaps || []);
      setTruncated(!!d.truncated);
      setError(null);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && e.code === "NOT_FOUND" && !maps) setUnavailable(true);
      else setError(e);
    }
  };
  useEffect(() => {
    load();
  }, []);

  if (unavailable)
    return html`<section class="panel"><h1>Label maps</h1><p class="notice" data-test="labelmaps-unavailable">This daemon does not
      serve label maps (no <code>/api/v1/labelmaps</code>).</p></section>`;
  if (path) return html`<${MapBrowser} key=${path} path=${path} query=${query} info=${maps ? maps.find((m) => m.path === path) || null : undefined} />`;
  return html`<section class="panel">
    <div class="row wrap">
      <h1>Label maps</h1>
      <div class="spacer"></div>
      <button class="secondary small" onClick=${load}>Refresh</button>
    </div>
    <p class="muted small">Label maps (<code>.tllm</code>) under the daemon's data root: the per-token soft labels that token labeling
      trains on, written by annotate jobs (a trained model run over a dataset), imported, or exact for the synthetic data.
      Choose one to see what it teaches each token of an image.</p>
    <${ErrorBox} error=${error} onClose=${() => setError(null)} />
    ${!maps && !error && html`<p class="muted">Loading…</p>`}
    ${maps && maps.length === 0 &&
    html`<p class="empty">No label maps under the data root. An annotate job (<code>"kind": "annotate"</code>) writes one;
      <code>tokenlabd synth</code> writes exact ones beside its data.</p>`}
    ${maps && maps.length > 0 &&
    html`<div class="table-wrap"><table data-test="labelmap-list">
      <thead><tr><th>label map</th><th>dataset</th><th class="num">images</th><th class="num">classes</th><th class="num">top-k</th>
        <th>grid</th><th class="num">size</th><th>modified</th></tr></thead>
      <tbody>${maps.map(
        (m) => html`<tr key=${m.path} data-path=${m.path}>
          <td><a href=${labelmapHref({ path: m.path })}><code>${m.path}</code></a>
            ${m.error && html`<div class="error small">${m.error}</div>`}</td>
          <td>${m.dataset ? html`<code>${m.dataset}</code>` : html`<span class="muted" title="neither a sidecar .json nor a folder of the same name: type it on the map's page">unknown</span>`}</td>
          <td class="num">${m.error ? "–" : m.count}</td>
          <td class="num">${m.error ? "–" : m.num_classes}</td>
          <td class="num">${m.error ? "–" : m.topk}</td>
          <td>${m.error ? "–" : `${m.h}×${m.w}`}</td>
          <td class="num">${fmtBytes(m.bytes)}</td>
          <td>${fmtTime(m.modified_ms)}</td>
        </tr>`,
      )}</tbody>
    </table></div>`}
    ${truncated && html`<p class="hint">Only the first ${maps.length} maps are listed.</p>`}
  </section>`;
}

// One map: its images on the left, the chosen image on the right.
function MapBrowser({ path, query, info }) {
  const key = query.get("key") || "";
  const prefix = query.get("prefix") || "";
  const offset = Math.max(0, Number(query.get("offset")) || 0);
  const dataset = query.get("dataset") || "";
  const [keys, setKeys] = useState(null);
  const [error, setError] = useState(null);
  const [filter, setFilter] = useState(prefix);
  const [dsText, setDsText] = useState(dataset);
  const [needDs, setNeedDs] = useState(false);
  useEffect(() => setFilter(prefix), [prefix]); // back and forward in the history
  useEffect(() => setDsText(dataset), [dataset]);

  useEffect(() => {
    const ctrl = new AbortController();
    api(`/api/v1/labelmaps/keys?${apiQuery({ path, prefix, offset, limit: PAGE })}`, { signal: ctrl.signal }).then(
      (d) => {
        setKeys(d);
        setError(null);
      },
      (e) => {
        if (!ctrl.signal.aborted) setError(e);
      },
    );
    return () => ctrl.abort();
  }, [path, prefix, offset]);

  // the prefix filter, applied after a pause in typing
  useEffect(() => {
    if (filter === prefix) return;
    const t = setTimeout(() => setQuery({ prefix: filter, offset: null }), 250);
    return () => clearTimeout(t);
  }, [filter]);

  const showDs = (info && info.dataset == null) || needDs || !!dataset;
  const list = keys ? keys.keys : [];
  const pos = list.indexOf(key);
  const link = (k) => labelmapHref({ path, prefix, offset: offset || null, dataset, key: k });
  const applyDs = (e) => {
    e.preventDefault();
    setQuery({ dataset: dsText.trim() });
  };

  return html`
    <section class="panel">
      <div class="row wrap">
        <h1>Label map <code class="lm-path">${path}</code></h1>
        <div class="spacer"></div>
        <a href="#/labelmaps">All label maps</a>
      </div>
      ${info &&
      html`<p class="muted small" data-test="labelmap-info">${info.error
        ? html`<span class="error">${info.error}</span>`
        : html`${info.count} images · ${info.num_classes} classes · top-${info.topk} logits per location · ${info.h}×${info.w} locations · ${fmtBytes(info.bytes)}`}
        ${info.dataset ? html` · dataset <code>${info.dataset}</code>` : html` · dataset unknown`}</p>`}
      ${showDs &&
      html`<form class="inline-form" onSubmit=${applyDs}>
        <label>dataset folder <input data-test="dataset-input" placeholder="e.g. imagenette/train" value=${dsText}
          onInput=${(e) => setDsText(e.target.value)} size="32" /></label>
        <button type="submit" class="secondary small">Use</button>
        <span class="muted small">the image folder the map's keys are relative to (under the data root)${info && info.dataset ? "; it overrides " + info.dataset : ""}</span>
      </form>`}
      <${ErrorBox} error=${error} />
    </section>
    <div class="lm-layout">
      <section class="panel lm-keys">
        <input type="search" class="lm-filter" data-test="key-filter" placeholder="filter by path prefix, e.g. circle/" value=${filter}
          onInput=${(e) => setFilter(e.target.value)} />
        ${keys &&
        html`<p class="muted small">${list.length
          ? `images ${offset + 1}–${offset + list.length}${prefix ? ` starting with “${prefix}”` : ""} · ${keys.count} in the map`
          : offset > 0 ? "no more images" : prefix ? `no image starts with “${prefix}”` : "the map is empty"}</p>`}
        ${!keys && !error && html`<p class="muted">Loading…</p>`}
        <ul class="lm-key-list" data-test="key-list">
          ${list.map((k) => html`<li key=${k}><a href=${link(k)} class=${k === key ? "on" : ""} data-key=${k} title=${k}>${k}</a></li>`)}
        </ul>
        <div class="row">
          <button class="secondary small" disabled=${offset === 0} onClick=${() => setQuery({ offset: Math.max(0, offset - PAGE) || null })}>‹ previous</button>
          <div class="spacer"></div>
          <button class="secondary small" data-test="keys-next" disabled=${!keys || !keys.more || list.length < PAGE}
            onClick=${() => setQuery({ offset: offset + PAGE })}>next ›</button>
        </div>
      </section>
      <section class="panel lm-view">
        ${key
          ? html`<${EntryView} key=${path + "|" + key + "|" + dataset} path=${path} imageKey=${key} dataset=${dataset}
              onNoDataset=${() => setNeedDs(true)}
              prev=${pos > 0 ? link(list[pos - 1]) : null} next=${pos >= 0 && pos + 1 < list.length ? link(list[pos + 1]) : null} />`
          : html`<p class="empty">Choose an image on the left.</p>`}
      </section>
    </div>
  `;
}

function EntryView({ path, imageKey, dataset, prev, next, onNoDataset }) {
  const [entry, setEntry] = useState(null);
  const [image, setImage] = useState(null);
  const [error, setError] = useState(null);
  const [imgError, setImgError] = useState(null);
  const [opacity, setOpacity] = useState(0.55);
  const [showImage, setShowImage] = useState(true);
  const q = apiQuery({ path, key: imageKey, dataset });
  const urlRef = useRef(null);

  useEffect(() => {
    const ctrl = new AbortController();
    api(`/api/v1/labelmaps/entry?${q}`, { signal: ctrl.signal }).then(setEntry, (e) => !ctrl.signal.aborted && setError(e));
    // the picture through fetch, so that a refusal (unknown dataset, missing file) comes with its reason
    api(`/api/v1/labelmaps/image?${q}`, { signal: ctrl.signal, raw: true })
      .then((r) => r.blob())
      .then((b) => {
        if (ctrl.signal.aborted) return;
        urlRef.current = URL.createObjectURL(b);
        return loadImage(urlRef.current).then(setImage);
      })
      .catch((e) => {
        if (ctrl.signal.aborted) return;
        setImgError(e);
        if (e instanceof ApiError && e.code === "NO_DATASET") onNoDataset();
      });
    return () => {
      ctrl.abort();
      if (urlRef.current) URL.revokeObjectURL(urlRef.current);
    };
  }, [q]);

  // arrow keys walk through the listed images
  useEffect(() => {
    const on = (e) => {
      if (e.target && /INPUT|TEXTAREA|SELECT/.test(e.target.tagName)) return;
      if (e.key === "ArrowLeft" && prev) location.hash = prev;
      if (e.key === "ArrowRight" && next) location.hash = next;
    };
    window.addEventListener("keydown", on);
    return () => window.removeEventListener("keydown", on);
  }, [prev, next]);

  const head = html`<div class="row wrap">
    <h2 class="lm-key" data-test="entry-key">${imageKey}</h2>
    <div class="spacer"></div>
    <a class=${"button secondary small" + (prev ? "" : " disabled")} href=${prev || undefined} title="previous image (←)">‹</a>
    <a class=${"button secondary small" + (next ? "" : " disabled")} href=${next || undefined} title="next image (→)">›</a>
  </div>`;
  if (!entry) return html`${head}<${ErrorBox} error=${error} />${!error && html`<p class="muted">Loading…</p>`}`;

  const K = entry.num_classes,
    k = entry.topk,
    hw = entry.h * entry.w;
  const classes = entry.classes.map((label, index) => ({ index, label }));
  const className = (c) => entry.classes[c] || "class " + c;
  const tipRows = (t) => {
    const idx = [],
      logits = [];
    for (let j = 0; j < k; j++) {
      const c = entry.topk_logits.index[j * hw + t];
      if (c == null || c < 0) continue;
      idx.push(c);
      logits.push(entry.topk_logits.logit[j * hw + t]);
    }
    const probs = topkProbs(logits, K);
    return idx.map((c, j) => ({ c, p: probs[j], note: "logit " + logits[j].toFixed(2) }));
  };
  // how many locations each class wins
  const counts = new Map();
  for (const c of entry.top1.index) counts.set(c, (counts.get(c) || 0) + 1);
  const shares = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  const iw = image ? image.naturalWidth : 1,
    ih = image ? image.naturalHeight : 1;
  const size = iw >= ih ? VIEW : Math.round((VIEW * iw) / ih);

  return html`
    ${head}
    <p class="muted small">${entry.h}×${entry.w} locations over the whole picture${image ? ` (${iw}×${ih} px)` : ""} · top-${k} of ${K} classes stored per location
      ${entry.dataset ? html` · dataset <code>${entry.dataset}</code>` : ""} · colour = top-1 class, strength = its probability; hover a location for its stored classes.</p>
    ${imgError && html`<${ErrorBox} error=${imgError} />`}
    <div class="pair">
      <${TokenCanvas} image=${showImage ? image : null} rows=${entry.h} cols=${entry.w} index=${entry.top1.index} score=${entry.top1.score}
        tipRows=${tipRows} className=${className} opacity=${opacity} size=${size} crop=${{ x: 0, y: 0, w: 1, h: 1 }} test="labelmap-canvas" />
      <div class="top5-box">
        <div class="inspect-controls">
          <label>overlay <input type="range" min="0" max="1" step="0.05" value=${opacity} data-test="overlay"
            onInput=${(e) => setOpacity(Number(e.target.value))} /></label>
          <label class="check"><input type="checkbox" checked=${showImage} data-test="show-image"
            onChange=${(e) => setShowImage(e.target.checked)} /> picture</label>
        </div>
        <h2>Top-1 classes</h2>
        <ol class="bars" data-test="top1-shares">${shares.map(
          ([c, n]) => html`<li><span class="bar-label"><i class="swatch" style=${{ background: classColor(c) }}></i>${className(c)}</span>
            <span class="bar"><span style=${{ width: ((n / hw) * 100).toFixed(1) + "%", background: classColor(c) }}></span></span>
            <b>${n}/${hw}</b></li>`,
        )}</ol>
        <${ClassLegend} classes=${classes} present=${K > 24 ? new Set(counts.keys()) : null} title=${K > 24 ? "Classes present" : "Classes"} />
        ${entry.h === entry.w &&
        html`<p class="small"><a href=${`/api/v1/labelmaps/heatmap.jpg?${q}`} target="_blank" rel="noopener">overlay rendered by the daemon</a> · <a href=${`/api/v1/labelmaps/entry?${q}`} target="_blank" rel="noopener">JSON</a></p>`}
      </div>
    </div>
  `;
}
