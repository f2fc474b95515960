"""End-to-end: the real Streamlit server driven by headless Chromium (system chromium, Python playwright).

Opens the demo store (``data/demo.duckdb``; a synthetic 119-task store at m = 4096 stands in when the demo
store is absent or locked by a writer), ranks sources for a target, opens the δ page and the task map, and
computes a signature of an uploaded file with a tiny local model, watching the progress bar run to the end.
Prints the ranking and δ-page response times (the issue asks for < 2 s each on the demo store) and saves
screenshots to ``tests/screenshots/`` (git-ignored).

Run: ``python -m pytest -m e2e tests/test_e2e_browser.py -s``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_helpers import build_store, save_tiny_model

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "tests" / "screenshots"
DEMO = ROOT / "data" / "demo.duckdb"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update"]
RESPONSE_LIMIT_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_usable() -> bool:
    from fishersketch_core.store import SignatureStore
    if not DEMO.exists():
        return False
    try:
        with SignatureStore(DEMO, read_only=True) as st:
            return len(st) >= 4
    except Exception:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install -y chromium (./setup.sh test installs it)")
    pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("e2e")
    if _demo_usable():
        # a private copy: the test never holds a lock on data/demo.duckdb (a writer may be updating it),
        # except when asked for the README screenshots, which should show the real path
        store, kind = tmp / "demo.duckdb", "demo store"
        if os.environ.get("FISHERSKETCH_DOCS_SCREENSHOTS"):
            store = DEMO
        else:
            shutil.copyfile(DEMO, store)
    else:
        groups = tuple(f"group{i}" for i in range(7))
        store = build_store(tmp / "synthetic.duckdb", n_per_group=17, groups=groups, m=4096, d=16, K=200, n=120)
        kind = "synthetic 119-task stand-in (data/demo.duckdb absent or locked)"
    port = _free_port()
    env = dict(os.environ, FISHERSKETCH_STORE=str(store), FISHERSKETCH_USER_STORE=str(tmp / "user.duckdb"),
               FISHERSKETCH_CACHE=str(tmp / "cache"), PYTHONUNBUFFERED="1")
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not answer /_stcore/health: {(tmp / 'server.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield {"url": url, "store": store, "kind": kind, "tmp": tmp, "healthy_at": time.perf_counter()}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _idle(page, timeout: float = 30_000, settle: bool = True) -> None:
    """Wait until Streamlit has finished the current script run (no 'Running…' status widget).

    ``settle`` first pauses 250 ms, because the status widget appears a moment after a rerun starts;
    timed waits pass ``settle=False`` once the new content is on screen (the run has started then).
    """
    if settle:
        page.wait_for_timeout(250)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()


def _select(page, label: str, value: str) -> None:
    """Choose ``value`` in the st.selectbox labelled ``label``."""
    box = page.locator('[data-testid="stSelectbox"]', has_text=label).first
    box.locator("input").click()
    box.locator("input").fill(value)
    page.get_by_role("option", name=value, exact=True).first.click()


def _docs_screenshots(page, url: str, out: Path, names: list[str], target: str = "protein-kinase") -> None:
    """README screenshots of the demo store (run with FISHERSKETCH_DOCS_SCREENSHOTS=docs/screenshots)."""
    from playwright.sync_api import expect

    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1150})
    smiles = sorted(n for n in names if n.startswith("smiles-"))
    wanted = ["smiles-ester", "smiles-morpholine", "code-python", "dna-human-coding", "protein-kinase",
              "wordnet-noun.animal"]
    sources = "".join(f"&sources={s}" for s in wanted if s in names)
    views = [("overview", "/", "Where to go next"),
             ("ranking", f"/ranking?target={target}", "FisherSketch top-1"),
             ("decomposition", f"/decomposition?target={smiles[0] if smiles else target}{sources}",
              "Where the similarity comes from"),
             ("delta", "/delta", "95% interval excludes 0"),
             ("audit", "/audit", "Concentration of the picks")]
    for name, path, marker in views:
        page.goto(url + path)
        expect(page.get_by_text(marker).first).to_be_visible()
        _idle(page)
        page.mouse.move(5, 1100)
        page.wait_for_timeout(800)  # let plotly finish drawing
        page.screenshot(path=str(out / f"{name}.png"))
    page.goto(url + "/task-map?method=umap")
    page.get_by_role("button", name="Run").click()
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=120_000)
    _idle(page)
    page.mouse.move(5, 1100)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.wait_for_timeout(800)
    page.screenshot(path=str(out / "task-map.png"))


def test_browser_end_to_end(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from fishersketch_core.store import SignatureStore, rank_sources

    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    load_before = os.getloadavg()[0]
    with SignatureStore(server["store"], read_only=True) as st:
        names = st.list()["name"].tolist()
        target = "protein-kinase" if "protein-kinase" in names else names[len(names) // 2]
        expected_top1 = rank_sources(st, target, k=1, by="joint", with_se=False)["name"].iloc[0]
    timings: dict[str, float] = {}
    print(f"\n[e2e] store: {server['kind']} ({len(names)} tasks) at {server['store']}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=30_000)

        # 1. overview on the demo store
        page.goto(server["url"])
        expect(page.get_by_text("FisherSketch Studio").first).to_be_visible()
        expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text(str(len(names)))
        timings["overview_after_health_s"] = time.perf_counter() - server["healthy_at"]
        _idle(page)
        _shot(page, "01-overview")

        # 2. source ranking: pick a target, time until its ranked sources are shown
        _nav(page, "Source ranking")
        expect(page.get_by_text("FisherSketch top-1")).to_be_visible()
        _idle(page)
        t0 = time.perf_counter()
        _select(page, "Target task", target)
        metric = page.locator('[data-testid="stMetric"]', has_text="FisherSketch top-1")
        expect(metric.locator('[data-testid="stMetricValue"]')).to_have_text(expected_top1)
        _idle(page, settle=False)
        timings["ranking_s"] = time.perf_counter() - t0
        assert f"target={re.sub(' ', '+', target)}" in page.url or "target=" in page.url
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
        _shot(page, "02-ranking")

        # 3. switch to the δ page: time until the δ chart and the K-FAC scatter are drawn
        t0 = time.perf_counter()
        _nav(page, "Kronecker δ")
        expect(page.get_by_text("95% interval excludes 0")).to_be_visible()
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_visible()
        _idle(page, settle=False)
        timings["delta_page_s"] = time.perf_counter() - t0
        _shot(page, "03-delta")

        # 4. task map (PCA draws at once; UMAP waits for Run)
        _nav(page, "Task map")
        expect(page.get_by_text("Press **Run**").or_(page.get_by_text("Press Run"))).to_be_visible()
        page.locator('[data-testid="stRadio"]', has_text="Method").get_by_text("PCA", exact=True).click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        _idle(page)
        assert "method=pca" in page.url
        _shot(page, "04-task-map")

        docs = os.environ.get("FISHERSKETCH_DOCS_SCREENSHOTS")
        if docs and server["kind"] == "demo store":  # README images: the demo store only, before step 5
            _docs_screenshots(page, server["url"], Path(docs), names)
            page.set_viewport_size({"width": 1400, "height": 950})

        # 5. compute a signature of an uploaded file with a tiny local model; the bar runs to 100 %
        model_dir = save_tiny_model(tmp_path / "tiny-llama")
        corpus = tmp_path / "my-notes.txt"
        corpus.write_text("\n".join(f"Note {i}: the quick brown fox jumps over the lazy dog, {i} times."
                                    for i in range(300)))
        _nav(page, "Signatures")
        page.get_by_role("tab", name="Compute").click()
        page.locator('[data-testid="stRadio"]', has_text="Model").get_by_text("Local model path").click()
        _idle(page)
        page.get_by_label("Local Hugging Face folder or .gguf file").fill(str(model_dir))
        page.get_by_label("Local Hugging Face folder or .gguf file").press("Enter")
        expect(page.get_by_label("Local Hugging Face folder or .gguf file")).to_have_value(str(model_dir))
        _idle(page)
        page.locator('[data-testid="stRadio"]', has_text="Corpus").get_by_text("Upload a file").click()
        expect(page.locator('[data-testid="stRadio"]', has_text="Task type")).to_be_visible()  # file mode drawn
        _idle(page)
        page.locator('[data-testid="stFileUploader"] input[type="file"]').last.set_input_files(str(corpus))
        expect(page.locator('[data-testid="stFileChipName"]', has_text="my-notes.txt")).to_be_attached()
        expect(page.get_by_label("Task name")).to_have_value("my-notes")  # the server has the file
        _idle(page)
        t0 = time.perf_counter()
        page.get_by_role("button", name="Compute signature").click()
        seen: list[int] = []
        bar = page.locator('[data-testid="stProgress"] [role="progressbar"]').first
        done = page.get_by_text("Signature computed")
        deadline = time.time() + 120
        while time.time() < deadline and not done.is_visible():
            if bar.count():
                try:
                    seen.append(int(float(bar.get_attribute("aria-valuenow", timeout=1000) or 0)))
                except Exception:
                    pass
            time.sleep(0.2)
        expect(done).to_be_visible()
        timings["compute_s"] = time.perf_counter() - t0
        final = int(float(bar.get_attribute("aria-valuenow") or 0))
        _shot(page, "05-compute")
        assert final == 100, (final, seen)
        assert seen and seen[-1] <= final
        expect(page.get_by_text("your store: 1 task ·")).to_be_visible()  # the app reran: the task is listed
        page.get_by_role("tab", name="Stored tasks").click()
        _shot(page, "06-stored-tasks")

        # 6. a shared URL restores the view (state lives in the query parameters)
        page.goto(f"{server['url']}/decomposition?target={target}&form=V")
        expect(page.locator('[data-testid="stSelectbox"]', has_text="Target task").locator("input")).to_have_value(
            target)
        expect(page.get_by_text("Where the similarity comes from")).to_be_visible()
        assert page.locator('[data-testid="stRadio"]', has_text="Self-norm form").locator(
            "input[value='1']").is_checked() or "form=V" in page.url
        _idle(page)
        _shot(page, "07-decomposition-from-url")
        browser.close()

    with SignatureStore(server["tmp"] / "user.duckdb", read_only=True) as st:
        row = st.list().iloc[0]
        assert row["name"] == "my-notes" and row["model_id"] == "tiny-llama"
    print("[e2e] timings: " + ", ".join(f"{k} = {v:.2f} s" for k, v in timings.items())
          + f"; progress values seen: {sorted(set(seen))}")
    # Timings are measurements, not assertions (a shared machine's neighbours decide them): they are
    # printed, saved beside the screenshots and reported in docs/BENCHMARKS.md. The bound below only
    # says "the app responded at all".
    cpus = os.cpu_count() or 1
    print(f"[e2e] load average before the test {load_before:.1f} on {cpus} CPUs")
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "timings.json").write_text(json.dumps({**timings, "load_before": load_before, "cpus": cpus,
                                                    "store": server["kind"]}, indent=1))
    assert all(v < 60 for v in timings.values()), timings
