"""Regenerate every generated artifact from the protos (what `make gen` runs).

protoc (from grpcio-tools) writes protobuf modules, gRPC stubs and mypy-protobuf
`.pyi` stubs. Output goes to a fresh directory that then replaces the target, so
a removed proto leaves no stale module behind and running twice changes nothing.
Nothing protoc writes is edited afterwards: the proto package `aibattle.v1`
becomes the import path `aibattle.v1`, which works as emitted. The descriptor set
(source comments included, for the gateway's OpenAPI) goes to
gen/aibattle/aibattle_descriptors.binpb, package data of the `aibattle` namespace.

The SDK's messages and stubs come from the same protos through betterproto2's plugin, into
sdk/src/aibattle_sdk/_gen/ (see sdk/README.md): its imports are relative, so they work as emitted inside
`aibattle_sdk` and never collide with the server's `aibattle` package. google/rpc/error_details.proto is
generated too, for the SDK's typed errors (ErrorInfo, RetryInfo). The TypeScript SDK's code comes from them
too, through buf and protoc-gen-es, into sdk/typescript/src/gen/ (tools/codegen_ts.py).

The SDK's sync client and transport are generated too, from their asyncio twins (tools/unasync.py), on a
run that writes the SDK's own _gen/ (the default). So is the arena page's bundle (tools/build_arena.py:
web/arena/ and the TypeScript SDK into gateway/arena/static/).

    python tools/codegen.py            # rewrite gen/, the SDKs' generated code and the arena bundle
    python tools/codegen.py --check    # exit 1 if any differs from a fresh run
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import build_arena  # tools/build_arena.py, beside this script
import codegen_ts  # tools/codegen_ts.py, beside this script
import unasync  # tools/unasync.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOTS = [ROOT / "proto"]
GEN = ROOT / "gen"
SDK_GEN = ROOT / "sdk" / "src" / "aibattle_sdk" / "_gen"
SDK_EXTRA_PROTOS = ["google/rpc/error_details.proto"]
"""Not imported by our protos, but the SDK decodes them from grpc-status-details-bin."""


def include_paths() -> list[Path]:
    """Where protoc finds our imports: google/protobuf from grpcio-tools, google/api and google/rpc
    from googleapis-common-protos (no network, no vendored copies)."""
    import google.api.annotations_pb2 as annotations

    grpc_tools_protos = Path(str(resources.files("grpc_tools") / "_proto"))
    googleapis_root = Path(annotations.__file__).resolve().parent.parent.parent
    return [grpc_tools_protos, googleapis_root]


def plugin_args() -> list[str]:
    """mypy-protobuf's plugins sit beside this interpreter; name them so PATH doesn't matter."""
    bindir = Path(sys.executable).parent
    return [f"--plugin=protoc-gen-{name}={bindir / f'protoc-gen-{name}'}" for name in ("mypy", "mypy_grpc")]


def descriptor_set_path(files: list[str]) -> Path:
    """`aibattle/v1/x.proto` → `aibattle/aibattle_descriptors.binpb`: one FileDescriptorSet per top-level
    package, written inside that package's directory so the wheel ships it as package data (a file at
    the root of gen/ belongs to no package and setuptools leaves it out)."""
    top = Path(files[0]).parts[0]
    return Path(top) / f"{top}_descriptors.binpb"


def generate(proto_roots: list[Path], out: Path) -> None:
    """Run protoc over every .proto under proto_roots, writing into out (created, must be empty)."""
    out.mkdir(parents=True, exist_ok=True)
    for root in proto_roots:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
        if not files:
            continue
        descriptor_set = out / descriptor_set_path(files)
        # protoc creates the directories of the modules it writes, not the one of --descriptor_set_out.
        descriptor_set.parent.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            *(f"-I{p}" for p in include_paths()),
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *plugin_args(),
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            # Generated modules drop comments; the gateway's OpenAPI document needs them.
            f"--descriptor_set_out={descriptor_set}",
            "--include_imports",
            "--include_source_info",
            *files,
        ]
        # A subprocess, so the plugins' chatter ("Writing mypy to …") is shown only when protoc fails.
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"protoc failed for {root}:\n{result.stdout}{result.stderr}")


def generate_sdk(proto_roots: list[Path], out: Path) -> None:
    """Run protoc with betterproto2's plugin: messages and sync (grpcio) stubs, into out."""
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    for root in proto_roots:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
        if not files:
            continue
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            *(f"-I{p}" for p in include_paths()),
            f"--plugin=protoc-gen-python_betterproto2={bindir / 'protoc-gen-python_betterproto2'}",
            f"--python_betterproto2_out={out}",
            "--python_betterproto2_opt=client_generation=sync",
            *files,
            *SDK_EXTRA_PROTOS,
        ]
        # The plugin formats its output with the `ruff` on PATH, reading the ruff configuration of its
        # working directory: this venv's ruff and an empty directory make the output reproducible.
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        with tempfile.TemporaryDirectory() as cwd:
            result = subprocess.run(args, capture_output=True, text=True, check=False, env=env, cwd=cwd)
        if result.returncode != 0:
            raise SystemExit(f"protoc (betterproto2) failed for {root}:\n{result.stdout}{result.stderr}")


