#!/usr/bin/env node
// Browser tests of the web dashboard: the real tokenlabd (port 0, a temporary
// state folder, a synthetic data root from `tokenlabd synth`) serving the
// built dashboard, driven in Debian's headless Chromium by playwright-core
// (from web/node_modules).
//
// usage: node tests/e2e/browser/run.mjs --bin build/bin/tokenlabd --web-dir build/web/dist --work DIR
//                                   [--client build/bin/tokenlab, default: next to --bin]
//                                   [--chromium /usr/bin/chromium] [--photos DIR] [--headed]
//
// Checks: the dashboard's class palette (web/src/palette.js) gives the same
// bytes as the C one (engine/include/tokenlab/palette.h, which the daemon's
// heat maps and the client use) for classes 0..999; the daemon's static file serving (types, caching, ETag/304,
// traversal, API 404s, 405); a bad spec in the submit form shows the field
// error and sends nothing (no POST seen by request interception); a small
// job submitted through the form (token asked for in the dialog) reaches
// SUCCEEDED on its page with charts drawn (series counts and coloured pixels
// on the chart canvases), log, checkpoints and state history; the job list;
// the comparison of two jobs (spec differences, one line per job); token
// inspection (target and prediction grids drawn, hover tooltip with top-3,
// step slider, legend); predict (a model registered from the job, a photo
// uploaded, top-5 and the token heatmap); the submit form's Start-from
// control (a finished job and its checkpoint set model.init, the JSON editor
// and the form stay in step, "none" restores the architecture fields) and a
// fine-tuned job's page (its source linked); label maps (the synthetic data's
// map chosen in the list, the prefix filter, an image's token map painted
// with the classes the API gives, the hover tooltip, the legend; an annotate
// job's page opening the map it wrote); the daemon bound off loopback (the
// dashboard asks for a token to read, a read-only token from `tokenlabd token
// add --read` shows the jobs, and deleting asks for the admin token, which
// deletes). Without the shared photos the predict
// part is reported PENDING. Screenshots go to
// DIR/screenshots. Prints "N passed, M failed, K pending"; exits 1 on failure.
import { spawn, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../..");

function arg(name, dflt) {
  const i = process.argv.indexOf("--" + name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const BIN = arg("bin");
const CLIENT = arg("client", BIN ? path.join(path.dirname(BIN), "tokenlab") : undefined);
const WEB = arg("web-dir");
const WORK = path.resolve(arg("work", path.join(repo, "build/test-tmp/browser")));
const CHROMIUM = arg("chromium", "/usr/bin/chromium");
const PHOTOS = arg("photos", path.join(process.env.TL_SHARED_DATA || path.resolve(repo, "../shared/data"), "photos"));
const HEADED = process.argv.includes("--headed");
const SHOTS = path.join(WORK, "screenshots");
const T0 = Date.now();

if (!BIN || !WEB) {
  console.error("usage: run.mjs --bin tokenlabd --web-dir DIST --work DIR");
  process.exit(2);
}
if (!fs.existsSync(CHROMIUM)) {
  console.error(`FAIL no Chromium at ${CHROMIUM}: install it with scripts/install-deps.sh --test (Debian package chromium)`);
  process.exit(1);
}
let chromium;
try {
  chromium = createRequire(path.join(repo, "web/package.json"))("playwright-core").chromium;
} catch (e) {
  console.error("FAIL playwright-core is not installed in web/node_modules (the build runs npm ci): " + e.message);
  process.exit(1);
}
if (!fs.existsSync(path.join(WEB, "index.html"))) {
  console.error(`FAIL no built dashboard in ${WEB} (build the tl_web target)`);
  process.exit(1);
}

// ---------------------------------------------------------------- results
const results = [];
class Pending extends Error {}
async function check(name, fn) {
  const t = Date.now();
  try {
    await fn();
    results.push([name, "PASS"]);
    console.log(`PASS ${name.padEnd(44)} ${((Date.now() - t) / 1000).toFixed(1)}s`);
  } catch (e) {
    if (e instanceof Pending) {
      results.push([name, "PENDING"]);
      console.log(`PENDING ${name}: ${e.message}`);
    } else {
      results.push([name, "FAIL"]);
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg || "assertion failed");
}

// ---------------------------------------------------------------- daemon
const daemon = { proc: null, port: 0, token: "" };

// Starts the daemon on a fresh work folder, or (again: true) on the one there; bind: the address to bind.
async function startDaemon({ again = false, bind = "127.0.0.1" } = {}) {
  const data = path.join(WORK, "data");
  if (!again) {
    fs.rmSync(WORK, { recursive: true, force: true });
    fs.mkdirSync(SHOTS, { recursive: true });
    const synth = spawnSync(BIN, ["synth", "--out", path.join(data, "synth"), "--classes", "4", "--train", "96", "--val", "32", "--size", "32"],
      { stdio: ["ignore", "ignore", "inherit"] });
    assert(synth.status === 0, "tokenlabd synth failed");
  }
  const log = fs.openSync(path.join(WORK, "daemon.log"), "a");
  daemon.proc = spawn(BIN, ["serve", "--port", "0", "--bind", bind, "--state", path.join(WORK, "state"), "--data-root", data,
    "--threads-per-job", "2", "--web-dir", WEB], { stdio: ["ignore", "pipe", log] });
  const rl = readline.createInterface({ input: daemon.proc.stdout });
  daemon.port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the daemon did not report its port")), 30000);
    rl.on("line", (line) => {
      fs.appendFileSync(path.join(WORK, "daemon.out"), line + "\n");
      const m = /listening on http:\/\/[^ ]*:(\d+)\//.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    daemon.proc.on("exit", (c) => reject(new Error("the daemon exited during start-up: " + c)));
  });
  daemon.token = fs.readFileSync(path.join(WORK, "state", "token"), "utf8").trim();
}

function stopDaemon() {
  return new Promise((resolve) => {
    if (!daemon.proc || daemon.proc.exitCode != null) return resolve();
    const t = setTimeout(() => daemon.proc.kill("SIGKILL"), 30000);
    daemon.proc.on("exit", () => {
      clearTimeout(t);
      resolve();
    });
    daemon.proc.kill("SIGTERM");
  });
}

// A raw HTTP request (no URL normalisation, so ".." reaches the server as sent).
function raw(method, p, headers = {}, body = null) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: daemon.port, method, path: p, headers: { Host: `127.0.0.1:${daemon.port}`, ...headers } }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

async function apiCall(method, p, json, { token = true } = {}) {
  const headers = {};
  if (token) headers.Authorization = "Bearer " + daemon.token;
  let body = null;
  if (json !== undefined) {
    body = Buffer.from(JSON.stringify(json));
    headers["Content-Type"] = "application/json";
  }
  const r = await raw(method, p, headers, body);
  const ct = r.headers["content-type"] || "";
  return { status: r.status, json: ct.includes("json") && r.body.length ? JSON.parse(r.body) : null };
}

async function waitJob(id, states, ms = 150000) {
  const end = Date.now() + ms;
  for (;;) {
    const r = await apiCall("GET", `/api/v1/jobs/${id}`);
    if (r.status === 200 && states.includes(r.json.state)) return r.json;
    if (Date.now() > end) throw new Error(`job ${id} did not reach ${states}: ${JSON.stringify(r.json && r.json.state)}`);
    await new Promise((res) => setTimeout(res, 300));
  }
}

// ---------------------------------------------------------------- page helpers
const base = () => `http://127.0.0.1:${daemon.port}`;
async function shot(page, name) {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: true });
}

// Pixels of a canvas near an RGB colour (the chart's series colour), counted in the page.
async function colouredPixels(page, selector, rgb, tol = 40) {
  return page.$eval(
    selector,
    (c, [rgb, tol]) => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4)
        if (d[i + 3] > 0 && Math.abs(d[i] - rgb[0]) < tol && Math.abs(d[i + 1] - rgb[1]) < tol && Math.abs(d[i + 2] - rgb[2]) < tol) n++;
      return n;
    },
    [rgb, tol],
  );
}

