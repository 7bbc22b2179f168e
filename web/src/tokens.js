// A picture with its token grid coloured by class (the daemon's palette), as
// in the token-labeling paper's figures; hovering a token shows its top
// classes with their probabilities. Used by token inspection and predict.
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { classColor } from "./palette.js";

// crop: the part of the picture the grid covers, as fractions {x, y, w, h} (default: all of it).
// grid: tokens per side; rows/cols override it for grids that are not square.
// tipRows(t): the tooltip's rows for token t ([{c, p, note}]) instead of topk / index and score.
export function TokenCanvas({ image, grid, rows, cols, index, score, topk, tipRows, className, opacity = 0.5, size = 224, crop, title, test }) {
  const gh = rows || grid || 0,
    gw = cols || grid || 0;
  const canvas = useRef(null);
  const [tip, setTip] = useState(null);
  const iw = image ? image.naturalWidth || image.width : 1;
  const ih = image ? image.naturalHeight || image.height : 1;
  const W = size;
  const H = crop ? Math.round((size * ih) / iw) : size;
  const box = crop ? { x: crop.x * W, y: crop.y * H, w: crop.w * W, h: crop.h * H } : { x: 0, y: 0, w: W, h: H };

  useEffect(() => {
    const c = canvas.current;
    if (!c) return;
    const dpr = window.devicePixelRatio || 1;
    c.width = Math.round(W * dpr);
    c.height = Math.round(H * dpr);
    c.style.width = W + "px";
    c.style.height = H + "px";
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (image) {
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(image, 0, 0, W, H);
    } else {
      ctx.fillStyle = "#888";
      ctx.fillRect(0, 0, W, H);
    }
    if (crop) {
      // dim what the model does not see
      ctx.fillStyle = "rgba(0,0,0,0.45)";
      ctx.fillRect(0, 0, W, box.y);
      ctx.fillRect(0, box.y + box.h, W, H - box.y - box.h);
      ctx.fillRect(0, box.y, box.x, box.h);
      ctx.fillRect(box.x + box.w, box.y, W - box.x - box.w, box.h);
    }
    if (gh && gw && index && index.length >= gh * gw) {
      const cw = box.w / gw,
        ch = box.h / gh;
      for (let r = 0; r < gh; r++)
        for (let q = 0; q < gw; q++) {
          const t = r * gw + q;
          const s = score ? Math.max(0, Math.min(1, score[t])) : 1;
          ctx.fillStyle = classColor(index[t], opacity * (0.35 + 0.65 * s));
          ctx.fillRect(box.x + q * cw, box.y + r * ch, cw, ch);
        }
      ctx.strokeStyle = "rgba(255,255,255,0.35)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 0; i <= gw; i++) {
        ctx.moveTo(box.x + i * cw, box.y);
        ctx.lineTo(box.x + i * cw, box.y + box.h);
      }
      for (let i = 0; i <= gh; i++) {
        ctx.moveTo(box.x, box.y + i * ch);
        ctx.lineTo(box.x + box.w, box.y + i * ch);
      }
      ctx.stroke();
    }
    c.dataset.drawn = String(Date.now());
  }, [image, gh, gw, index, score, opacity, W, H, crop && crop.x, crop && crop.y, crop && crop.w, crop && crop.h]);

  const move = (e) => {
    if (!gh || !gw || !index) return;
    const rect = e.currentTarget.getBoundingClientRect();
    const x = ((e.clientX - rect.left) / rect.width) * W - box.x;
    const y = ((e.clientY - rect.top) / rect.height) * H - box.y;
    if (x < 0 || y < 0 || x >= box.w || y >= box.h) return setTip(null);
    const q = Math.min(gw - 1, Math.floor((x / box.w) * gw)),
      r = Math.min(gh - 1, Math.floor((y / box.h) * gh));
    const t = r * gw + q;
    let tipList;
    if (tipRows) tipList = tipRows(t);
    else if (topk && topk.index && topk.k) {
      tipList = [];
      for (let j = 0; j < topk.k; j++) {
        const c = topk.index[t * topk.k + j];
        if (c != null && c >= 0) tipList.push({ c, p: topk.score[t * topk.k + j] });
      }
    } else tipList = [{ c: index[t], p: score ? score[t] : null }];
    const cw = box.w / gw,
      ch = box.h / gh;
    setTip({
      r, q, rows: tipList,
      left: box.x + (q + 1) * cw,
      top: box.y + r * ch,
      cell: { left: box.x + q * cw, top: box.y + r * ch, w: cw, h: ch },
    });
  };

  return html`<figure class="tokens">
    ${title && html`<figcaption>${title}</figcaption>`}
    <div class="tokens-wrap" style=${{ width: W + "px", height: H + "px" }}>
      <canvas ref=${canvas} data-test=${test} onMouseMove=${move} onMouseLeave=${() => setTip(null)}></canvas>
      ${tip && html`<div class="cell-hl" style=${{ left: tip.cell.left + "px", top: tip.cell.top + "px", width: tip.cell.w + "px", height: tip.cell.h + "px" }}></div>`}
      ${tip && html`<div class="token-tip" data-test="token-tip" style=${tip.q < gw / 2 ? { left: tip.left + 4 + "px", top: tip.top + "px" } : { right: W - tip.cell.left + 4 + "px", top: tip.top + "px" }}>
        <div class="muted">token (${tip.r}, ${tip.q})</div>
        ${tip.rows.map((row) => html`<div><i class="swatch" style=${{ background: classColor(row.c) }}></i>${className(row.c)} ${row.p != null && html`<b>${(row.p * 100).toFixed(1)}%</b>`}${row.note != null && html` <span class="muted">${row.note}</span>`}</div>`)}
      </div>`}
    </div>
  </figure>`;
}

export function ClassLegend({ classes, present, title = "Classes" }) {
  const list = present ? classes.filter((c) => present.has(c.index)) : classes;
  if (!list.length) return null;
  return html`<div class="legend" data-test="legend">
    <span class="muted">${title}:</span>
    ${list.map((c) => html`<span class="lg"><i class="swatch" style=${{ background: classColor(c.index) }}></i>${c.label}</span>`)}
  </div>`;
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot load " + src));
    img.src = src;
  });
}
