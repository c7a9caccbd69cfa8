"""A real studio server (python app.py) on localhost and a headless system Chromium."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("AHA_CHROMIUM", "/usr/bin/chromium")
# A closed network makes Chromium's background services misbehave; switch them all off.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_workers(runs_dir: Path) -> None:
    for pid_file in list(runs_dir.glob("*/worker.pid")) + list(runs_dir.glob("users/*/runs/*/worker.pid")):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def start_server(runs_dir: Path, *args: str, env: dict | None = None):
    """(url, process) of `python app.py` on a free loopback port, started and answering."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(env or {})}
    log = open(runs_dir / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir",
                             str(runs_dir), *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except urllib.error.HTTPError:
            break  # it answers (a login page may ask first)
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the studio did not start:\n" +
                            (runs_dir / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    return url, proc


def stop_server(proc, runs_dir: Path) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    _kill_workers(runs_dir)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """(url, runs_dir) of a studio served by its own process, as in production."""
    runs_dir = tmp_path_factory.mktemp("runs")
    url, proc = start_server(runs_dir)
    yield url, runs_dir
    stop_server(proc, runs_dir)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def locale():
    """The browser's language (the page takes its own from it); a test may override it."""
    return "en-US"


@pytest.fixture
def page(browser, request, locale):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True, locale=locale)
    page = context.new_page()
    page.set_default_timeout(60_000)
    outside = []  # the studio works offline: no request may leave localhost

    def on_request(req):
        host = req.url.split("/")[2] if "://" in req.url else ""
        if req.url.startswith(("http:", "https:", "ws:", "wss:")) and \
                not host.startswith(("127.0.0.1", "localhost")):
            outside.append(req.url)

    page.on("request", on_request)
    page.outside_requests = outside
    yield page
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown by its visible text."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=False).first.click()


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


TINY = {"knob-grpo-num_generations": 2, "knob-grpo-prompts_per_step": 1,
        "knob-grpo-max_completion_length": 8, "knob-train-save_steps": 1,
        "knob-train-threads": 1}


def run_step(page) -> int:
    value = page.locator(".aha-progress").first.get_attribute("data-step")
    return int(value or 0)


def run_state(page) -> str:
    return page.locator(".aha-progress").first.get_attribute("data-state") or ""


def wait_until(predicate, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def download(page, button: str, files: str, path):
    """Press `button`, wait for the file link it puts in `files`, save that download as `path`."""
    page.click(button)
    link = page.locator(f"{files} a").first
    link.wait_for()
    with page.expect_download() as dl:
        link.click()
    dl.value.save_as(path)
    return path


def ask_run(page, run_name: str, question: str) -> None:
    """In step 5, pick the run named `run_name` and ask it `question` (the answers come later)."""
    page.click("#export-refresh")
    wait_value(page, "#export-run input", run_name)
    fill(page, "chat-question", question)
    page.click("#chat-ask")


def answered(page, elem: str, question: str) -> bool:
    """Whether the chat `elem` shows `question` with an answer after it."""
    text = page.inner_text(f"#{elem}")
    return question in text and len(text.split(question, 1)[1].strip()) > 0


def wait_text(page, selector: str, text: str, timeout: float = 30) -> None:
    """Wait until the element's text contains `text`; the element may not exist yet."""
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.innerText ?? '').includes(text)",
        arg=[selector, text], timeout=timeout * 1000)


def wait_value(page, selector: str, text: str, timeout: float = 30) -> None:
    """Wait until the input's value contains `text`; the input may not exist yet."""
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.value ?? '').includes(text)",
        arg=[selector, text], timeout=timeout * 1000)


def tiny_run(page, name: str, steps: int) -> None:
    tab(page, "4 · Train")
    fill(page, "knob-name", name)
    page.click("#train-advanced button, #train-advanced .label-wrap")
    for elem, value in TINY.items():
        fill(page, elem, value)
    fill(page, "knob-train-max_steps", steps)
    if shutil.which("nvidia-smi") is None:  # "GPUs to train on" shows with several GPUs only
        assert not page.locator("#knob-train-processes").is_visible()

def reward_form(page) -> list[tuple[str, list[str]]]:
    """The rewards step's form as shown: each reward's title and the values of its fields."""
    return page.eval_on_selector_all("#reward-list [id^=reward-]", """all => all.filter(
        e => /^reward-[0-9]+$/.test(e.id) && !e.parentElement.closest(`[id="${e.id}"]`)
    ).map(item => [
        item.querySelector('.reward-item-title').innerText.trim(),
        Array.from(item.querySelectorAll('input, textarea')).map(
            i => i.type === 'checkbox' ? String(i.checked) : i.value)])""")


def reward_index(page, template: str) -> int:
    """The position of a template's reward in the form."""
    titles = [title for title, _ in reward_form(page)]
    return next(i for i, title in enumerate(titles) if f"({template})" in title)


def wait_loaded(page) -> str:
    """Wait until the page has asked for the user's draft; 'restored' or 'none'."""
    page.wait_for_selector("#machine-info")
    marker = page.locator("#aha-ready [data-draft]")
    marker.wait_for(state="attached")
    return marker.get_attribute("data-draft")


def open_studio(page, url: str) -> str:
    page.goto(url)
    return wait_loaded(page)


@pytest.fixture(autouse=True)
def fresh_draft(request):
    """Each test starts from an empty form: no draft left by the test before it."""
    if "studio" in request.fixturenames:
        _, runs_dir = request.getfixturevalue("studio")
        (runs_dir / "draft.json").unlink(missing_ok=True)


def open_with_sample_data(page, url: str) -> None:
    """Load the studio and pick the built-in sample data (step 2)."""
    open_studio(page, url)
    tab(page, "2 · Data")
    page.click("#data-sample")
    wait_text(page, "#data-messages", "rows")


def sign_in(page, url: str, name: str, password: str) -> None:
    """Gradio's login page, as a student or teacher uses it."""
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    wait_loaded(page)
    wait_text(page, "#who", f"Signed in as {name}")