def generate_ts(proto_roots: list[Path], out: Path) -> None:
    """The TypeScript SDK's code (tools/codegen_ts.py), with the google protos export_deps copies."""
    with tempfile.TemporaryDirectory() as deps:
        export_deps(Path(deps) / "protos")
        codegen_ts.generate(proto_roots, out, Path(deps) / "protos")


def export_deps(out: Path) -> None:
    """Copy the google/api and google/rpc protos we import into out, for buf (which has no BSR here)."""
    import google.api.annotations_pb2 as annotations

    googleapis_root = Path(annotations.__file__).resolve().parent.parent.parent
    if out.exists():
        shutil.rmtree(out)
    for package in ("google/api", "google/rpc"):
        for proto in (googleapis_root / package).rglob("*.proto"):
            target = out / proto.relative_to(googleapis_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proto, target)


def diff(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees (missing on either side, or different bytes)."""
    changed: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        changed.extend(prefix + n for n in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        changed.extend(prefix + n for n in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(a, b, ignore=["__pycache__"]), "")
    return sorted(changed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if gen/ is not what the protos give")
    parser.add_argument("--out", type=Path, default=GEN, help="target directory (default: gen/)")
    parser.add_argument(
        "--sdk-out",
        type=Path,
        help="the SDK's target (default: sdk/src/aibattle_sdk/_gen/ when --out and --proto-root are the "
        "defaults, else none)",
    )
    parser.add_argument(
        "--ts-out",
        type=Path,
        help="the TypeScript SDK's target (default: sdk/typescript/src/gen/ when --out, --sdk-out and "
        "--proto-root are the defaults, else none)",
    )
    parser.add_argument("--proto-root", type=Path, action="append", help="proto root(s) (default: proto/)")
    parser.add_argument(
        "--export-deps", type=Path, metavar="DIR", help="only copy imported google protos to DIR"
    )
    args = parser.parse_args()
    if args.export_deps:
        export_deps(args.export_deps)
        return 0
    roots = args.proto_root or PROTO_ROOTS

    with tempfile.TemporaryDirectory() as tmp:
        targets = [(Path(tmp) / "gen", args.out, generate)]
        # A run on other protos or into another directory (tests do that) must not touch the SDK's code.
        sdk_out = args.sdk_out or (SDK_GEN if args.out == GEN and not args.proto_root else None)
        if sdk_out is not None:
            targets.append((Path(tmp) / "sdk", sdk_out, generate_sdk))
        ts_out = args.ts_out or (codegen_ts.TS_GEN if sdk_out == SDK_GEN and not args.sdk_out else None)
        if ts_out is not None:
            targets.append((Path(tmp) / "ts", ts_out, generate_ts))
        for fresh, _, run in targets:
            run(roots, fresh)
        sync_modules = sdk_out is not None and sdk_out.resolve() == SDK_GEN.resolve()
        if args.check:
            changed = []
            for fresh, target, _ in targets:
                found = diff(fresh, target) if target.exists() else ["(missing)"]
                changed.extend(f"{target.name}/{p}" for p in found)
            if sync_modules:
                changed.extend(str(p.relative_to(ROOT)) for p in unasync.stale())
                changed.extend(build_arena.stale())
            if changed:
                print("generated code is out of date; run `make gen`. Differs:", file=sys.stderr)
                print("\n".join(f"  {p}" for p in changed), file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        for fresh, target, _ in targets:
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(fresh, target)
        if sync_modules:
            unasync.write()
            build_arena.write()  # after the copy: it bundles the TypeScript SDK's fresh code
    return 0


if __name__ == "__main__":
    sys.exit(main())