// Waits until a canvas shows at least min pixels of a colour (charts draw after the DOM updates); returns the count.
async function waitPixels(page, selector, rgb, min, ms = 10000) {
  const end = Date.now() + ms;
  let n = 0;
  for (;;) {
    n = await colouredPixels(page, selector, rgb).catch(() => 0);
    if (n >= min || Date.now() > end) return n;
    await page.waitForTimeout(150);
  }
}

// Pixels that are clearly coloured (saturated), e.g. token grids painted with the class palette.
async function saturatedPixels(page, selector) {
  return page.$eval(selector, (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const mx = Math.max(d[i], d[i + 1], d[i + 2]), mn = Math.min(d[i], d[i + 1], d[i + 2]);
      if (d[i + 3] > 0 && mx - mn > 40) n++;
    }
    return n;
  });
}

async function waitSaturated(page, selector, min, ms = 10000) {
  const end = Date.now() + ms;
  let n = 0;
  for (;;) {
    n = await saturatedPixels(page, selector).catch(() => 0);
    if (n >= min || Date.now() > end) return n;
    await page.waitForTimeout(150);
  }
}

// Pixels of a canvas per class of the palette (hue within 10 degrees of the class's hue, clearly
// coloured), for the first n classes: shows which classes a token grid is painted with. Only meaningful
// when the grid is drawn over a neutral background (blending with grey keeps the hue).
async function classPixels(page, selector, n) {
  return page.$eval(
    selector,
    (c, n) => {
      const hueOf = (r, g, b) => {
        const mx = Math.max(r, g, b), mn = Math.min(r, g, b), d = mx - mn;
        if (d === 0) return 0;
        let h = mx === r ? ((g - b) / d) % 6 : mx === g ? (b - r) / d + 2 : (r - g) / d + 4;
        return ((h * 60) + 360) % 360;
      };
      const want = [];
      for (let k = 0; k < n; k++) want.push(((k * 0.618033988749895) % 1) * 360);
      const out = new Array(n).fill(0);
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      for (let i = 0; i < d.length; i += 4) {
        const mx = Math.max(d[i], d[i + 1], d[i + 2]), mn = Math.min(d[i], d[i + 1], d[i + 2]);
        if (d[i + 3] === 0 || mx - mn < 30) continue;
        const h = hueOf(d[i], d[i + 1], d[i + 2]);
        for (let k = 0; k < n; k++) {
          const dh = Math.abs(h - want[k]);
          if (Math.min(dh, 360 - dh) < 10) out[k]++;
        }
      }
      return out;
    },
    n,
  );
}

async function chartInfo(page, id) {
  return page.$eval(`[data-chart="${id}"]`, (el) => ({ series: Number(el.dataset.series), points: Number(el.dataset.points) }));
}

const SPEC_MODEL = { img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, mlp_ratio: 2, stem_channels: 8,
                     skip_lam: 1.0, drop_path_rate: 0.0 };

