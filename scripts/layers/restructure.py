#!/usr/bin/env python3
"""Move mlxhost's modules into layer folders and rewrite every reference to them.

Run from the root of a git checkout of mlxhost (a clean work tree):

    python scripts/layers/restructure.py            # move + rewrite (the venv python)
    python scripts/layers/restructure.py --dry-run  # print the plan only

Idempotent: a module already at its new path is skipped, a name already
rewritten is left alone, so running it twice changes nothing the second time.

What it does, in order:
1. builds the module map: TABLE (old -> new), whole packages (PACKAGES), then
   every other file in src/mlxhost placed by FOLDER_RULES (printed as "placed by
   rule"); a file no rule places stays and is printed as "UNPLACED";
2. ``git mv`` for each file that exists at its old path;
3. rewrites references in every tracked text file (src, plugins, tests, bench,
   docs, scripts, .ci, pyproject.toml, README.md...): ``from a.b import c``
   statements (split when their names now live in different modules), dotted
   module names anywhere (imports, strings for monkeypatch / importlib /
   ``python -m``, entry points, docs) and file paths ``src/mlxhost/x/y.py``,
   ``mlxhost/x/y.py`` and the short ``runtime/y.py`` forms used in docs;
4. writes thin re-export modules for the plugin authors' public imports
   (SHIMS), the new packages' ``__init__.py`` (one line saying what the floor
   holds) and removes emptied packages;
5. ``ruff check --fix --select I`` (import order) and regenerates
   docs/settings.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path("src")

# old module -> new module (files). Packages' __init__ are named by the package.
TABLE: dict[str, str] = {
    # core: the bottom floor
    "mlxhost.types": "mlxhost.core.types",
    "mlxhost.domain": "mlxhost.core.domain",
    "mlxhost.errors": "mlxhost.core.errors",
    # settings
    "mlxhost.settings": "mlxhost.settings.table",
    "mlxhost.config": "mlxhost.settings.config_file",
    # runtime: orchestration only (runtime, worker, scheduler, memory, engine protocol stay)
    # engine
    "mlxhost.runtime.mlx_engine": "mlxhost.engine.mlx_engine",
    "mlxhost.runtime.batch": "mlxhost.engine.batch",
    "mlxhost.runtime.kernels": "mlxhost.engine.kernels",
    "mlxhost.runtime.cpu_split": "mlxhost.engine.cpu_split",
    "mlxhost.runtime.sampling": "mlxhost.engine.sampling",
    "mlxhost.runtime.constrain": "mlxhost.engine.constrain",
    "mlxhost.runtime.vision_inputs": "mlxhost.engine.vision_inputs",
    "mlxhost.runtime.prefix_cache": "mlxhost.engine.prefix.cache",
    "mlxhost.runtime.prefix_disk": "mlxhost.engine.prefix.disk",
    "mlxhost.runtime.vision_prefix": "mlxhost.engine.prefix.vision",
    # families
    "mlxhost.hookspecs": "mlxhost.families.hookspecs",
    "mlxhost.plugins": "mlxhost.families.plugins",
    "mlxhost.family": "mlxhost.families.family",
    "mlxhost.templating": "mlxhost.families.templating",
    "mlxhost.toolcalls": "mlxhost.families.toolcalls",
    "mlxhost.default_plugins": "mlxhost.families.builtin",
    # models
    "mlxhost.registry": "mlxhost.models.registry",
    "mlxhost.runtime.locate": "mlxhost.models.locate",
    "mlxhost.gguf_convert": "mlxhost.models.gguf_convert",
    # distributed
    "mlxhost.launch": "mlxhost.distributed.launch",
    "mlxhost.runtime.distributed": "mlxhost.distributed.protocol",
    "mlxhost.runtime.leader": "mlxhost.distributed.leader",
    "mlxhost.runtime.follower": "mlxhost.distributed.follower",
    "mlxhost.runtime.group_link": "mlxhost.distributed.group_link",
    "mlxhost.runtime.sharding": "mlxhost.distributed.sharding",
    # service
    "mlxhost.service": "mlxhost.service.chat",
    "mlxhost.conversation.summarize": "mlxhost.service.summarize",
    "mlxhost.runtime.images": "mlxhost.service.images",
    "mlxhost.runtime.stop": "mlxhost.service.stop",
    "mlxhost.metrics": "mlxhost.service.metrics",
    # api
    "mlxhost.app": "mlxhost.api.app",
    "mlxhost.api.anthropic": "mlxhost.api.formats.anthropic",
    "mlxhost.api.completions": "mlxhost.api.formats.openai_completions",
    "mlxhost.api.openai_responses": "mlxhost.api.formats.openai_responses",
    "mlxhost.api.ollama": "mlxhost.api.formats.ollama",
    "mlxhost.api.responses": "mlxhost.api.openai_chat",
    # cli
    "mlxhost.cli": "mlxhost.cli.main",
    "mlxhost.commands": "mlxhost.cli.common",
    "mlxhost.blas": "mlxhost.cli.blas",
    "mlxhost.lean_imports": "mlxhost.cli.lean_imports",
    # Modules the other branches of this round add (rows apply only where the file exists):
    # generic family + tool formats
    "mlxhost.architectures": "mlxhost.core.architectures",  # imports nothing; engine and families read it
    "mlxhost.chat_facts": "mlxhost.families.chat_facts",
    "mlxhost.tool_formats": "mlxhost.families.tool_formats",  # beside toolcalls, which it builds on
    # reasoning: split by floor (text markers with the families, the logits processor with the engine)
    "mlxhost.reasoning": "mlxhost.families.reasoning",
    "mlxhost.reasoning.split": "mlxhost.families.reasoning.split",
    "mlxhost.reasoning.formats": "mlxhost.families.reasoning.formats",
    "mlxhost.reasoning.controls": "mlxhost.service.reasoning_controls",
    "mlxhost.reasoning.budget": "mlxhost.engine.reasoning_budget",
    "mlxhost.reasoning.processor": "mlxhost.engine.reasoning_processor",
    # embeddings: the runtime owns the side slots that run the encoder (runtime.runtime
    # imports slots), so slots, batcher and the MLX forward go under runtime/; the
    # encoder facts are model facts (registry, pull, slots read them): core/; the
    # service and the endpoint go to their floors.
    "mlxhost.embedding": "mlxhost.runtime.embedding",
    "mlxhost.embedding.slots": "mlxhost.runtime.embedding.slots",
    "mlxhost.embedding.batcher": "mlxhost.runtime.embedding.batcher",
    "mlxhost.embedding.mlx_model": "mlxhost.runtime.embedding.mlx_model",
    "mlxhost.embedding.facts": "mlxhost.core.encoder_facts",
    "mlxhost.embedding.service": "mlxhost.service.embeddings",
    "mlxhost.api.embeddings": "mlxhost.api.formats.openai_embeddings",
}

# Whole packages (with their data files) that move as they are.
PACKAGES: dict[str, str] = {
    "mlxhost.starter": "mlxhost.models.starter",
    "mlxhost.ui": "mlxhost.api.ui",
}

# Files TABLE does not name, by their current folder: old package -> new package.
# (New modules other branches add land here; each is printed.)
FOLDER_RULES: dict[str, str] = {
    "mlxhost.runtime": "mlxhost.engine",  # runtime/ keeps only KEEP_IN_RUNTIME
    "mlxhost.default_plugins": "mlxhost.families.builtin",
    "mlxhost.commands": "mlxhost.cli",
    "mlxhost.conversation": "mlxhost.service",
}
# runtime/'s orchestration modules: they stay.
KEEP_IN_RUNTIME = {"runtime", "worker", "scheduler", "memory", "engine",
                   # the engine branch's KV quantization policy: Runtime sizes the KV with
                   # it (memory window), the engine applies it; no MLX at import.
                   "kv_quant"}
# runtime/prefix_*.py that TABLE does not name go to engine/prefix/.
PREFIX_RULE = ("mlxhost.runtime.prefix_", "mlxhost.engine.prefix.")

# Packages that stay where they are (their files need no row).
STAY = ("mlxhost.api", "mlxhost.testing", "mlxhost.core", "mlxhost.runtime")

# Modules of the STAY packages at the time the table was written (others are printed).
KNOWN_STAY = {
    "mlxhost.api.body", "mlxhost.api.controllers", "mlxhost.api.errors", "mlxhost.api.schemas",
    "mlxhost.api.wire_schema", "mlxhost.core.units", "mlxhost.core.limits",
    "mlxhost.core.model_config",
    # the reasoning branch's per-API thinking controls: shared by four formats (schemas,
    # anthropic, responses, ollama) like schemas.py, so api/, not api/formats/
    "mlxhost.api.thinking",
    # the agents branch's one request lifecycle that every format uses
    "mlxhost.api.exchange",
}

# Names the hand commits moved between modules (before the folder move): an
# import of one from its old module (new code of another branch) follows it.
SYMBOLS: dict[tuple[str, str], str] = {
    **{("mlxhost.runtime.memory", name): "mlxhost.core.units" for name in (
        "parse_size", "format_bytes", "parse_duration", "duration_seconds", "format_duration",
        "FOREVER_S", "GiB")},
    ("mlxhost.settings", "settings_from_args"): "mlxhost.config",
}

# Plugin authors' public imports: a thin re-export stays at the old name.
SHIMS = ["mlxhost.family", "mlxhost.hookspecs", "mlxhost.templating", "mlxhost.toolcalls"]
SHIM_MARK = "re-export kept for plugins"

# One line per new package: what the floor holds.
PACKAGE_DOCS = {
    "mlxhost.core": "The bottom floor: domain values, errors, units, limits and model facts; imports nothing above it.",
    "mlxhost.settings": "Settings: the one table (flags, env vars, TOML, docs) and the config file.",
    "mlxhost.engine": "The MLX engine: loading, steps, batching, kernels, sampling, constrained decoding.",
    "mlxhost.engine.prefix": "The KV prefix cache: trie + LRU, the disk tier, image prompts.",
    "mlxhost.families": "Model families: hooks, the plugin manager, Family, templating, tool-call parsing, built-in fallbacks.",
    "mlxhost.models": "Models: the registry (facts resolved once per version), locating and fetching files, the starter model.",
    "mlxhost.distributed": "Several ranks as one server: launch, the leader and followers, the group link, sharding.",
    "mlxhost.service": "The chat service: one domain request in, events out (images, rendering, budget, stop strings).",
    "mlxhost.api.formats": "One module per wire format: parse to the domain request, fold events into a body, frame a stream.",
    "mlxhost.cli": "The command line: serve and one module per everyday command.",
}

# Text that looks like a module name but is not one (the systemd unit's name).
PROTECTED = re.compile(r"""["'/]mlxhost\.service["'\s`]|/mlxhost\.service\b""")

TEXT_SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".pyi"}
SKIP_PREFIXES = ("bench/results/", "docs/settings.md", "scripts/layers/")  # not itself


