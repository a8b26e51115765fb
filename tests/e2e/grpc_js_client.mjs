// A client in a second gRPC runtime (Node's @grpc/grpc-js), built from our .proto files at run
// time with @grpc/proto-loader: what a team in another language does with the schema.
// Usage: node grpc_js_client.mjs TARGET PROTO_ROOT GOOGLEAPIS_ROOT
// Prints one JSON document with what it saw; the pytest side asserts on it.
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [target, protoRoot, googleapisRoot] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  ["aibattle/v1/models.proto", "aibattle/v1/completions.proto"],
  { includeDirs: [protoRoot, googleapisRoot], keepCase: true, longs: String, enums: String, defaults: false },
);
const v1 = grpc.loadPackageDefinition(definition).aibattle.v1;
const credentials = grpc.credentials.createInsecure();
const models = new v1.ModelService(target, credentials);
const completions = new v1.CompletionService(target, credentials);

const unary = (client, method, request) =>
  new Promise((resolve) => {
    client[method](request, (error, reply) => resolve({ error, reply }));
  });

const listed = await unary(models, "ListModels", {});
const notFound = await unary(completions, "CreateCompletion", { model: "no-such-model", prompt: "hi" });
const chunks = await new Promise((resolve, reject) => {
  const seen = [];
  const call = completions.StreamCompletion({ model: "echo", prompt: "hi" });
  call.on("data", (chunk) => seen.push(chunk));
  call.on("error", reject);
  call.on("end", () => resolve(seen));
});

const details = notFound.error?.metadata?.get("grpc-status-details-bin")?.[0];
console.log(
  JSON.stringify({
    models: listed.reply.models.map((m) => m.id),
    not_found: {
      code: notFound.error?.code,
      details: notFound.error?.details,
      status_details_b64: details ? Buffer.from(details).toString("base64") : null,
    },
    chunks,
  }),
);
models.close();
completions.close();