// ---------------------------------------------------------------- the tests
// The palette exists twice, in C (engine/include/tokenlab/palette.h) and in JavaScript
// (web/src/palette.js, bundled into the dashboard as it is), and the two must agree to the byte.
// Pixels are no good for this (the daemon's heat maps are JPEG, the canvases blend), so the C copy
// is asked directly: the client's hidden `tokenlab palette N` prints tl_class_colour for classes
// 0..N-1 as JSON, and classRgb from the dashboard's source is imported here in node. A change to
// either copy (hue step, saturation, value, sector order, rounding) fails this check.
async function checkPalette() {
  await check("class palette: web/src/palette.js = tokenlab/palette.h", async () => {
    assert(CLIENT && fs.existsSync(CLIENT), `no client binary at ${CLIENT} (build the tokenlab target or pass --client)`);
    const out = spawnSync(CLIENT, ["palette", "1000"], { encoding: "utf8" });
    assert(out.status === 0, `tokenlab palette 1000 exited ${out.status}: ${out.stderr}`);
    const want = JSON.parse(out.stdout);
    assert(Array.isArray(want) && want.length === 1000, "tokenlab palette 1000 printed " + out.stdout.slice(0, 200));
    const { classRgb } = await import(path.join(repo, "web/src/palette.js"));
    const bad = [];
    for (let c = 0; c < want.length; c++) {
      const got = classRgb(c);
      if (got.length !== 3 || got.some((v, k) => v !== want[c][k])) bad.push(`class ${c}: JS ${got} vs C ${want[c]}`);
    }
    assert(bad.length === 0, `${bad.length} of 1000 classes differ, e.g. ${bad.slice(0, 5).join("; ")}`);
  });
}