def run(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def module_path(module: str, package: bool) -> Path:
    parts = module.split(".")
    return SRC.joinpath(*parts, "__init__.py") if package else SRC.joinpath(*parts).with_suffix(".py")


def existing_path(module: str) -> Path | None:
    for package in (False, True):
        path = module_path(module, package)
        if path.is_file():
            return path
    return None


def is_shim(path: Path) -> bool:
    return path.is_file() and SHIM_MARK in path.read_text()


def all_modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "mlxhost").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def build_map() -> tuple[dict[str, str], dict[str, bool], list[str], list[str]]:
    """(old -> new module, old -> is-package, placed-by-rule lines, unplaced lines)."""
    mapping = dict(TABLE)
    modules = all_modules()
    for old_pkg, new_pkg in PACKAGES.items():
        mapping[old_pkg] = new_pkg
        for name in modules:
            if name.startswith(old_pkg + "."):
                mapping[name] = new_pkg + name[len(old_pkg):]
    values = set(mapping.values())
    folders = set(PACKAGE_DOCS) | {v.rpartition(".")[0] for v in values} - {"mlxhost"}
    folders -= set(FOLDER_RULES) | set(STAY)
    by_rule, unplaced = [], []
    for name, path in modules.items():
        if name in mapping or name in values or name == "mlxhost" or is_shim(path):
            continue
        if name in folders or name.rpartition(".")[0] in folders:
            continue  # in a new folder already (a second run)
        if any(name.startswith(v + ".") for v in values):
            continue
        package, _, leaf = name.rpartition(".")
        if name.startswith(PREFIX_RULE[0]):
            new = PREFIX_RULE[1] + name[len(PREFIX_RULE[0]):]
        elif package == "mlxhost.runtime" and leaf in KEEP_IN_RUNTIME:
            continue
        elif package in FOLDER_RULES:
            new = FOLDER_RULES[package] + "." + leaf
        elif name in FOLDER_RULES or name in STAY:
            continue
        elif name.startswith(STAY):
            if name not in KNOWN_STAY and not name.startswith("mlxhost.testing."):
                by_rule.append(f"kept in place (no row): {name}")
            continue
        else:
            unplaced.append(f"UNPLACED {path} (add a row to TABLE)")
            continue
        mapping[name] = new
        by_rule.append(f"placed by rule: {name} -> {new}")
    packages = {}
    for old in mapping:
        path = existing_path(old)
        packages[old] = path is not None and path.name == "__init__.py"
        if path is None:  # moved already: is the new one a package?
            new_path = existing_path(mapping[old])
            packages[old] = new_path is not None and new_path.name == "__init__.py"
    return mapping, packages, by_rule, unplaced


