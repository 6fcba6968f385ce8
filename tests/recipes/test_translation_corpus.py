"""The embedded De→En corpus: the committed files, and the builder on a small local sample."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import polib
import pytest

from scripts.common import embedded_corpus
from scripts.common.embedded_corpus import CORPUS_DIR
from scripts.translation import corpus


@pytest.fixture(scope="module")
def committed_splits() -> dict[str, list[embedded_corpus.Pair]]:
    return {name: embedded_corpus.read_split(CORPUS_DIR, name) for name in embedded_corpus.SPLITS}


def test_committed_counts_match_counts_json_and_attribution(committed_splits):
    counts = json.loads((CORPUS_DIR / "counts.json").read_text())
    assert {name: len(pairs) for name, pairs in committed_splits.items()} == counts["splits"]
    assert sum(counts["splits"].values()) == counts["unique_pairs"] >= 20_000
    attribution = (CORPUS_DIR / "ATTRIBUTION.md").read_text()
    for name, pairs in committed_splits.items():
        assert f"| {name} | {len(pairs)} |" in attribution
    for source in corpus.SOURCES:
        assert f"| {source.name} | {source.version} | {source.licence} |" in attribution


def test_committed_splits_share_no_sentence(committed_splits):
    for side in embedded_corpus.LANGUAGES:
        seen: dict[str, str] = {}
        for name, pairs in committed_splits.items():
            for pair in pairs:
                key = corpus.normalise(getattr(pair, side))
                assert seen.setdefault(key, name) == name, f"{side} sentence {key!r} in {seen[key]} and {name}"


def test_committed_pairs_pass_the_filters(committed_splits):
    all_pairs = [pair for pairs in committed_splits.values() for pair in pairs]
    assert len(set(all_pairs)) == len(all_pairs)
    for pair in all_pairs:
        assert corpus.rejection_reason(pair.en, pair.de) is None, pair
        assert "\t" not in pair.de + pair.en and pair.de == pair.de.strip()
    held_out = len(committed_splits["valid"]) + len(committed_splits["test"])
    assert 0.04 < held_out / len(all_pairs) < 0.12


@pytest.mark.parametrize(
    ("english", "german", "reason"),
    [
        ("Open the file", "Datei öffnen", "too-short"),
        ("See <b>the manual</b> for details", "Siehe <b>Handbuch</b> für Details", "markup"),
        ("Read more at https://example.org now", "Mehr unter https://example.org jetzt", "url-or-email"),
        ("%s: %s (%d of %d) copied", "%s: %s (%d von %d) kopiert", "placeholders"),
        ("Project name here", "Project name here", "untranslated"),
        ("First line\nsecond line of text", "Erste Zeile\nzweite Zeile Text", "multi-line"),
        ("Delete the selected item now", "Das ausgewählte Element jetzt löschen", None),
        ("_Save the current document", "Aktuelles Dokument _speichern", None),
    ],
)
def test_rejection_reason(english, german, reason):
    assert corpus.rejection_reason(english, german) == reason


def test_clean_text_removes_mnemonics_and_spacing():
    assert corpus.clean_text("  _Save   the file ") == "Save the file"
    assert corpus.clean_text("&File menu entries") == "File menu entries"
    assert corpus.clean_text("snake_case and more_things") == "snake_case and more_things"


def test_split_keeps_pairs_sharing_a_sentence_together():
    pairs = [embedded_corpus.Pair(f"Satz Nummer {i} ist hier", f"Sentence number {i} is here") for i in range(3000)]
    pairs += [
        embedded_corpus.Pair(f"Satz Nummer {i} ist hier.", f"Another sentence {i} right here")
        for i in range(0, 3000, 7)
    ]
    pairs += [
        embedded_corpus.Pair(f"Ganz anderer Satz {i} hier", f"sentence number {i} is here!") for i in range(0, 3000, 5)
    ]
    splits = corpus.split_pairs(pairs)
    assert sum(len(s) for s in splits.values()) == len(pairs)
    assert all(len(splits[name]) > 0 for name in embedded_corpus.SPLITS)
    for side in ("de", "en"):
        owner: dict[str, str] = {}
        for name, members in splits.items():
            for pair in members:
                key = corpus.normalise(getattr(pair, side))
                assert owner.setdefault(key, name) == name


def test_large_groups_go_to_train():
    shared = "Dieser Satz wird oft verwendet"
    pairs = [
        embedded_corpus.Pair(shared, f"This sentence is used often {i}")
        for i in range(corpus.LARGEST_HELD_OUT_GROUP + 1)
    ]
    assert len(corpus.split_pairs(pairs)["train"]) == len(pairs)


def _po_catalog(entries: list[tuple[str, str]], comment_defaults: bool = False) -> polib.POFile:
    catalog = polib.POFile()
    catalog.metadata = {"Content-Type": "text/plain; charset=UTF-8", "Language": "de"}
    for index, (english, german) in enumerate(entries):
        if comment_defaults:
            catalog.append(polib.POEntry(msgid=f"label_{index}", msgstr=german, comment=f'Default: "{english}"'))
        else:
            catalog.append(polib.POEntry(msgid=english, msgstr=german))
    return catalog


def _sample_wheel(tmp_path: Path) -> Path:
    words = ["Datei", "Ordner", "Bild", "Konto", "Nachricht", "Seite", "Liste", "Ebene"]
    english = ["file", "folder", "image", "account", "message", "page", "list", "layer"]
    entries = [
        (f"Open the {e} number {i} now", f"{d} Nummer {i} jetzt öffnen")
        for i in range(300)
        for d, e in zip(words[i % 8 : i % 8 + 1], english[i % 8 : i % 8 + 1], strict=False)
    ]
    entries += [("Open the file", "Datei öffnen"), ("%s: %d", "%s: %d"), ("Open the file number 0 now", "")]
    fuzzy = polib.POEntry(
        msgid="A fuzzy entry is ignored here", msgstr="Unsicherer Eintrag wird ignoriert", flags=["fuzzy"]
    )
    main = _po_catalog(entries)
    main.append(fuzzy)
    plone = _po_catalog(
        [("Show the portlet title here", "Den Titel des Portlets hier anzeigen")], comment_defaults=True
    )
    wheel = tmp_path / "sample-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("sample/locale/de/LC_MESSAGES/django.po", str(main))
        archive.writestr("sample/locale/de/LC_MESSAGES/django.mo", main.to_binary())
        archive.writestr("sample/locale/fr/LC_MESSAGES/django.po", str(_po_catalog([("Open it now", "Ouvrir")])))
        archive.writestr("sample/locale/de/LC_MESSAGES/plone.po", str(plone))
        archive.writestr(
            "sample/other/de/LC_MESSAGES/compiled.mo",
            _po_catalog([("Close all the windows", "Alle Fenster schließen")]).to_binary(),
        )
    return wheel


def test_build_on_a_sample_is_deterministic_and_filters(tmp_path):
    wheel = _sample_wheel(tmp_path)
    source = corpus.Source("pypi", "sample", "1.0", "MIT")
    outputs = []
    for attempt in ("first", "second"):
        out_dir = tmp_path / attempt
        stats = corpus.build_corpus(corpus.iter_source_catalogs({source: wheel}), out_dir)
        corpus.write_attribution(stats, [source], out_dir)
        outputs.append({p.name: p.read_bytes() for p in sorted(out_dir.iterdir())})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {
        f"{s}.{lang}.gz" for s in embedded_corpus.SPLITS for lang in embedded_corpus.LANGUAGES
    } | {
        "counts.json",
        "ATTRIBUTION.md",
    }
    pairs = [pair for name in embedded_corpus.SPLITS for pair in embedded_corpus.read_split(tmp_path / "first", name)]
    english = {pair.en for pair in pairs}
    # 300 numbered entries, the Plone default and the .mo-only catalog; .mo twin, French,
    # fuzzy, untranslated, short and placeholder-only entries are not read or are dropped.
    assert len(pairs) == stats.unique_pairs == 302
    assert "Show the portlet title here" in english and "Close all the windows" in english
    assert not any(re.search("fuzzy|Open it now|%s", text) for text in english)
    assert stats.dropped["too-short"] >= 1 and stats.dropped["placeholders"] >= 1
