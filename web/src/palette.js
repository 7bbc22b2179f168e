// The class palette, shared with the daemon's heatmaps and the client's token
// grids: class c has hue frac(c * 0.618033988749895), saturation 0.70 and value
// 0.95 (HSV -> RGB, each channel Math.round(x * 255)).
//
// This is the JavaScript copy; the C one is engine/include/tokenlab/palette.h
// (tl_class_colour). They must give the same bytes: tests/e2e/browser/run.mjs
// compares classRgb with `tokenlab palette 1000` (the C copy) and fails on any
// difference, so change both together.

const GOLDEN = 0.618033988749895;
const cache = new Map();

export function hsvToRgb(h, s, v) {
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s),
    q = v * (1 - f * s),
    t = v * (1 - (1 - f) * s);
  let r, g, b;
  switch (((i % 6) + 6) % 6) {
    case 0: r = v; g = t; b = p; break;
    case 1: r = q; g = v; b = p; break;
    case 2: r = p; g = v; b = t; break;
    case 3: r = p; g = q; b = v; break;
    case 4: r = t; g = p; b = v; break;
    default: r = v; g = p; b = q; break;
  }
  return [Math.round(r * 255), Math.round(g * 255), Math.round(b * 255)];
}

// [r, g, b] (0..255) of class c.
export function classRgb(c) {
  let rgb = cache.get(c);
  if (!rgb) {
    const h = (c * GOLDEN) % 1;
    rgb = hsvToRgb(h, 0.7, 0.95);
    cache.set(c, rgb);
  }
  return rgb;
}

export function classColor(c, alpha = 1) {
  const [r, g, b] = classRgb(c);
  return alpha >= 1 ? `rgb(${r}, ${g}, ${b})` : `rgba(${r}, ${g}, ${b}, ${alpha})`;
}