# -- moving --------------------------------------------------------------------
def move_files(mapping: dict[str, str], packages: dict[str, bool], dry: bool) -> list[str]:
    done = []
    # Whole packages first (their data files go along).
    for old, new in PACKAGES.items():
        src_dir, dst_dir = SRC.joinpath(*old.split(".")), SRC.joinpath(*new.split("."))
        if src_dir.is_dir() and not dst_dir.exists():
            done.append(f"git mv {src_dir} {dst_dir}")
            if not dry:
                dst_dir.parent.mkdir(parents=True, exist_ok=True)
                run("git", "mv", str(src_dir), str(dst_dir))
    # Modules whose package becomes a folder of the same name (settings.py ->
    # settings/table.py) move before anything else lands in that folder.
    order = sorted(mapping, key=lambda old: (not mapping[old].startswith(old + "."), old))
    for old in order:
        if any(old == p or old.startswith(p + ".") for p in PACKAGES):
            continue
        new = mapping[old]
        src = existing_path(old)
        if src is None or is_shim(src):
            continue
        if src.name == "__init__.py" and new.startswith(old + "."):
            continue  # the new folder that took an old module's name (settings/)
        if src.name == "__init__.py" and not packages.get(old, False):
            continue
        # A package stays a package where modules land under its new name.
        new_is_package = any(v.startswith(new + ".") for v in mapping.values())
        dst = module_path(new, src.name == "__init__.py" and new_is_package)
        if dst.exists():
            print(f"!! both {src} and {dst} exist: left as they are", file=sys.stderr)
            continue
        done.append(f"git mv {src} {dst}")
        if not dry:
            dst.parent.mkdir(parents=True, exist_ok=True)
            run("git", "mv", str(src), str(dst))
    return done


