// Validates an AsyncAPI 3.0 document (a file, or stdin) twice: against the
// official JSON Schema of AsyncAPI 3.0.0 that @asyncapi/specs ships, and
// with @asyncapi/parser, which also resolves every $ref and applies the
// spec's own rules. Prints each error and exits 1 when there is any.
import { readFileSync } from "node:fs";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import specs from "@asyncapi/specs";
import { Parser } from "@asyncapi/parser";

const text = readFileSync(process.argv[2] ?? 0, "utf8");
const document = JSON.parse(text);
let failed = false;

// As @asyncapi/parser does: the schema embeds the JSON Schema meta-schemas
// Ajv already has, which Ajv refuses to hold twice.
const schema = structuredClone(specs.schemas["3.0.0"]);
delete schema.definitions["http://json-schema.org/draft-07/schema"];
delete schema.definitions["http://json-schema.org/draft-04/schema"];
const ajv = new Ajv({ allErrors: true, strict: false, allowUnionTypes: true, unicodeRegExp: false });
addFormats(ajv);
const validate = ajv.compile(schema);
if (!validate(document)) {
  failed = true;
  for (const e of validate.errors) {
    console.error(`schema: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
  }
}

const { document: parsed, diagnostics } = await new Parser().parse(text);
for (const d of diagnostics) {
  if (d.severity === 0) {
    failed = true;
    console.error(`parser: ${d.path.join("/")} ${d.message}`);
  }
}
if (!parsed) {
  failed = true;
  console.error("parser: the document did not parse");
}
if (failed) {
  process.exit(1);
}
console.log(`valid AsyncAPI ${document.asyncapi}: ${Object.keys(document.channels ?? {}).length} channels, ${Object.keys(document.operations ?? {}).length} operations`);
