"""The app as users meet it, against the pre-change code in the same run, and the index.

Needs a demo run (`symile-clinical demo --out DIR --no-serve`). For the current code and
for the code of the last commit (`git archive HEAD`, served from a temporary folder, the
same run directory), each measured with the server alone on it:

- start-up: seconds from the process start to a healthy server, then, in Debian's chromium
  through Playwright, seconds from healthy to the first page with its k = 10 scored
  result images loaded, and the same for two more new users (fresh browser contexts);
- change of admission in the browser: select another admission, wait until the 10 result
  images of the new ranking are loaded (median of 5);
- server side: queries (a change of admission) on one websocket session speaking
  Streamlit's protocol, from the request until the run has finished (median, p90), and the
  server process's CPU seconds per query over them (/proc: its user + system time);
- concurrency: 20 sessions at once, 4 queries each; per-query latency median/p90/max.

Then the candidate search at 1,000,000 candidates: exact (numpy) against faiss IVF
(inner product, nprobe tuned to recall@10 >= 0.95 on tuning queries) and faiss HNSW
(inner product; at 100,000, and at 1M with --kinds ivf,hnsw: its build takes minutes),
recall@10 on held-out queries:
- "real": the run's query vectors (Symile e * l of the val split to tune, test split to
  report) against candidates made from the run's own CXR embeddings (every split of the
  dataset); to reach 1M, each further candidate is a real CXR embedding plus Gaussian
  noise with a quarter of the real embeddings' covariance (the real ones are all in);
- "random": isotropic Gaussian candidates and queries (no structure: the hardest case).

    .venv/bin/python -m benchmarks.app_bench --run DIR/runs/symile [--quick]

The app measurements go to RESULTS.md's section `app` (--section), the index ones to
`app_index` (--index-section); --skip-app / --skip-index leave the other section as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _app_run import (  # noqa: E402
    StreamlitSession,
    free_port,
    result_captions,
    start_server,
    stop_server,
    wait_healthy,
)

K = 10
COLD_VISITS = 3  # first pages of new users (the first one right after healthy)
CHROMIUM = "/usr/bin/chromium"
ADMISSION_LABEL = "admission (type to search"


def load() -> str:
    """`uptime`'s load averages."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load")[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(seconds: list[float]) -> dict[str, float]:
    """median, p90, max in seconds."""
    values = np.asarray(seconds)
    return {
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": float(values.max()),
    }


def pre_change_tree(folder: Path) -> Path:
    """The last commit's files (`git archive HEAD`) in `folder`: the code before this change."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def admission_options(session: StreamlitSession) -> tuple[str, list[str]]:
    """(label, options) of the admission selectbox."""
    label = next(label for label in session.widgets if ADMISSION_LABEL in label)
    return label, session.widgets[label]["options"]


def sequential_queries(url: str, n: int) -> list[float]:
    """Seconds per change of admission, one session, admissions 1..n in turn."""
    session = StreamlitSession(url)
    try:
        session.rerun()
        label, options = admission_options(session)
        times = []
        for i in range(n):
            start = time.perf_counter()
            elements = session.rerun({label: options[(i + 1) % len(options)]})
            times.append(time.perf_counter() - start)
            assert len(result_captions(elements)) == K
        return times
    finally:
        session.close()


def concurrent_sessions(url: str, sessions: int, queries: int) -> list[float]:
    """Seconds per query of `sessions` sessions at once, each changing admission
    `queries` times (the first page of each session is not counted)."""
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(sessions)

    def user(index: int) -> None:
        try:
            session = StreamlitSession(url, timeout_s=300)
            try:
                session.rerun()
                label, options = admission_options(session)
                barrier.wait()
                for q in range(queries):
                    start = time.perf_counter()
                    elements = session.rerun({label: options[(7 * index + q + 1) % len(options)]})
                    took = time.perf_counter() - start
                    assert len(result_captions(elements)) == K
                    with lock:
                        times.append(took)
            finally:
                session.close()
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times


WAIT_RESULTS = """([n, before]) => {
    const shown = [...document.querySelectorAll('[data-testid="stImageContainer"]')]
        .filter(e => e.innerText.includes('score'));
    const loaded = shown.filter(e => { const img = e.querySelector('img');
        return img && img.complete && img.naturalWidth > 0; });
    const text = shown.map(e => e.innerText).join('|');
    return shown.length === n && loaded.length === n && text !== before;
}"""
CAPTIONS = """() => [...document.querySelectorAll('[data-testid="stImageContainer"]')]
    .filter(e => e.innerText.includes('score')).map(e => e.innerText).join('|')"""


def browser_measure(url: str, changes: int) -> dict[str, object]:
    """Seconds to the first page with K loaded result images, and per change of admission."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_function(WAIT_RESULTS, arg=[K, ""], timeout=180_000)
            first = time.perf_counter() - start
            times = []
            for i in range(changes):
                before = page.evaluate(CAPTIONS)
                page.locator('[data-testid="stSelectbox"]').first.click()
                option = page.get_by_role("option").nth(i + 1)
                start = time.perf_counter()
                option.click()
                page.wait_for_function(WAIT_RESULTS, arg=[K, before], timeout=180_000)
                times.append(time.perf_counter() - start)
            page.close()
            # More new users: a fresh browser context each (cold cache, a new session).
            visits = [first]
            for _ in range(COLD_VISITS - 1):
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                start = time.perf_counter()
                page.goto(url)
                page.wait_for_function(WAIT_RESULTS, arg=[K, ""], timeout=180_000)
                visits.append(time.perf_counter() - start)
                context.close()
            return {"first_page": first, "changes": times, "cold_visits": visits}
        finally:
            browser.close()


