// Job-spec helpers for the submit form: JSON pointers, the schema
// (schema/jobspec.schema.json, compiled into a validator at build time by
// vite.config.js) and the checks the schema cannot express, mirroring
// engine/jobs/jobspec.c and engine/model/config.c so that the form names the same field.
import { jobspecSchema, validate as schemaValidate } from "virtual:jobspec-validate";

export { jobspecSchema };

const unesc = (t) => t.replace(/~1/g, "/").replace(/~0/g, "~");
export const tokens = (ptr) => (ptr ? ptr.slice(1).split("/").map(unesc) : []);

export function getAt(obj, ptr) {
  let o = obj;
  for (const t of tokens(ptr)) {
    if (o == null || typeof o !== "object") return undefined;
    o = o[t];
  }
  return o;
}

// A copy of obj with the value at ptr set (undefined deletes it); objects on the way are created.
export function setAt(obj, ptr, value) {
  const ts = tokens(ptr);
  const root = { ...(obj || {}) };
  let o = root;
  for (let i = 0; i < ts.length - 1; i++) {
    const cur = o[ts[i]];
    o[ts[i]] = cur && typeof cur === "object" && !Array.isArray(cur) ? { ...cur } : {};
    o = o[ts[i]];
  }
  const last = ts[ts.length - 1];
  if (value === undefined) delete o[last];
  else o[last] = value;
  return root;
}

// The schema node describing the value at ptr (through "properties"), or {}.
export function schemaAt(ptr) {
  let s = jobspecSchema;
  for (const t of tokens(ptr)) {
    if (!s || !s.properties || !s.properties[t]) return {};
    s = s.properties[t];
  }
  return s || {};
}

const isInt = (v) => typeof v === "number" && Number.isInteger(v);

// [{pointer, message}] for a spec: the schema's rules, then the cross-field rules of the daemon.
export function validateSpec(spec) {
  const out = [];
  const seen = new Set();
  const add = (pointer, message) => {
    const k = pointer + "\n" + message;
    if (!seen.has(k)) {
      seen.add(k);
      out.push({ pointer, message });
    }
  };
  if (!schemaValidate(spec)) {
    for (const e of schemaValidate.errors || []) {
      let ptr = e.instancePath || "";
      const inAnyOf = e.schemaPath.includes("/anyOf/");
      if (e.keyword === "anyOf") continue; // reported through its branches below
      if (inAnyOf) {
        // model: either a preset (branch 0) or all ten fields (branch 1); report the missing fields
        // (with model.init the architecture comes from the source: nothing is missing)
        if (e.keyword === "required" && e.schemaPath.includes("/anyOf/1/") && !(spec && spec.model && spec.model.init))
          add(ptr + "/" + e.params.missingProperty, "required (or choose a preset)");
        continue;
      }
      let msg = e.message || e.keyword;
      if (e.keyword === "additionalProperties") {
        ptr += "/" + e.params.additionalProperty;
        msg = "unknown field";
      } else if (e.keyword === "required") {
        ptr += "/" + e.params.missingProperty;
        msg = "required";
      } else if (e.keyword === "const") msg = "must be " + JSON.stringify(e.params.allowedValue);
      else if (e.keyword === "enum") msg = "must be one of " + e.params.allowedValues.map((v) => JSON.stringify(v)).join(", ");
      else if (e.keyword === "type") msg = "must be " + (e.params.type === "integer" ? "an integer" : e.params.type === "object" ? "an object" : e.params.type === "array" ? "an array" : "a " + e.params.type);
      else if (e.keyword === "minLength" && e.params.limit === 1) msg = "required";
      else if (e.keyword === "pattern" && ptr === "/name") msg = "must be 1 to 127 printable ASCII characters";
      add(ptr, msg.replace(">=", "≥").replace("<=", "≤"));
    }
  }
  const m = spec && spec.model;
  if (m && typeof m === "object") {
    if (isInt(m.img_size) && isInt(m.patch_size) && m.patch_size > 0 && m.img_size % m.patch_size !== 0)
      add("/model/img_size", `must be divisible by patch_size (${m.patch_size})`);
    if (isInt(m.embed_dim) && isInt(m.num_heads) && m.num_heads > 0 && m.embed_dim % m.num_heads !== 0)
      add("/model/embed_dim", `must be divisible by num_heads (${m.num_heads})`);
  }
  const t = spec && spec.train;
  if (t && typeof t === "object") {
    const epochs = isInt(t.epochs) ? t.epochs : 10;
    if (typeof t.warmup_epochs === "number" && t.warmup_epochs >= epochs)
      add("/train/warmup_epochs", `must be less than epochs (${epochs})`);
    const a = t.augment;
    if (a && Array.isArray(a.scale) && a.scale.length === 2 && !(a.scale[0] > 0 && a.scale[0] <= a.scale[1] && a.scale[1] <= 1))
      add("/train/augment/scale", "must be [min, max] with 0 < min ≤ max ≤ 1");
    if (a && Array.isArray(a.ratio) && a.ratio.length === 2 && !(a.ratio[0] > 0 && a.ratio[0] <= a.ratio[1]))
      add("/train/augment/ratio", "must be [min, max] with 0 < min ≤ max");
  }
  const d = spec && spec.data;
  if (d && typeof d === "object" && typeof d.train === "string" && d.train.split("/").includes(".."))
    add("/data/train", 'may not contain ".."');
  return out;
}
