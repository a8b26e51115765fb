// The one place the page imports the TypeScript SDK from: its sources, bundled by esbuild.
export * from "../../../sdk/typescript/src/index.js";
export { allowed_values, bounds } from "../../../sdk/typescript/src/gen/aibattle/v1/options_pb.js";
