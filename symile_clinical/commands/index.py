"""`symile-clinical index`: embed a run's candidate CXRs once into RUN/index/."""

from __future__ import annotations

import argparse
import logging

from symile_clinical.commands import add_run_options

log = logging.getLogger(__name__)

# Every kind symile_clinical.search.index.FaissSearcher offers (its FaissKind; tests/test_index.py
# checks they agree), named here so that the CLI's parser does not import torch.
FAISS_CHECK_KINDS = ("flat", "hnsw", "ivf")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `index` subcommand."""
    parser = subparsers.add_parser(
        "index",
        help="embed a dataset split's CXRs with a trained run into RUN/index/",
        description=(
            "Embed every CXR of a dataset split with the run's checkpoint and save the "
            "embeddings, their ids and metadata and small thumbnails in RUN/index/. An index "
            "that is current (same checkpoint sha256 and dataset.json) is kept; a stale one "
            "is rebuilt."
        ),
    )
    add_run_options(parser, "run directory (from `train`)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--checkpoint", default="best", help="best | last | a file name")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--thumbnail-size", type=int, default=96, help="thumbnail side, px")
    parser.add_argument("--force", action="store_true", help="rebuild even when current")
    parser.add_argument(
        "--device", default="cpu", help="where the CXRs are embedded: cpu | cuda | cuda:N"
    )
    parser.add_argument(
        "--faiss-check",
        choices=FAISS_CHECK_KINDS,
        default=None,
        help="also build a faiss inner-product index (flat: exact; hnsw: a graph; ivf: "
        "k-means lists) and report its recall@10 and speed against exact search on the "
        "split's queries (Symile and CLIP only: the other objectives' scores are not inner "
        "products, and asking is an error)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build (or keep) the index; the CLI turns a refused input into exit status 1."""
    from symile_clinical.formats.run_dir import load_run
    from symile_clinical.search.index import IndexConfig, ensure_index

    config = IndexConfig(
        run_dir=args.run_dir,
        data_dir=args.data,
        split=args.split,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        thumbnail_size=args.thumbnail_size,
        force=args.force,
    )
    loaded = load_run(config.run_dir, checkpoint=config.checkpoint, device=args.device)
    if args.faiss_check:
        from symile_clinical.search.index import require_inner_product

        # Before any work: GRAM, TRIANGLE and Gated Symile have no query vector for faiss.
        require_inner_product(loaded.objective, "--faiss-check")
    index, rebuilt = ensure_index(loaded, config)
    log.info(
        "%s %s: %d candidates, d=%d, checkpoint %s",
        "built" if rebuilt else "current",
        index.path,
        len(index),
        index.embeddings.shape[1],
        index.info["checkpoint_sha256"][:12],
    )
    if args.faiss_check:
        from symile_clinical.search.index import faiss_recall, split_query_vectors

        queries = split_query_vectors(loaded, loaded.run.dataset(config.data_dir), config.split)
        measured = faiss_recall(index.embeddings, queries, args.faiss_check)
        log.info(
            "faiss %s: recall@%d %.3f against exact over %d queries; %.3f ms/query "
            "(exact %.3f ms/query); built in %.2f s",
            args.faiss_check,
            measured["k"],
            measured["recall_at_k"],
            len(queries),
            measured["faiss_ms_per_query"],
            measured["exact_ms_per_query"],
            measured["build_s"],
        )
    return 0