def write_packages(dry: bool) -> list[str]:
    done = []
    for package, doc in PACKAGE_DOCS.items():
        init = module_path(package, True)
        if init.parent.is_dir() and not init.exists():
            done.append(f"write {init}")
            if not dry:
                init.write_text(f'"""{doc}"""\n')
                run("git", "add", str(init))
    # Folders left with nothing but caches (runtime's old neighbours) go.
    for folder in sorted((SRC / "mlxhost").rglob("*"), reverse=True):
        if folder.is_dir() and folder.name != "__pycache__" and not any(
            p.is_file() for p in folder.rglob("*") if "__pycache__" not in p.parts
        ):
            done.append(f"rm -r {folder} (empty)")
            if not dry:
                shutil.rmtree(folder)
    # Packages left with only an __init__.py (conversation/) go.
    for init in sorted((SRC / "mlxhost").rglob("__init__.py")):
        folder = init.parent
        if folder == SRC / "mlxhost":
            continue
        others = [p for p in folder.iterdir() if p.name not in ("__init__.py", "__pycache__")]
        if not others:
            done.append(f"git rm {init}")
            if not dry:
                run("git", "rm", "-q", str(init))
    return done


def write_shims(mapping: dict[str, str], dry: bool) -> list[str]:
    done = []
    for old in SHIMS:
        new = mapping[old]
        path = module_path(old, False)
        if path.exists() or existing_path(new) is None:
            continue
        done.append(f"write shim {path} -> {new}")
        if not dry:
            package, _, leaf = new.rpartition(".")
            path.write_text(
                f'"""Moved to :mod:`{new}`; this import path stays for plugins written against it\n'
                f'({SHIM_MARK}; new code imports {new})."""\n\n'
                "from typing import Any\n\n"
                f"from {package} import {leaf} as _moved\n"
                f"from {new} import *  # noqa: F403\n\n\n"
                "def __getattr__(name: str) -> Any:\n"
                "    # Names outside the module's __all__ (helpers plugins use) resolve too.\n"
                "    return getattr(_moved, name)\n"
            )
            run("git", "add", str(path))
    return done


