"""The `index`, `search` and `serve` sub-commands of `diffusionret` (parsers here, heavy imports on use).

    diffusionret index  --videos DIR --model models/<benchmark> --out INDEX_DIR [--batch-size 128] [--workers 2]
                        [--decoder decord|pyav] [--rebuild] [--json] [--no-progress]
    diffusionret search --index INDEX_DIR "query text" ... [--queries-file FILE] [--top 10] [--rerank/--no-rerank]
                        [--rerank-k 32] [--seed 0] [--approximate [--candidates 1000]] [--model DIR] [--json]
    diffusionret serve  --index INDEX_DIR [--host 127.0.0.1] [--port 8765] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMMANDS = ("index", "search", "serve")
DEFAULT_PORT = 8765


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the three sub-commands on the `diffusionret` parser."""
    index = commands.add_parser("index", help="index a folder of videos for text search (incremental)")
    index.add_argument("--videos", type=Path, required=True, help="folder of video files (searched recursively)")
    index.add_argument("--model", type=Path, required=True, help="trained model directory holding disc/ and gen/")
    index.add_argument("--out", type=Path, required=True, help="index folder (created, or updated if it exists)")
    index.add_argument("--batch-size", type=int, default=128, help="videos decoded, encoded and saved per round")
    index.add_argument("--workers", type=int, default=2, help="decoding processes")
    index.add_argument("--decoder", choices=("decord", "pyav"), default="decord",
                       help="video decoder (preprocess uses decord; pyav where decord has no wheel)")
    index.add_argument("--rebuild", action="store_true", help="re-encode everything (another model or folder)")
    index.add_argument("--json", action="store_true", help="print the report as JSON")
    index.add_argument("--no-progress", dest="progress", action="store_false")

    search = commands.add_parser("search", help="rank the indexed videos for text queries")
    search.add_argument("--index", type=Path, required=True)
    search.add_argument("queries", nargs="*", metavar="QUERY", help="query texts")
    search.add_argument("--queries-file", type=Path, help="more queries, one per line ('-' reads stdin)")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=True,
                        help="re-rank the top-k with the diffusion generator (default: on)")
    search.add_argument("--rerank-k", type=int, default=32, help="candidates re-ranked per query")
    search.add_argument("--seed", type=int, default=0, help="seed of the DDIM start noise")
    search.add_argument("--approximate", action="store_true",
                        help="faiss pre-filter before WTI (optional dependency: pip install faiss-cpu)")
    search.add_argument("--candidates", type=int, default=1000, help="videos the faiss pre-filter keeps")
    search.add_argument("--model", type=Path, help="model directory, if it moved since indexing")
    search.add_argument("--json", action="store_true")

    serve = commands.add_parser("serve", help="local search page and JSON API over an index")
    serve.add_argument("--index", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--model", type=Path, help="model directory, if it moved since indexing")


def read_queries(args: argparse.Namespace) -> list[str]:
    """Queries from the command line, then from --queries-file (blank lines and '#' comments skipped)."""
    queries = list(args.queries)
    if args.queries_file is not None:
        text = sys.stdin.read() if str(args.queries_file) == "-" else args.queries_file.read_text()
        queries += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not queries:
        raise ValueError('no query given: pass query texts ("a red circle moves left") or --queries-file FILE')
    return queries


def run(args: argparse.Namespace) -> int:
    """Run one of the sub-commands; errors print as `error: ...` with exit status 2."""
    from diffusionret.search.ann import FaissMissingError  # lazy, like every import below: the parsers import in
    # 0.4 s, the search stack (torch, the model) in 20 s on a loaded 2-core machine; `--help` needs only the parsers

    try:
        return {"index": _index, "search": _search, "serve": _serve}[args.command](args)
    except (ValueError, OSError, FaissMissingError) as error:  # SearchIndexError, CheckpointMismatchError: ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2


def _index(args: argparse.Namespace) -> int:
    from diffusionret.search.index import build_index

    try:
        report = build_index(args.videos, args.model, args.out, batch_size=args.batch_size, workers=args.workers,
                             decoder=args.decoder, rebuild=args.rebuild, progress=args.progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished batches are kept in {args.out / 'work'}; run the same command again to "
              "resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    counts = report.counts()
    print(f"index {report.index_dir}: {counts['videos']} videos (checkpoint {report.fingerprint.short})")
    print("  " + ", ".join(f"{counts[name]} {name.replace('_', ' ')}" for name in
                           ("encoded", "unchanged", "reused", "resumed", "removed")))
    if report.generator_updated:
        print("  the generator changed since the last update: features kept, new checkpoint recorded")
    failures = report.failed + report.still_failing
    if failures:
        print(f"  {len(failures)} undecodable file(s) skipped ({len(report.still_failing)} unchanged since an "
              "earlier run):")
        for item in failures:
            print(f"    {item['path']}: {item['error']}")
    print(f"  {report.seconds:.1f} s")
    return 0


def _search(args: argparse.Namespace) -> int:
    from diffusionret.search.query import Searcher, format_results, results_json

    queries = read_queries(args)
    searcher = Searcher(args.index, args.model)
    settings = {"top": args.top, "rerank": args.rerank, "rerank_k": args.rerank_k, "seed": args.seed,
                "approximate": args.approximate, "candidates": args.candidates}
    results = searcher.search(queries, **settings)
    if args.json:
        print(json.dumps(results_json(searcher, results, settings), indent=2))
    else:
        sys.stdout.write(format_results(results))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from diffusionret.search.query import Searcher
    from diffusionret.search.server import make_server

    searcher = Searcher(args.index, args.model)
    server = make_server(searcher, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {searcher.num_videos} videos of {args.index} on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
