// Validates an AsyncAPI document with the official parser: `node validate.mjs <document.json|yaml>`.
// Prints {"document": path, "diagnostics": [...]} as JSON on stdout and exits 1 when any diagnostic has
// error severity (2 when the file cannot be read or the command is misused), so a caller needs only the
// exit status, and the JSON says what to fix.
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const SEVERITY = Object.fromEntries(Object.entries(DiagnosticSeverity).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k.toLowerCase()]));

const [path] = process.argv.slice(2);
if (!path) {
  console.error('usage: node validate.mjs <asyncapi document>');
  process.exit(2);
}
let text;
try {
  text = await readFile(path, 'utf8');
} catch (error) {
  console.error(`cannot read ${path}: ${error.message}`);
  process.exit(2);
}
// `source` lets the parser resolve relative $refs and name the file in its diagnostics.
const { diagnostics } = await new Parser().parse(text, { source: resolve(path) });
const report = diagnostics.map((d) => ({
  severity: SEVERITY[d.severity] ?? String(d.severity),
  code: d.code,
  message: d.message,
  path: d.path.join('/'),
  // The parser counts lines from 0; editors from 1.
  line: d.range ? d.range.start.line + 1 : undefined,
}));
console.log(JSON.stringify({ document: path, diagnostics: report }, null, 2));
process.exit(diagnostics.some((d) => d.severity === DiagnosticSeverity.Error) ? 1 : 0);
