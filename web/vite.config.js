// Vite build of the tokenlabd dashboard.
//
// The output folder comes from TL_WEB_OUT_DIR (CMake sets it to
// ${CMAKE_BINARY_DIR}/web/dist), else web/dist. Everything the page needs is
// bundled: no CDN, so the dashboard works offline.
//
// The job-spec validator is generated here, at build time, from
// schema/jobspec.schema.json by Ajv's standalone code generator and offered
// to the app as the module "virtual:jobspec-validate". The page therefore
// never compiles a schema at run time (no eval, so the daemon's
// Content-Security-Policy can forbid it) and always checks against the
// schema of the source tree it was built from.
import { defineConfig } from "vite";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020 from "ajv/dist/2020.js";
import standaloneCodeModule from "ajv/dist/standalone/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const schemaPath = path.resolve(here, "../schema/jobspec.schema.json");
const standaloneCode = standaloneCodeModule.default || standaloneCodeModule;

function jobspecValidator() {
  const id = "virtual:jobspec-validate";
  const resolved = "\0" + id;
  return {
    name: "tokenlab-jobspec-validate",
    resolveId(source) {
      return source === id ? resolved : null;
    },
    load(moduleId) {
      if (moduleId !== resolved) return null;
      this.addWatchFile(schemaPath);
      const schema = JSON.parse(fs.readFileSync(schemaPath, "utf8"));
      const ajv = new Ajv2020({ allErrors: true, strict: false, code: { source: true, esm: true } });
      const validate = ajv.compile(schema);
      let code = standaloneCode(ajv, validate);
      // Ajv's generated code reaches its small runtime helpers through require();
      // turn each into an ES import so that the bundle is plain ESM.
      const imports = [];
      code = code.replace(/require\("(ajv\/dist\/runtime\/[a-z0-9]+)"\)/g, (_, mod) => {
        const name = "__ajv_rt" + imports.length;
        imports.push(`import * as ${name} from "${mod}.js";`);
        return `{ default: (${name}.default && ${name}.default.default) || ${name}.default }`;
      });
      if (/\brequire\(/.test(code)) throw new Error("jobspec validator: unexpected require() in Ajv's output");
      return imports.join("\n") + "\n" + code + "\nexport const jobspecSchema = " + JSON.stringify(schema) + ";\n";
    },
  };
}

export default defineConfig({
  root: here,
  base: "/",
  plugins: [jobspecValidator()],
  build: {
    outDir: process.env.TL_WEB_OUT_DIR || path.resolve(here, "dist"),
    emptyOutDir: true,
    target: "es2020",
    sourcemap: false,
    assetsDir: "assets",
    chunkSizeWarningLimit: 1024,
    reportCompressedSize: false,
  },
  server: { proxy: { "/api": process.env.TL_API || "http://127.0.0.1:8080" } },
});