def measure_app(name: str, command: list[str], cwd: Path, log: Path, args) -> dict:
    """Every app measurement of one version of the code, its server alone."""
    port = int(command[command.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    result: dict[str, object] = {"name": name}
    started = time.perf_counter()
    process = start_server(command, log, cwd=cwd)
    try:
        wait_healthy(url, process, timeout_s=300)
        result["healthy"] = time.perf_counter() - started
        result["load_start"] = load()
        result["browser"] = browser_measure(url, args.changes)
        print(f"{name}: healthy {result['healthy']:.1f} s, browser {result['browser']}")
        # The server is the process itself (`symile-clinical app` execs streamlit).
        cpu_before = cpu_seconds(process.pid)
        result["sequential"] = stats(sequential_queries(url, args.queries))
        result["sequential"]["cpu"] = (cpu_seconds(process.pid) - cpu_before) / args.queries
        print(f"{name}: sequential {result['sequential']}")
        result["concurrent"] = stats(concurrent_sessions(url, args.sessions, 4))
        print(f"{name}: concurrent {result['concurrent']}")
        result["load_end"] = load()
    finally:
        stop_server(process)
    return result


def app_versions(run: Path, args) -> list[dict]:
    """The current code and the pre-change code, one after the other."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        old = pre_change_tree(Path(tmp) / "head")
        for name, tree in (("current", ROOT), ("pre-change (HEAD)", old)):
            command = [sys.executable, "-m", "symile_clinical", "app", "--run", str(run)]
            command += ["--port", str(free_port())]
            results.append(
                measure_app(name, command, tree, Path(tmp) / f"{len(results)}.log", args)
            )
    return results


# ---------------------------------------------------------------------------------------
# The index at 1M


def real_vectors(run: Path, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Candidates [n, d] built from the run's real CXR embeddings (all real ones first,
    then real + Gaussian noise of a quarter of their covariance), and the real query
    vectors of the val (tune) and test (report) splits."""
    import torch

    from symile_clinical.evaluation.embedding import embed_cxr_pool
    from symile_clinical.formats.run_dir import RunDir
    from symile_clinical.search.index import split_query_vectors

    torch.set_num_threads(2)
    loaded = RunDir(run).load()
    dataset = RunDir(run).dataset()
    real = np.concatenate(
        [
            embed_cxr_pool(loaded.model, dataset.split(s).cxr, progress=False)[0]
            for s in ("train", "val", "test")
        ]
    )
    covariance = np.cov(real, rowvar=False) / 4
    noise = rng.multivariate_normal(np.zeros(real.shape[1]), covariance, n - len(real))
    extra = real[rng.integers(0, len(real), n - len(real))] + noise
    return {
        "candidates": np.concatenate([real, extra]).astype(np.float32),
        "real_only": real.astype(np.float32),
        "tune": split_query_vectors(loaded, dataset, "val", limit=200),
        "test": split_query_vectors(loaded, dataset, "test", limit=200),
    }


def random_vectors(rng: np.random.Generator, n: int, d: int) -> dict[str, np.ndarray]:
    """Isotropic Gaussian candidates and queries."""
    return {
        "candidates": rng.standard_normal((n, d), dtype=np.float32),
        "tune": rng.standard_normal((200, d), dtype=np.float32),
        "test": rng.standard_normal((200, d), dtype=np.float32),
    }


def per_query_ms(fn, queries: np.ndarray) -> float:
    """Median milliseconds of fn(one query [1, d]) over the queries."""
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def index_rows(name: str, data: dict[str, np.ndarray], kinds: tuple[str, ...]) -> list[dict]:
    """Exact against each approximate kind on one pool: build, tuned setting, recall on
    held-out queries, median ms per query and the speed-up over exact."""
    from symile_clinical.search.index import FaissSearcher, exact_search, recall_against_exact

    base, tune, test = data["candidates"], data["tune"], data["test"]
    exact_ms = per_query_ms(lambda q: exact_search(base, q, K), test)
    tune_exact = exact_search(base, tune, K)
    test_exact = exact_search(base, test, K)
    rows = [{"pool": name, "n": len(base), "kind": "exact (numpy)", "ms": exact_ms}]
    for kind in kinds:
        start = time.perf_counter()
        searcher = FaissSearcher(base, kind, ef_construction=40)
        build = time.perf_counter() - start
        setting, tune_recall = searcher.tune(tune, tune_exact, 0.95)
        recall = recall_against_exact(searcher.search(test, K), test_exact)
        ms = per_query_ms(lambda q, s=searcher: s.search(q, K), test)
        extra = {"nlist": searcher.nlist} if kind == "ivf" else {"M": 32}
        rows.append(
            {
                "pool": name,
                "n": len(base),
                "kind": f"faiss {kind}",
                "build_s": build,
                "setting": setting,
                "tune_recall": tune_recall,
                "recall": recall,
                "ms": ms,
                "speedup": exact_ms / ms,
                **extra,
            }
        )
        print(rows[-1], flush=True)
        del searcher
    return rows


def index_bench(run: Path, args) -> list[dict]:
    """The index measurements (faiss on one thread: the app's setting on 2 shared cores)."""
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 100_000 if args.quick else 1_000_000
    real = real_vectors(run, rng, n)
    rows = []
    real_only = {**real, "candidates": real["real_only"]}
    rows += index_rows("real (the run's CXRs only)", real_only, ("ivf", "hnsw"))
    kinds = tuple(args.kinds.split(","))
    rows += index_rows("real-based", real, kinds)
    dim = real["candidates"].shape[1]
    del real
    if not args.no_random_1m:
        rows += index_rows("random", random_vectors(rng, n, dim), kinds)
    if not args.quick:
        rows += index_rows("random", random_vectors(rng, 100_000, dim), ("hnsw",))
        rows += index_rows("real-based", real_vectors(run, rng, 100_000), ("hnsw",))
    return rows


# ---------------------------------------------------------------------------------------
# Report


def app_table(results: list[dict]) -> list[str]:
    lines = [
        "| measurement | current | pre-change (HEAD) | ratio |",
        "|---|---|---|---|",
    ]
    new, old = results

    def row(label: str, a: float, b: float, unit: str) -> None:
        lines.append(f"| {label} | {a:.2f} {unit} | {b:.2f} {unit} | x{b / a:.1f} |")

    row("process start -> healthy", new["healthy"], old["healthy"], "s")
    row(
        "healthy -> first page, 10 images (browser)",
        new["browser"]["first_page"],
        old["browser"]["first_page"],
        "s",
    )
    row(
        f"a new user's first page, 10 images (median of {COLD_VISITS} cold visits)",
        float(np.median(new["browser"]["cold_visits"])),
        float(np.median(old["browser"]["cold_visits"])),
        "s",
    )
    row(
        f"change of admission, browser (median of {len(new['browser']['changes'])})",
        float(np.median(new["browser"]["changes"])),
        float(np.median(old["browser"]["changes"])),
        "s",
    )
    for key in ("median", "p90"):
        row(
            f"change of admission, server side ({key})",
            new["sequential"][key],
            old["sequential"][key],
            "s",
        )
    row(
        "server CPU per change of admission (sequential)",
        1000 * new["sequential"]["cpu"],
        1000 * old["sequential"]["cpu"],
        "ms",
    )
    for key in ("median", "p90", "max"):
        row(
            f"20 sessions x 4 queries at once ({key})",
            new["concurrent"][key],
            old["concurrent"][key],
            "s",
        )
    lines += [
        "",
        "Load (`uptime`) at the start / end of each: "
        + "; ".join(
            f"{r['name']}: {r['load_start'].strip()} / {r['load_end'].strip()}" for r in results
        ),
    ]
    return lines


def index_table(rows: list[dict]) -> list[str]:
    lines = [
        "| candidates | N | search | build (s) | setting | recall@10 (tune / held-out) | "
        "ms per query (median) | speed-up over exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"].startswith("exact"):
            lines.append(f"| {r['pool']} | {r['n']:,} | exact | - | - | 1 | {r['ms']:.2f} | x1 |")
            continue
        setting = (
            f"nlist {r['nlist']}, nprobe {r['setting']}"
            if "nlist" in r
            else f"M 32, efSearch {r['setting']}"
        )
        lines.append(
            f"| {r['pool']} | {r['n']:,} | {r['kind']} | {r['build_s']:.1f} | {setting} | "
            f"{r['tune_recall']:.3f} / {r['recall']:.3f} | {r['ms']:.2f} | x{r['speedup']:.1f} |"
        )
    return lines


def main() -> int:
    """Run the benchmark, print the tables and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a demo run directory")
    parser.add_argument("--quick", action="store_true", help="index at 100k only")
    parser.add_argument("--queries", type=int, default=100, help="sequential queries")
    parser.add_argument("--changes", type=int, default=5, help="browser changes of admission")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument(
        "--kinds", default="ivf", help="approximate indexes at 1M, comma-separated: ivf,hnsw"
    )
    parser.add_argument("--no-random-1m", action="store_true", help="no random pool at 1M")
    parser.add_argument("--section", default="app", help="RESULTS.md section of the app")
    parser.add_argument(
        "--index-section", default="app_index", help="RESULTS.md section of the index"
    )
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    args = parser.parse_args()
    run = args.run.resolve()
    from benchmarks.results_file import update_section

    n_candidates = json.loads((run / "index" / "index.json").read_text())["n"]
    intro = (
        f"`python -m benchmarks.app_bench --run {args.run}`: the demo run ({n_candidates} "
        "candidate CXRs in its index), 2 CPU cores shared with other engineers' jobs (load "
        "below; ratios within the run are the meaningful part)."
    )
    if not args.skip_app:
        results = app_versions(run, args)
        lines = [intro, "", "### The app: current code against the last commit's, same run", ""]
        text = "\n".join([*lines, *app_table(results)])
        print(text)
        print(f"wrote {update_section(args.section, text)}")
    if not args.skip_index:
        load_before = load()
        rows = index_bench(run, args)
        lines = [
            intro,
            "",
            "### Candidate search: exact against faiss inner-product indexes",
            "",
            "One query at a time, as the app makes them; faiss on one thread. Settings tuned "
            "on the tuning queries (val split / separate random ones) to recall@10 >= 0.95, "
            "recall reported on held-out queries (test split / other random ones).",
            "",
            *index_table(rows),
            "",
            f"Load (`uptime`) before / after: {load_before.strip()} / {load().strip()}",
        ]
        text = "\n".join(lines)
        print(text)
        print(f"wrote {update_section(args.index_section, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
