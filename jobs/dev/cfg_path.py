"""Follow ``cfg`` from ``pipeline/job.py:run`` through the package: every call handed the config
(or a part of it), resolved through the caller's imports, depth first. Prints each step, then the
unique steps, the ones that cross into another module, and how often config.py and layout.py
are entered (the shape issue 27 asks to keep small).

    python jobs/dev/cfg_path.py [REPO_ROOT] [--steps]
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

EXCEPTIONS = ("Error", "Fault", "Failed")  # raising one is not a step the config takes


def load(root: Path) -> dict[str, ast.Module]:
    mods = {}
    for p in (root / "arhn_ray").rglob("*.py"):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = ast.parse(p.read_text())
    return mods


def functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    out: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.setdefault(node.name, node)
        if isinstance(node, ast.ClassDef):
            init = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
            if init:
                out.setdefault(node.name, init)
    return out


def imported(tree: ast.Module) -> dict[str, tuple[str, str]]:
    return {a.asname or a.name: (n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and n.module and n.module.startswith("arhn_ray") for a in n.names}  # fmt: skip


def handed_cfg(call: ast.Call) -> bool:
    args = [*call.args, *(k.value for k in call.keywords)]
    return any(isinstance(n, ast.Name) and n.id == "cfg" for a in args for n in ast.walk(a))


def trace(mods: dict[str, ast.Module]) -> list[tuple[str, str]]:
    steps, seen = [], set()

    def follow(mod: str, name: str) -> None:
        if (mod, name) in seen or (fn := functions(mods[mod]).get(name)) is None:
            return
        seen.add((mod, name))
        imports, local = imported(mods[mod]), functions(mods[mod])
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call) and handed_cfg(n)):
            target = None
            if isinstance(call.func, ast.Name) and call.func.id in imports:
                m, attr = imports[call.func.id]
                target = None if f"{m}.{attr}" in mods else (m, attr)
            elif isinstance(call.func, ast.Name) and call.func.id in local:
                target = (mod, call.func.id)
            elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
                m, attr = imports.get(call.func.value.id, ("", ""))
                target = (f"{m}.{attr}", call.func.attr) if f"{m}.{attr}" in mods else None
            if target and target[0] in mods and not target[1].endswith(EXCEPTIONS):
                steps.append((f"{mod}.{name}", f"{target[0]}.{target[1]}"))
                follow(*target)

    follow("arhn_ray.pipeline.job", "run")
    return list(dict.fromkeys(steps))


def main() -> None:
    root = Path(next((a for a in sys.argv[1:] if not a.startswith("-")), Path(__file__).resolve().parents[2]))
    steps = trace(load(root))
    if "--steps" in sys.argv:
        print("\n".join(f"{a} -> {b}" for a, b in steps))
    cross = [(a, b) for a, b in steps if a.rsplit(".", 1)[0] != b.rsplit(".", 1)[0]]
    entered = Counter(b.rsplit(".", 1)[0] for _, b in cross)
    modules = {m.rsplit(".", 1)[0] for step in steps for m in step}
    print(f"{len(steps)} steps through {len(modules)} modules; {len(cross)} cross into another module; "
          f"config.py entered {entered['arhn_ray.config']} times, layout.py {entered['arhn_ray.data.layout']}")  # fmt: skip


if __name__ == "__main__":
    main()
