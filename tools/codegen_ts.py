"""The TypeScript SDK's generated code: protoc-gen-es 2 (`target=ts`) run by buf, into sdk/typescript/src/gen.

tools/codegen.py calls `generate` on a default run, so `make gen` writes it and `make check-gen` reports drift
in it. Both tools come from the root package.json (`make install`): buf compiles the protos and runs the local
plugin node_modules/.bin/protoc-gen-es, no BSR and no network. Imports end in `.js` (`import_extension=js`),
which is what Node's ESM loader and tsc's NodeNext resolution need, so the output works as emitted. Beside our
protos, the google/api and google/rpc files they import are generated (`include_imports`), plus
google/rpc/error_details.proto, which the SDK decodes from Connect error details for its typed errors.
google/protobuf's well-known types are not written: protoc-gen-es imports them from @bufbuild/protobuf/wkt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TS_GEN = ROOT / "sdk" / "typescript" / "src" / "gen"
NODE_BIN = ROOT / "node_modules" / ".bin"
EXTRA_PROTOS = ["google/rpc/error_details.proto"]
"""Not imported by our protos, but the SDK decodes them from Connect error details."""


def template(out: Path) -> str:
    """A buf.gen.yaml (v2) as JSON, naming the plugin by path so PATH doesn't matter."""
    plugin = {
        "local": str(NODE_BIN / "protoc-gen-es"),
        "out": str(out),
        "opt": ["target=ts", "import_extension=js"],
        "include_imports": True,
    }
    return json.dumps({"version": "v2", "plugins": [plugin]})


def generate(proto_roots: list[Path], out: Path, deps: Path) -> None:
    """Generate TypeScript for every .proto under proto_roots into out (created, must be empty).

    deps holds the google/api and google/rpc protos (what `codegen.py --export-deps` writes). All roots are
    copied into one module, so buf needs no buf.yaml and reads nothing of the repository's own.
    """
    buf = NODE_BIN / "buf"
    if not buf.exists():
        raise SystemExit(f"{buf} is missing: run `make install` (npm ci) first")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "module"
        files: list[str] = []
        for root in proto_roots:
            files.extend(sorted(str(p.relative_to(root)) for p in root.rglob("*.proto")))
            shutil.copytree(root, module, dirs_exist_ok=True)
        if not files:
            return
        shutil.copytree(deps, module, dirs_exist_ok=True)
        paths = [arg for f in [*files, *EXTRA_PROTOS] for arg in ("--path", f)]
        args = [str(buf), "generate", ".", "--template", template(out), *paths]
        # cwd in the module, outside the repository: buf must not find its buf.yaml.
        result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=module)
        if result.returncode != 0:
            raise SystemExit(f"buf generate (protoc-gen-es) failed:\n{result.stdout}{result.stderr}")