# -- rewriting references ---------------------------------------------------------
class Rewriter:
    def __init__(self, mapping: dict[str, str], old_files: set[str]) -> None:
        self.mapping = mapping
        # Old plain modules that existed when this run began: in this run
        # `mlxhost.cli.main` still means the function main of cli.py.
        self.old_files = old_files
        # The modules of the new layout: the table's targets and every module that
        # exists now (after the moves) under a name that is not an old one.
        self.known = set(mapping.values()) | (set(all_modules()) - set(mapping))
        # Every package of a new module ("mlxhost.engine.prefix", "mlxhost.cli").
        self.new_packages = {k.rsplit(".", i)[0] for k in self.known for i in range(1, k.count("."))}

    def module(self, dotted: str) -> str:
        """The new spelling of a dotted name (a module, or a module's attribute)."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in self.mapping and prefix not in self.old_files and (
                prefix in self.new_packages or prefix in SHIMS
            ):
                # Moved before this run: the name now means the folder (mlxhost.cli)
                # or the re-export kept for plugins (mlxhost.family).
                return dotted
            if prefix in self.mapping:
                # An old module whose name is now a folder (mlxhost.cli): a module
                # under that folder is a new name, anything else an old attribute.
                if (i < len(parts) and prefix not in self.old_files
                        and ".".join(parts[: i + 1]) in self.known):
                    return dotted
                return self.mapping[prefix] + dotted[len(prefix):]
            if prefix in self.known:
                return dotted
        return dotted

    # One pass: a `from mlxhost... import ...` statement is rewritten whole, so the
    # names it produces are not rewritten again as dotted names.
    FROM_OR_DOTTED = re.compile(
        r"(?P<from>^(?P<indent>[ \t]*)from[ \t]+(?P<mod>mlxhost(?:\.\w+)*)[ \t]+import[ \t]+"
        r"(?P<names>\([^)]*\)|[^\n#]*?)(?P<comment>[ \t]*#[^\n]*)?$)"
        r"|(?P<dotted>(?<![\w./-])mlxhost(?:\.\w+)+)",
        re.M,
    )
    PATH = re.compile(
        r"(?<![\w./-])(?P<lead>(?:src/)?mlxhost/|(?=(?:runtime|api|commands|conversation|default_plugins|starter|ui)/))"
        r"(?P<path>(?:\w+/)*\w+\.py)\b"
    )

    def from_import(self, m: re.Match[str]) -> str:
        indent, mod, names = m.group("indent"), m.group("mod"), m.group("names")
        comment = m.group("comment") or ""
        bare = re.sub(r"#[^\n]*", "", names)
        items = [n.strip() for n in bare.strip().strip("()").replace("\n", " ").split(",") if n.strip()]
        # Where each name now lives: a module that moved, a module of the new
        # layout, a symbol that moved (SYMBOLS), or an attribute of its module.
        plain = mod in self.old_files  # a plain module of this run: names are attributes
        groups: dict[str, list[str]] = {}
        attributes_only = True
        for item in items:
            name, _, alias = item.partition(" as ")
            name, alias = name.strip(), alias.strip()
            full = f"{mod}.{name}"
            if (mod, name) in SYMBOLS:
                groups.setdefault(self.module(SYMBOLS[(mod, name)]), []).append(item)
                attributes_only = False
            elif not plain and full in self.mapping:
                new_mod, _, leaf = self.mapping[full].rpartition(".")
                local = alias or name
                groups.setdefault(new_mod, []).append(leaf if leaf == local else f"{leaf} as {local}")
                attributes_only = False
            elif not plain and full in self.known:
                groups.setdefault(mod, []).append(item)
                attributes_only = False
            else:
                groups.setdefault(self.module(mod), []).append(item)
        if list(groups) == [mod]:
            return m.group(0)
        if attributes_only:
            # Only attributes of one module: respell the module, keep the statement as written.
            start = m.start("mod") - m.start()
            text = m.group(0)
            return text[:start] + self.module(mod) + text[start + len(mod):]
        lines = [f"{indent}from {new_mod} import {', '.join(group)}" for new_mod, group in groups.items()]
        lines[0] += comment
        return "\n".join(lines)

    def either(self, m: re.Match[str]) -> str:
        return self.from_import(m) if m.group("from") else self.dotted(m)

    def dotted(self, m: re.Match[str]) -> str:
        text = m.string
        start, end = m.span()
        window = text[max(0, start - 1): end + 1]
        if PROTECTED.search(window):
            return m.group(0)
        name = m.group(0)
        for (module, symbol), target in SYMBOLS.items():
            if name == f"{module}.{symbol}" or name.startswith(f"{module}.{symbol}."):
                return self.module(target) + name[len(module):]
        return self.module(name)

    def path(self, m: re.Match[str]) -> str:
        lead, path = m.group("lead"), m.group("path")
        init = path.endswith("/__init__.py")
        dotted = "mlxhost." + path[: -len("/__init__.py") if init else -3].replace("/", ".")
        new = self.module(dotted)
        if new == dotted:
            return m.group(0)
        tail = new[len("mlxhost."):].replace(".", "/")
        new_init = init or (new in self.new_packages)
        tail += "/__init__.py" if new_init else ".py"
        return (lead or "") + tail

    def rewrite(self, text: str) -> str:
        text = self.FROM_OR_DOTTED.sub(self.either, text)
        text = self.PATH.sub(self.path, text)
        return text


def tracked_text_files() -> list[Path]:
    out = []
    for name in run("git", "ls-files").splitlines():
        path = Path(name)
        if name.startswith(SKIP_PREFIXES) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or name in (".ci/run",):
            out.append(path)
    return out


def rewrite_files(mapping: dict[str, str], old_files: set[str], dry: bool) -> list[str]:
    rewriter = Rewriter(mapping, old_files)
    changed = []
    for path in tracked_text_files():
        if path.suffix == ".py" and is_shim(path):
            continue
        text = path.read_text()
        new = rewriter.rewrite(text)
        if path.name == "pyproject.toml":
            for old, new_pkg in PACKAGES.items():
                old_dir = old.removeprefix("mlxhost.").replace(".", "/")
                new_dir = new_pkg.removeprefix("mlxhost.").replace(".", "/")
                new = re.sub(rf'(?<=")({re.escape(old_dir)}/)', new_dir + "/", new)
        if new != text:
            changed.append(str(path))
            if not dry:
                path.write_text(new)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = parser.parse_args()
    if not (SRC / "mlxhost").is_dir() or not Path(".git").exists():
        sys.exit("run from the root of an mlxhost checkout")
    ruff = Path(sys.executable).parent / "ruff"
    try:
        import attrs, litestar  # noqa: F401, E401  (docs/settings.md is generated with them)
    except ImportError:
        sys.exit("run with the project's venv python (.venv/bin/python scripts/layers/restructure.py)")
    if not args.dry_run and not ruff.exists():
        sys.exit(f"no ruff next to {sys.executable}: run with the project's venv python")
    mapping, packages, by_rule, unplaced = build_map()
    for line in by_rule + unplaced:
        print(line)
    old_files = set()
    for old in mapping:
        path = existing_path(old)
        if path is not None and path.name != "__init__.py" and not is_shim(path):
            old_files.add(old)
    moved = move_files(mapping, packages, args.dry_run)
    for line in moved:
        print(line)
    if not args.dry_run:
        for line in write_packages(False) + write_shims(mapping, False):
            print(line)
    changed = rewrite_files(mapping, old_files, args.dry_run)
    print(f"{len(moved)} moves, {len(changed)} files with rewritten references")
    if not args.dry_run:
        subprocess.run([str(ruff), "check", "-q", "--fix", "--select", "I",
                        "src", "plugins", "tests", "bench"], check=False)
        done = subprocess.run([sys.executable, "-m", "mlxhost.settings.table", "--markdown"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout:
            Path("docs/settings.md").write_text(done.stdout)
        else:
            print(f"!! could not regenerate docs/settings.md:\n{done.stderr[-2000:]}", file=sys.stderr)
    if unplaced:
        print(f"{len(unplaced)} file(s) UNPLACED: add rows to TABLE and run again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
