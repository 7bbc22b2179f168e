// A picture with its token grid coloured by class (the daemon's palette), as
// in the token-labeling paper's figures; hovering a token shows its top
// classes with their probabilities. Used by token inspection and predict.
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { classColor } from "./palette.js";

// crop: the part of the picture the grid covers, as fractions {x, y, w, h} (default: all of it).
export function TokenCanvas({ image, grid, index, score, topk, className, opacity = 0.5, size = 224, crop, title, test }) {
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
    if (grid && index && index.length >= grid * grid) {
      const cw = box.w / grid,
        ch = box.h / grid;
      for (let r = 0; r < grid; r++)
        for (let q = 0; q < grid; q++) {
          const t = r * grid + q;
          const s = score ? Math.max(0, Math.min(1, score[t])) : 1;
          ctx.fillStyle = classColor(index[t], opacity * (0.35 + 0.65 * s));
          ctx.fillRect(box.x + q * cw, box.y + r * ch, cw, ch);
        }
      ctx.strokeStyle = "rgba(255,255,255,0.35)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 0; i <= grid; i++) {
        ctx.moveTo(box.x + i * cw, box.y);
        ctx.lineTo(box.x + i * cw, box.y + box.h);
        ctx.moveTo(box.x, box.y + i * ch);
        ctx.lineTo(box.x + box.w, box.y + i * ch);
      }
      ctx.stroke();
    }
    c.dataset.drawn = String(Date.now());
  }, [image, grid, index, score, opacity, W, H, crop && crop.x, crop && crop.w]);

  const move = (e) => {
    if (!grid || !index) return;
    const rect = e.currentTarget.getBoundingClientRect();
    const x = ((e.clientX - rect.left) / rect.width) * W - box.x;
    const y = ((e.clientY - rect.top) / rect.height) * H - box.y;
    if (x < 0 || y < 0 || x >= box.w || y >= box.h) return setTip(null);
    const q = Math.floor((x / box.w) * grid),
      r = Math.floor((y / box.h) * grid);
    const t = r * grid + q;
    let rows;
    if (topk && topk.index && topk.k) {
      rows = [];
      for (let j = 0; j < topk.k; j++) {
        const c = topk.index[t * topk.k + j];
        if (c != null && c >= 0) rows.push({ c, p: topk.score[t * topk.k + j] });
      }
    } else rows = [{ c: index[t], p: score ? score[t] : null }];
    setTip({
      r, q, rows,
      left: box.x + (q + 1) * (box.w / grid),
      top: box.y + r * (box.h / grid),
      cell: { left: box.x + q * (box.w / grid), top: box.y + r * (box.h / grid), w: box.w / grid, h: box.h / grid },
    });
  };

  return html`<figure class="tokens">
    ${title && html`<figcaption>${title}</figcaption>`}
    <div class="tokens-wrap" style=${{ width: W + "px", height: H + "px" }}>
      <canvas ref=${canvas} data-test=${test} onMouseMove=${move} onMouseLeave=${() => setTip(null)}></canvas>
      ${tip && html`<div class="cell-hl" style=${{ left: tip.cell.left + "px", top: tip.cell.top + "px", width: tip.cell.w + "px", height: tip.cell.h + "px" }}></div>`}
      ${tip && html`<div class="token-tip" data-test="token-tip" style=${{ left: Math.min(tip.left + 4, W - 150) + "px", top: tip.top + "px" }}>
        <div class="muted">token (${tip.r}, ${tip.q})</div>
        ${tip.rows.map((row) => html`<div><i class="swatch" style=${{ background: classColor(row.c) }}></i>${className(row.c)} ${row.p != null && html`<b>${(row.p * 100).toFixed(1)}%</b>`}</div>`)}
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
