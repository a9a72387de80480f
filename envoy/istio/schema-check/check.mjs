// Checks Istio and Gateway API documents against the CRD schemas of the releases package.json
// pins: @kubernetes-models/istio 3.0.1 (generated from Istio 1.29.2's crd-all.gen.yaml) and
// @kubernetes-models/gateway-api 2.0.0 (Gateway API v1.5), in two passes:
// - the packages' validators (ajv, compiled from the CRDs' OpenAPI schemas): types, enums,
//   required fields, patterns, lengths, ranges;
// - TypeScript's compiler against the packages' types (generated from the same schemas):
//   fields a schema does not have, which the validators let through but `kubectl apply`
//   (strict field validation, its default) refuses.
// Neither evaluates the CRDs' CEL rules (x-kubernetes-validations).
//
// Usage: node check.mjs NODE_MODULES DOC.json...   (one document per file; scripts/deps.sh
// installs the packages into .venv/schema-check/node_modules)
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
const ts = (await import(pathToFileURL(join(modules, "typescript/lib/typescript.js")))).default;

const packageOf = (group) =>
  group.endsWith(".istio.io")
    ? "@kubernetes-models/istio"
    : group === "gateway.networking.k8s.io"
      ? "@kubernetes-models/gateway-api"
      : undefined;

const problems = [];
// One TypeScript source per document, placed beside node_modules so that imports resolve.
const sources = new Map();
for (const file of files) {
  const doc = JSON.parse(readFileSync(file, "utf8"));
  const [group, version] = String(doc.apiVersion).split("/");
  const pkg = packageOf(group);
  const path = pkg && `${pkg}/${group}/${version}/${doc.kind}`;
  const Model = path && (await import(pathToFileURL(join(modules, `${path}.js`))).catch(() => ({})))[doc.kind];
  if (!Model) {
    problems.push(`${file}: no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    problems.push(`${file}: ${e.message}`);
  }
  const source = `import type { I${doc.kind} as T } from "${path}";\nexport const doc: T = ${JSON.stringify(doc, null, 1)};\n`;
  sources.set(join(dirname(modules), `doc-${sources.size}.ts`), { file, source });
}

const options = {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  target: ts.ScriptTarget.ES2022,
  lib: ["lib.es2022.d.ts"],
  types: [],
};
const host = ts.createCompilerHost(options);
const getSourceFile = host.getSourceFile.bind(host);
const fileExists = host.fileExists.bind(host);
host.getSourceFile = (name, language, ...rest) =>
  sources.has(name) ? ts.createSourceFile(name, sources.get(name).source, language) : getSourceFile(name, language, ...rest);
host.fileExists = (name) => sources.has(name) || fileExists(name);
const program = ts.createProgram([...sources.keys()], options, host);
for (const d of ts.getPreEmitDiagnostics(program)) {
  const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
  const origin = d.file && sources.get(d.file.fileName);
  if (!origin) {
    problems.push(`typescript: ${message}`);
    continue;
  }
  const { line } = d.file.getLineAndCharacterOfPosition(d.start);
  problems.push(`${origin.file}: ${message} (at ${d.file.text.split("\n")[line].trim()})`);
}

for (const p of problems) console.log(p);
// Every document is named in the output, the valid ones too, so that none passes unseen.
for (const file of files) if (!problems.some((p) => p.startsWith(`${file}: `))) console.log(`${file}: ok`);
console.log(`${files.length} documents, ${problems.length} problems`);
process.exit(problems.length === 0 ? 0 : 1);