async function main() {
  await checkPalette();
  await startDaemon();
  console.log(`daemon on port ${daemon.port}, work folder ${WORK}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: !HEADED,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
           "--disable-extensions", "--no-first-run", "--mute-audio"],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(60000); // generous: CI runs the ASan build and other tests on 2 cores
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) pageErrors.push("console: " + m.text());
  });
  const posts = [];
  const seriesRequests = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (r.method() === "POST" && u.pathname === "/api/v1/jobs") posts.push(r.postData());
    if (/^\/api\/v1\/jobs\/\d+\/metrics\/[^/]+$/.test(u.pathname)) seriesRequests.push(u);
  });
  let jobId = null;
  let job2 = null;
  let submitted = null;

  try {
    await check("static files: types, caching, traversal, errors", async () => {
      const idx = await raw("GET", "/");
      assert(idx.status === 200 && /text\/html/.test(idx.headers["content-type"]), "GET / is not HTML: " + idx.status);
      assert(/no-cache/.test(idx.headers["cache-control"]), "index.html must be revalidated: " + idx.headers["cache-control"]);
      assert(/default-src 'self'/.test(idx.headers["content-security-policy"] || ""), "no CSP on index.html");
      const asset = /src="(\/assets\/[^"]+\.js)"/.exec(idx.body.toString())[1];
      const a = await raw("GET", asset);
      assert(a.status === 200 && /javascript/.test(a.headers["content-type"]), "asset type " + a.headers["content-type"]);
      assert(/immutable/.test(a.headers["cache-control"]), "hashed assets are immutable: " + a.headers["cache-control"]);
      const nm = await raw("GET", asset, { "If-None-Match": a.headers.etag });
      assert(nm.status === 304 && nm.body.length === 0, "If-None-Match gives 304: " + nm.status);
      const head = await raw("HEAD", "/");
      assert(head.status === 200 && head.body.length === 0, "HEAD /");
      for (const p of ["/../../../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                       "/assets/..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd"]) {
        const t = await raw("GET", p);
        assert(!t.body.toString().includes("root:"), "traversal served /etc/passwd for " + p);
      }
      const spa = await raw("GET", "/jobs/7");
      assert(spa.status === 200 && /text\/html/.test(spa.headers["content-type"]), "unknown page paths get index.html");
      for (const p of ["/api/v1/nothing", "/v2/nothing", "/missing-file.js"]) {
        const t = await raw("GET", p);
        assert(t.status === 404 && /problem\+json/.test(t.headers["content-type"]), `${p}: ${t.status} ${t.headers["content-type"]}`);
      }
      const post = await raw("POST", "/index.html", { "Content-Type": "text/plain" }, Buffer.from("x"));
      assert(post.status === 405 && /GET/.test(post.headers.allow || ""), "POST to a file: " + post.status);
      const ds = await apiCall("GET", "/api/v1/datasets", undefined, { token: false });
      assert(ds.status === 200, "GET /api/v1/datasets: " + ds.status);
      const train = ds.json.datasets.find((d) => d.path === "synth/train");
      assert(train && train.classes === 4 && train.images === 96 && train.has_label_maps && train.label_maps === "synth/train.tllm",
        "datasets: " + JSON.stringify(ds.json));
    });

    await check("dashboard loads (empty job list)", async () => {
      await page.goto(base() + "/");
      await page.waitForSelector("h1:has-text('Jobs')");
      await page.waitForSelector("text=No jobs yet");
      await shot(page, "01-jobs-empty");
    });

    await check("bad spec: field error shown, nothing sent", async () => {
      await page.goto(base() + "/#/submit");
      await page.waitForFunction(() => {
        const s = document.querySelector('[data-pointer="/data/train"] select');
        return s && s.value === "synth/train";
      });
      // the dataset brought its validation split, label maps and class count
      assert((await page.$eval('[data-pointer="/data/val"] select', (s) => s.value)) === "synth/val", "val split not filled in");
      assert((await page.$eval('[data-pointer="/data/label_maps"] select', (s) => s.value)) === "synth/train.tllm", "label maps not filled in");
      assert((await page.$eval('[data-pointer="/model/num_classes"] input', (s) => s.value)) === "4", "num_classes not set from the dataset");
      await page.fill('[data-pointer="/train/epochs"] input', "0");
      await page.fill('[data-pointer="/model/embed_dim"] input', "33"); // not divisible by num_heads (4)
      // an unknown field through the JSON editor
      const spec = JSON.parse(await page.inputValue("[data-test=json-editor]"));
      spec.train.bogus_field = 1;
      await page.fill("[data-test=json-editor]", JSON.stringify(spec, null, 2));
      await page.click("[data-test=submit]");
      await page.waitForSelector('[data-pointer="/train/epochs"] .field-error');
      const msg = await page.textContent('[data-pointer="/train/epochs"] .field-error');
      assert(/≥ 1|>= 1/.test(msg), "epochs error: " + msg);
      const emb = await page.textContent('[data-pointer="/model/embed_dim"] .field-error');
      assert(/divisible by num_heads/.test(emb), "embed_dim error: " + emb);
      const other = await page.textContent(".json-errors");
      assert(/\/train\/bogus_field/.test(other) && /unknown field/.test(other), "unknown field not listed: " + other);
      await page.waitForSelector("[data-test=form-invalid]");
      await shot(page, "02-submit-invalid");
      await page.waitForTimeout(300);
      assert(posts.length === 0, `the form sent ${posts.length} POST /api/v1/jobs`);
      assert(!(await page.$("#token-input")), "the token dialog opened for an invalid spec");
    });

    await check("submit a job through the form (token dialog)", async () => {
      await page.goto(base() + "/#/jobs");
      await page.goto(base() + "/#/submit");
      await page.waitForFunction(() => document.querySelector('[data-pointer="/data/train"] select')?.value === "synth/train");
      await page.fill('[data-pointer="/name"] input', "browser-form-job");
      for (const [k, v] of Object.entries(SPEC_MODEL)) await page.fill(`[data-pointer="/model/${k}"] input`, String(v));
      const train = { epochs: 3, batch_size: 16, lr: 0.002, warmup_epochs: 0, ema_decay: 0.9, eval_every_epochs: 1, checkpoint_every_epochs: 1 };
      for (const [k, v] of Object.entries(train)) await page.fill(`[data-pointer="/train/${k}"] input`, String(v));
      // the rest through the JSON editor
      const spec = JSON.parse(await page.inputValue("[data-test=json-editor]"));
      Object.assign(spec.train, { cache_mb: 16, loader_threads: 1 });
      await page.fill("[data-test=json-editor]", JSON.stringify(spec, null, 2));
      assert((await page.$$(".field-error")).length === 0, "field errors on a good spec: " + (await page.textContent("form")).slice(0, 300));
      await page.click("[data-test=submit]");
      await page.waitForSelector("#token-input");
      await shot(page, "03-token-dialog");
      await page.fill("#token-input", daemon.token);
      await page.click("#token-save");
      await page.waitForFunction(() => /^#\/jobs\/\d+$/.test(location.hash), null, { timeout: 20000 });
      jobId = Number((await page.evaluate(() => location.hash)).split("/").pop());
      assert(posts.length === 1, "POSTs: " + posts.length);
      const sent = JSON.parse(posts[0]);
      assert(sent.name === "browser-form-job" && sent.model.embed_dim === 32 && sent.train.cache_mb === 16 &&
             sent.data.train === "synth/train" && sent.data.label_maps === "synth/train.tllm", "sent spec: " + posts[0]);
      assert((await page.evaluate(() => localStorage.getItem("tokenlab.token"))) === daemon.token, "token not kept");
      submitted = sent;
    });

    await check("job page: SUCCEEDED live, charts drawn", async () => {
      assert(jobId, "no job");
      await page.waitForSelector(".job-head .state.succeeded", { timeout: 150000 });
      for (const [id, minSeries] of [["loss", 3], ["lr", 1], ["img_per_s", 1], ["top1", 1], ["top5", 1]]) {
        await page.waitForFunction(
          ([id, n]) => {
            const el = document.querySelector(`[data-chart="${id}"]`);
            return el && Number(el.dataset.series) >= n && Number(el.dataset.points) >= 2;
          },
          [id, minSeries],
          { timeout: 60000 },
        );
      }
      const loss = await chartInfo(page, "loss");
      assert(loss.series === 3 && loss.points >= 10, "loss chart: " + JSON.stringify(loss));
      const top1 = await chartInfo(page, "top1");
      assert(top1.series === 2, "top-1 chart should show raw and EMA: " + JSON.stringify(top1));
      // the lines are really painted: pixels of the series colours on the canvases
      const blue = [37, 99, 235], red = [220, 38, 38];
      const nLoss = await waitPixels(page, '[data-chart="loss"] canvas', blue, 41);
      const nLossCls = await waitPixels(page, '[data-chart="loss"] canvas', red, 41);
      const nTop1 = await waitPixels(page, '[data-chart="top1"] canvas', blue, 11);
      assert(nLoss > 40 && nLossCls > 40 && nTop1 > 10, `chart pixels: loss ${nLoss}, loss_cls ${nLossCls}, top1 ${nTop1}`);
      await page.waitForFunction(() => (document.querySelector("[data-test=log]")?.textContent || "").length > 10);
      await page.waitForSelector("[data-test=checkpoints] tbody tr");
      const hist = await page.textContent(".grid2");
      assert(/RUNNING/.test(hist) && /SUCCEEDED/.test(hist), "state history");
      await shot(page, "04-job-succeeded");
      // controls: log scale, no smoothing, time axis: still drawn
      await page.check("[data-test=log-scale]");
      await page.$eval("[data-test=smoothing]", (el) => {
        el.value = "0";
        el.dispatchEvent(new Event("input", { bubbles: true }));
      });
      await page.selectOption("[data-test=x-mode]", "relative");
      await page.waitForTimeout(500);
      const n2 = await waitPixels(page, '[data-chart="loss"] canvas', blue, 41);
      assert(n2 > 40, "loss chart after log scale / time axis: " + n2);
      await page.uncheck("[data-test=log-scale]");
      await page.selectOption("[data-test=x-mode]", "step");
      await page.waitForTimeout(300); // the charts are rebuilt for the new axis
      // zoom: drag across the loss chart, the range is refetched; then reset
      const over = await page.locator('[data-chart="loss"] .u-over').boundingBox();
      assert(over, "no loss plot to drag across");
      await page.mouse.move(over.x + over.width * 0.3, over.y + over.height / 2);
      await page.mouse.down();
      await page.mouse.move(over.x + over.width * 0.7, over.y + over.height / 2, { steps: 5 });
      await page.mouse.up();
      await page.waitForSelector("text=/showing steps \\d+–\\d+/");
      const zoomed = seriesRequests.filter((u) => u.searchParams.has("start_step"));
      assert(zoomed.length > 0, "zooming fetched no range");
      await page.waitForFunction(() => Number(document.querySelector('[data-chart="loss"]')?.dataset.points) >= 2);
      await page.click("text=reset zoom");
      await page.waitForSelector("text=/showing steps/", { state: "detached" });
      // the page only ever asks for bucketed series (a million points cost what a thousand do)
      assert(seriesRequests.length > 0, "no series requests seen");
      const unbounded = seriesRequests.filter((u) => !(Number(u.searchParams.get("max_points")) > 0 && Number(u.searchParams.get("max_points")) <= 2000));
      assert(unbounded.length === 0, "series fetched without a small max_points: " + unbounded.slice(0, 3).join(", "));
    });

    await check("job list: a new job appears and finishes live", async () => {
      await page.goto(base() + "/#/jobs");
      await page.waitForSelector(`tr[data-job="${jobId}"][data-state="SUCCEEDED"]`);
      const row = await page.textContent(`tr[data-job="${jobId}"]`);
      assert(/100%/.test(row) && /3\/3/.test(row), "row: " + row);
      await page.waitForSelector(".live-badge.live"); // the global event stream is connected
      await page.evaluate(() => (window.__sameDocument = 1));
      // a second job (for the comparison too), submitted behind the page's back
      const r = await apiCall("POST", "/api/v1/jobs", { ...submitted, name: "browser-api-job", train: { ...submitted.train, lr: 0.004, seed: 7 } });
      assert(r.status === 201, "second job: " + r.status);
      job2 = r.json.id;
      await page.waitForSelector(`tr[data-job="${job2}"]`, { timeout: 10000 });
      await page.waitForSelector(`tr[data-job="${job2}"][data-state="SUCCEEDED"]`, { timeout: 150000 });
      assert((await page.evaluate(() => window.__sameDocument)) === 1, "the page reloaded");
      await page.click('[data-state="SUCCEEDED"]');
      await page.waitForFunction(() => location.hash.includes("state=SUCCEEDED"));
      await page.waitForSelector(`tr[data-job="${jobId}"]`);
      await shot(page, "05-jobs");
    });

    await check("without a global event stream: polling", async () => {
      // as with a daemon that has no /api/v1/events: the list polls, job pages use their own stream
      const p2 = await context.newPage();
      p2.on("pageerror", (e) => pageErrors.push("page 2: " + e));
      await p2.route("**/api/v1/events", (route) =>
        route.fulfill({ status: 404, contentType: "application/problem+json",
                        body: JSON.stringify({ type: "about:blank", title: "Not Found", status: 404, code: "NOT_FOUND", detail: "no such resource" }) }));
      await p2.goto(base() + "/#/jobs");
      await p2.waitForSelector(".live-badge.polling");
      const r = await apiCall("POST", "/api/v1/jobs", { ...submitted, name: "browser-polled-job", train: { ...submitted.train, epochs: 2 } });
      assert(r.status === 201, "third job: " + r.status);
      await p2.waitForSelector(`tr[data-job="${r.json.id}"]`, { timeout: 10000 });
      await p2.goto(base() + "/#/jobs/" + r.json.id);
      await p2.waitForSelector(".job-head .state.succeeded", { timeout: 150000 });
      await p2.waitForFunction(() => Number(document.querySelector('[data-chart="loss"]')?.dataset.points) >= 2);
      await p2.close();
    });

    await check("compare two jobs: spec diff and overlay", async () => {
      await waitJob(job2, ["SUCCEEDED"]);
      await page.goto(base() + `/#/compare?ids=${jobId},${job2}`);
      await page.waitForSelector('[data-test=spec-diff] tr[data-key="/train/lr"]');
      const keys = await page.$$eval("[data-test=spec-diff] tbody tr", (rows) => rows.map((r) => r.dataset.key));
      assert(keys.includes("/name") && keys.includes("/train/seed") && !keys.includes("/model/depth"), "diff keys: " + keys);
      await page.waitForFunction(() => Number(document.querySelector('[data-chart="cmp-loss"]')?.dataset.series) === 2, null, { timeout: 60000 });
      const red = await waitPixels(page, '[data-chart="cmp-loss"] canvas', [220, 38, 38], 41);
      assert(red > 40, "second job's line not drawn: " + red);
      await shot(page, "06-compare");
    });

    await check("token inspection", async () => {
      const meta = await apiCall("GET", `/api/v1/jobs/${jobId}/samples`);
      assert(meta.status === 200 && meta.json.samples.length > 0 && meta.json.steps.length > 0, "samples: " + JSON.stringify(meta.json).slice(0, 300));
      await page.goto(base() + `/#/jobs/${jobId}/inspect`);
      await page.waitForSelector("[data-test=pred-canvas][data-drawn]");
      await page.waitForSelector("[data-test=target-canvas][data-drawn]");
      await page.waitForSelector("[data-test=legend]");
      const legend = await page.textContent("[data-test=legend]");
      assert(meta.json.classes.every((c) => legend.includes(c.label)), "legend: " + legend);
      const sat = await waitSaturated(page, "[data-test=pred-canvas]", 2001);
      assert(sat > 2000, "prediction grid not painted: " + sat);
      // hover the middle of the first target grid: top-3 with probabilities
      const box = await (await page.$("[data-test=target-canvas]")).boundingBox();
      await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
      await page.waitForSelector("[data-test=token-tip]");
      const tip = await page.textContent("[data-test=token-tip]");
      assert(/token \(\d+, \d+\)/.test(tip) && (tip.match(/%/g) || []).length >= 1, "tooltip: " + tip);
      await shot(page, "07-inspect");
      const steps = [...new Set(meta.json.steps.map((s) => s.step))].sort((a, b) => a - b);
      if (steps.length > 1) {
        await page.$eval("[data-test=step-slider]", (el) => {
          el.value = "0";
          el.dispatchEvent(new Event("input", { bubbles: true }));
        });
        await page.waitForFunction((s) => document.querySelector("[data-test=step-value]")?.textContent === String(s), steps[0]);
      }
    });

    await check("predict a photo", async () => {
      const photos = fs.existsSync(PHOTOS) ? fs.readdirSync(PHOTOS).filter((f) => /\.jpe?g$/i.test(f)).sort() : [];
      if (!photos.length) throw new Pending(`no photos in ${PHOTOS}`);
      const list = await apiCall("GET", "/api/v1/models");
      // register the finished job's best checkpoint from its page (POST /api/v1/models)
      await page.goto(base() + `/#/jobs/${jobId}`);
      await page.click("[data-test=register-model]");
      await page.fill(".inline-form input", "browser-test");
      const [req] = await Promise.all([
        page.waitForRequest((r) => r.method() === "POST" && new URL(r.url()).pathname === "/api/v1/models"),
        page.click(".inline-form button[type=submit]"),
      ]);
      assert(JSON.parse(req.postData()).job_id === jobId, "register body: " + req.postData());
      await page.waitForSelector(".inline-form .ok");
      const end = Date.now() + 60000;
      let m;
      do {
        m = (await apiCall("GET", "/api/v1/models/browser-test")).json;
        if (m.state === "READY") break;
        await new Promise((r) => setTimeout(r, 300));
      } while (Date.now() < end && m.state !== "FAILED");
      assert(m.state === "READY", "model: " + JSON.stringify(m));
      await page.click(".inline-form .ok a"); // "predict with it"
      await page.waitForFunction(() => location.hash === "#/predict?model=browser-test");
      await page.waitForFunction(() => document.querySelector("[data-test=model-select]")?.value === "browser-test");
      await page.setInputFiles("[data-test=file-input]", path.join(PHOTOS, photos[0]));
      await page.waitForSelector("[data-test=top5] li");
      const n = (await page.$$("[data-test=top5] li")).length;
      assert(n === Math.min(5, m.num_classes), "top-k rows: " + n);
      await page.waitForSelector("[data-test=predict-canvas][data-drawn]");
      const sat = await waitSaturated(page, "[data-test=predict-canvas]", 2001);
      assert(sat > 2000, "token heatmap not painted: " + sat);
      await shot(page, "08-predict");
    });

    await check("submit: start from a finished job (model.init), form and JSON in step", async () => {
      assert(jobId, "no job");
      await page.goto(base() + "/#/submit");
      await page.waitForFunction(() => document.querySelector('[data-pointer="/data/train"] select')?.value === "synth/train");
      await page.fill('[data-pointer="/model/embed_dim"] input', "48");
      await page.selectOption("[data-test=start-from-kind]", "job");
      await page.waitForSelector("[data-test=start-from-job]");
      await page.selectOption("[data-test=start-from-job]", String(jobId));
      await page.selectOption("[data-test=start-from-checkpoint]", "last");
      let spec = JSON.parse(await page.inputValue("[data-test=json-editor]"));
      assert(spec.model.init && spec.model.init.job_id === jobId && spec.model.init.checkpoint === "last",
             "model.init: " + JSON.stringify(spec.model));
      assert(spec.model.embed_dim === undefined && spec.model.num_classes === 4, "model fields with init: " + JSON.stringify(spec.model));
      assert(!(await page.$('[data-pointer="/model/embed_dim"] input')), "architecture fields shown with a source");
      assert(await page.$('[data-pointer="/model/img_size"] input'), "image size hidden with a source");
      await shot(page, "07b-start-from");
      // the JSON editor edits the same spec
      spec.model.init.checkpoint = "best";
      await page.fill("[data-test=json-editor]", JSON.stringify(spec, null, 2));
      await page.waitForFunction(() => document.querySelector("[data-test=start-from-checkpoint]")?.value === "best");
      // back to random weights: model.init goes, the architecture fields come back
      await page.selectOption("[data-test=start-from-kind]", "none");
      spec = JSON.parse(await page.inputValue("[data-test=json-editor]"));
      assert(spec.model.init === undefined && spec.model.embed_dim === 48, "after none: " + JSON.stringify(spec.model));
      await page.waitForSelector('[data-pointer="/model/embed_dim"] input');

      // the job page of a fine-tuned job
      const r = await apiCall("POST", "/api/v1/jobs", { ...submitted, name: "browser-ft", model: { init: { job_id: jobId, checkpoint: "last" } },
                                                      train: { ...submitted.train, epochs: 1 } });
      assert(r.status === 201, "fine-tune submit: " + r.status + " " + JSON.stringify(r.json));
      await waitJob(r.json.id, ["SUCCEEDED"]);
      await page.goto(base() + `/#/jobs/${r.json.id}`);
      await page.waitForSelector("[data-test=init-source] [data-test=init-job]");
      const text = await page.textContent("[data-test=init-source]");
      assert(text.includes(`#${jobId}`) && /last checkpoint/.test(text) && /step/.test(text) && /head/.test(text), "init line: " + text);
      await page.click("[data-test=init-job]");
      await page.waitForFunction((id) => location.hash === `#/jobs/${id}`, jobId);
      await shot(page, "07c-finetuned-job");
    });

    await check("label maps: list, images, token map", async () => {
      const list = await apiCall("GET", "/api/v1/labelmaps", undefined, { token: false });
      const info = list.json.labelmaps.find((m) => m.path === "synth/train.tllm");
      assert(info && info.dataset === "synth/train" && info.count === 96 && info.num_classes === 4 && !info.error,
        "labelmaps: " + JSON.stringify(list.json).slice(0, 400));
      await page.goto(base() + "/#/labelmaps");
      await page.click('[data-test=labelmap-list] tr[data-path="synth/train.tllm"] a');
      await page.waitForFunction(() => new URLSearchParams(location.hash.split("?")[1]).get("path") === "synth/train.tllm");
      await page.waitForSelector("[data-test=key-list] a[data-key]");
      // the path prefix filter: only keys of one class folder are listed
      const first = await page.getAttribute("[data-test=key-list] a[data-key]", "data-key");
      const folder = first.split("/")[0] + "/";
      const other = (await page.$$eval("[data-test=key-list] a[data-key]", (as) => as.map((a) => a.dataset.key))).find((k) => !k.startsWith(folder));
      await page.fill("[data-test=key-filter]", folder);
      await page.waitForFunction(
        (f) => {
          const ks = [...document.querySelectorAll("[data-test=key-list] a[data-key]")].map((a) => a.dataset.key);
          return location.hash.includes("prefix=") && ks.length > 0 && ks.every((k) => k.startsWith(f));
        },
        folder,
      );
      assert(other === undefined || !(await page.$(`[data-test=key-list] a[data-key="${other}"]`)), "the filter kept " + other);
      // the listed image whose map has the most top-1 classes (by the API), chosen in the list
      const keys = await page.$$eval("[data-test=key-list] a[data-key]", (as) => as.map((a) => a.dataset.key));
      let key = null, entry = null, most = 0;
      for (const k of keys) {
        const e = await apiCall("GET", `/api/v1/labelmaps/entry?path=synth%2Ftrain.tllm&key=${encodeURIComponent(k)}`, undefined, { token: false });
        assert(e.status === 200 && e.json.top1.index.length === e.json.h * e.json.w, `entry ${k}: ${e.status}`);
        const n = new Set(e.json.top1.index).size;
        if (n > most) [key, entry, most] = [k, e.json, n];
      }
      assert(most >= 2, "no listed image with two top-1 classes: " + keys);
      await page.click(`[data-test=key-list] a[data-key="${key}"]`);
      await page.waitForFunction((k) => document.querySelector("[data-test=entry-key]")?.textContent === k, key);
      await page.waitForSelector("[data-test=labelmap-canvas][data-drawn]");
      // the grid alone (no picture) at full overlay: each class's hue where, and only where, the map has it
      await page.uncheck("[data-test=show-image]");
      await page.$eval("[data-test=overlay]", (el) => {
        el.value = "1";
        el.dispatchEvent(new Event("input", { bubbles: true }));
      });
      await page.waitForTimeout(100);
      const cells = new Array(4).fill(0);
      for (const c of entry.top1.index) cells[c]++;
      const cellPx = await page.$eval("[data-test=labelmap-canvas]", (c, n) => (c.width * c.height) / n, entry.h * entry.w);
      const px = await classPixels(page, "[data-test=labelmap-canvas]", 4);
      const painted = px.filter((n) => n > 0.5 * cellPx).length;
      assert(painted >= 2, `several class colours expected: pixels per class ${px}, cells per class ${cells}`);
      for (let c = 0; c < 4; c++) {
        if (cells[c]) assert(px[c] > 0.6 * cells[c] * cellPx, `class ${c}: ${px[c]} pixels for ${cells[c]} cells of ${cellPx}`);
        else assert(px[c] < 0.05 * cellPx, `class ${c} is not in the map but has ${px[c]} pixels`);
      }
      await page.check("[data-test=show-image]");
      await page.$eval("[data-test=overlay]", (el) => {
        el.value = "0.55";
        el.dispatchEvent(new Event("input", { bubbles: true }));
      });
      const sat = await waitSaturated(page, "[data-test=labelmap-canvas]", 20001);
      assert(sat > 20000, "token map over the picture not painted: " + sat);
      // the legend names the dataset's 4 classes
      const legend = await page.textContent("[data-test=legend]");
      assert(entry.classes.length === 4 && entry.classes.every((n) => !/^class \d/.test(n) && legend.includes(n)), "legend: " + legend);
      // hover a location of the second class: its stored top-k classes with probabilities and logits
      const t = entry.top1.index.findIndex((c) => c !== entry.top1.index[0]);
      const box = await (await page.$("[data-test=labelmap-canvas]")).boundingBox();
      const r = Math.floor(t / entry.w), q = t % entry.w;
      await page.mouse.move(box.x + ((q + 0.5) * box.width) / entry.w, box.y + ((r + 0.5) * box.height) / entry.h);
      await page.waitForSelector("[data-test=token-tip]");
      const tip = await page.textContent("[data-test=token-tip]");
      const top = entry.classes[entry.top1.index[t]];
      assert(tip.includes(`(${r}, ${q})`) && tip.includes(top) && (tip.match(/%/g) || []).length === entry.topk &&
             (tip.match(/logit/g) || []).length === entry.topk, `tooltip at (${r}, ${q}), top-1 ${top}: ${tip}`);
      const firstRow = await page.textContent("[data-test=token-tip] > div:nth-child(2)");
      assert(firstRow.includes(top), "the tooltip's first row is not the top-1 class: " + firstRow);
      await shot(page, "09-labelmaps");
    });

    await check("annotate job: its page opens the label map it wrote", async () => {
      assert(jobId, "no trained job to annotate with");
      const out = "synth/val-annotated.tllm";
      const a = await apiCall("POST", "/api/v1/jobs", { kind: "annotate", name: "browser-annotate", source: { job_id: jobId }, data: { images: "synth/val", out }, annotate: { topk: 4 } });
      assert(a.status === 201, "annotate job: " + a.status + " " + JSON.stringify(a.json));
      await waitJob(a.json.id, ["SUCCEEDED"], 60000);
      await page.goto(base() + "/#/jobs/" + a.json.id);
      await page.click("a[data-test=open-labelmap]");
      await page.waitForFunction((o) => new URLSearchParams(location.hash.split("?")[1]).get("path") === o, out);
      await page.waitForSelector("[data-test=labelmap-info]");
      const info = await page.textContent("[data-test=labelmap-info]");
      assert(/32 images · 4 classes/.test(info) && info.includes("synth/val"), "map info: " + info);
      await page.click("[data-test=key-list] a[data-key]");
      await page.waitForSelector("[data-test=labelmap-canvas][data-drawn]");
      assert((await waitSaturated(page, "[data-test=labelmap-canvas]", 20001)) > 20000, "the annotated map is not painted");
    });

    await check("off loopback: a read-only token reads; deleting asks for the admin token", async () => {
      assert(jobId, "no finished job to delete");
      await stopDaemon();
      const add = spawnSync(BIN, ["token", "add", "--read", "viewer", "--state", path.join(WORK, "state")], { encoding: "utf8" });
      assert(add.status === 0, "tokenlabd token add: " + add.stderr);
      const readToken = add.stdout.trim();
      await startDaemon({ again: true, bind: "0.0.0.0" }); // every route now needs a token
      const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } }); // no stored token
      const p2 = await ctx.newPage();
      p2.setDefaultTimeout(60000);
      const errs = [];
      p2.on("pageerror", (e) => errs.push(String(e)));
      p2.on("dialog", (d) => d.accept()); // the delete confirmation
      try {
        await p2.goto(base() + "/#/jobs");
        await p2.waitForSelector("#token-input");
        assert((await p2.textContent(".modal")).includes("for reading too"), "the dialog does not say why");
        await p2.fill("#token-input", readToken);
        await p2.click("#token-save");
        await p2.waitForSelector(`a[href="#/jobs/${jobId}"]`); // the list, read with the read-only token
        await p2.goto(base() + `/#/jobs/${jobId}`);
        await p2.click("button:has-text('Delete')");
        await p2.waitForSelector("#token-input");
        assert((await p2.textContent(".modal")).includes("may only read"), "the dialog does not ask for the admin token");
        assert((await apiCall("GET", `/api/v1/jobs/${jobId}`)).status === 200, "deleted with a read-only token");
        await shot(p2, "10-read-only-token");
        await p2.fill("#token-input", daemon.token);
        await p2.click("#token-save");
        await p2.waitForFunction(() => location.hash === "#/jobs");
        assert((await apiCall("GET", `/api/v1/jobs/${jobId}`)).status === 404, "the admin token did not delete the job");
        assert(errs.length === 0, errs.join("\n"));
      } finally {
        await ctx.close();
      }
    });

    await check("no errors in the page", async () => {
      assert(pageErrors.length === 0, pageErrors.join("\n"));
    });
  } finally {
    await browser.close().catch(() => {});
    await stopDaemon();
  }
}

const guard = setTimeout(() => {
  console.log("FAIL the browser tests took longer than 280 s");
  stopDaemon().then(() => process.exit(1));
}, 280000);

main()
  .catch((e) => {
    results.push(["setup", "FAIL"]);
    console.log("FAIL setup: " + (e && e.stack ? e.stack : e));
  })
  .finally(() => {
    clearTimeout(guard);
    const n = (s) => results.filter((r) => r[1] === s).length;
    console.log(`screenshots in ${SHOTS}`);
    console.log(`${n("PASS")} passed, ${n("FAIL")} failed, ${n("PENDING")} pending (${((Date.now() - T0) / 1000).toFixed(0)} s)`);
    process.exit(n("FAIL") ? 1 : 0);
  });
