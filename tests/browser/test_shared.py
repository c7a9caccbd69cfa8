"""The studio shared by a class: real server (`--classroom USERS.yaml`), Gradio's login page, real
browser contexts for two students and a teacher, real worker processes. Each student sees and
touches only their own runs; the teacher sees all; the HTTP routes refuse other users' runs and
every file of the runs folder; paths typed into fields never reach the server's files.
"""
import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from core.runs import RunManager
from tests.test_trainer import tiny_config

from .conftest import (fill, pick, shot, sign_in, start_server, stop_server, tab, wait_loaded,
                       wait_text, wait_until, wait_value)

USERS = """
users:
  alice: {password: apple-pie, role: student}
  bob: {password: banana-split, role: student}
  carol: {password: cherry-tart, role: teacher}
limits:
  concurrent_runs: 1
  max_steps: 200
"""


def trained_run(runs_dir, user, name, model_dir):
    """A one-step run with an adapter in `user`'s folder, trained by a real worker."""
    cfg = tiny_config(model_dir)
    cfg.name, cfg.train.max_steps, cfg.train.save_steps, cfg.train.threads = name, 1, 1, 1
    manager = RunManager(runs_dir)
    run_dir = manager.create(cfg, parent=runs_dir / "users" / user / "runs")
    manager.start(run_dir)
    assert manager.wait(run_dir, timeout=300) == 0, (run_dir / "worker.log").read_text()[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def classroom(tmp_path_factory, tiny_model_dir):
    runs_dir = tmp_path_factory.mktemp("classroom")
    users = runs_dir.parent / "users.yaml"
    users.write_text(USERS)
    runs = {"alice": trained_run(runs_dir, "alice", "alice-run", tiny_model_dir),
            "bob": trained_run(runs_dir, "bob", "bob-run", tiny_model_dir)}
    url, proc = start_server(runs_dir, "--classroom", str(users), "--allow-model-folder",
                             str(tiny_model_dir))
    yield url, runs_dir, runs, tiny_model_dir
    stop_server(proc, runs_dir)


@pytest.fixture
def person(browser):
    """A fresh browser context per person: their own cookies, as on their own laptop."""
    contexts = []

    def open_as(url, name, password):
        context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                      accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        sign_in(page, url, name, password)
        return page

    yield open_as
    for context in contexts:
        context.close()


def runs_text(page) -> str:
    page.click("#runs-refresh")
    page.wait_for_timeout(1500)
    return page.inner_text("#runs-table")


def test_each_student_sees_only_their_own_runs_the_teacher_all(classroom, person):
    url, runs_dir, runs, _ = classroom
    alice = person(url, "alice", "apple-pie")
    bob = person(url, "bob", "banana-split")
    carol = person(url, "carol", "cherry-tart")
    tab(alice, "4 · Train")
    tab(bob, "4 · Train")
    mine, theirs = runs_text(alice), runs_text(bob)
    assert "alice-run" in mine and "bob-run" not in mine
    assert "bob-run" in theirs and "alice-run" not in theirs
    assert alice.get_by_role("tab", name="Classroom").count() == 0  # teachers only

    tab(alice, "5 · Try and export")
    alice.click("#export-refresh")
    wait_value(alice, "#export-run input", "alice-run")
    alice.click("#export-run input")
    options = alice.get_by_role("option").all_inner_texts()
    assert options and all("bob" not in o for o in options), options
    alice.keyboard.press("Escape")
    shot(alice, "shared-alice-export")

    tab(carol, "Classroom")
    carol.click("#class-refresh")
    wait_text(carol, "#class-runs", "bob-run")
    table = carol.inner_text("#class-runs")
    assert "alice" in table and "bob" in table and "alice-run" in table
    shot(carol, "shared-teacher")


def api(url, path, cookies=None, data=None):
    """(status, body) of one request to the studio, as a script would send it."""
    req = urllib.request.Request(urllib.parse.urljoin(url, path),
                                 data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Cookie": cookies} if cookies else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def call(url, api_name, args, cookies):
    """Call a named endpoint through Gradio's HTTP API; returns the final event text."""
    status, body = api(url, f"gradio_api/call/{api_name}", cookies, {"data": args})
    assert status == 200, body
    event = json.loads(body)["event_id"]
    status, stream = api(url, f"gradio_api/call/{api_name}/{event}", cookies)
    return stream


def test_routes_refuse_other_users_runs_and_the_runs_folder(classroom, person):
    url, runs_dir, runs, _ = classroom
    alice = person(url, "alice", "apple-pie")
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in alice.context.cookies())
    bob_run = runs["bob"]
    # another user's run, by its ref or by path: never shown
    for ref in (f"bob/{bob_run.name}", bob_run.name, str(bob_run), f"../../bob/runs/{bob_run.name}",
                "../../../etc", "/etc/passwd"):
        stream = call(url, "show_run", [ref], cookies)
        # refused by the dropdown's own check (only offered runs) or, behind it, by the handler
        assert "event: error" in stream and ("No such run" in stream or
                                             "not in the list of choices" in stream), stream
        assert "worker" not in stream and "adapter" not in stream
    # no file of the runs folder is served, to her, to anyone
    files = [bob_run / "config.yaml", bob_run / "adapter" / "adapter_model.safetensors",
             bob_run / "worker.log", runs["alice"] / "config.yaml", runs_dir / "queue.json",
             runs_dir / "server.log"]
    for path in files:
        for who in (cookies, None):
            status, _ = api(url, f"gradio_api/file={path}", who)
            assert status in (401, 403), (path, status)
    # without signing in, nothing answers but the login page
    assert api(url, "gradio_api/info")[0] == 401
    status, body = api(url, "gradio_api/call/runs_list", None, {"data": []})
    assert status == 401, body


def test_paths_typed_into_fields_never_reach_server_files(classroom, person, tmp_path):
    url, runs_dir, runs, model_dir = classroom
    alice = person(url, "alice", "apple-pie")
    tab(alice, "2 · Data")
    for typed, refusal in (("/etc/passwd", "Data comes from an upload"),
                           ("../../bob/uploads/data.csv", "Data comes from an upload"),
                           (str(runs["bob"] / "config.yaml"), "Data comes from an upload"),
                           ("~/.ssh/id_rsa", "Data comes from an upload"),
                           ("upload:../../bob/runs", "No such upload")):
        fill(alice, "data-hub", typed)
        alice.click("text=Use this dataset")
        alice.get_by_text(refusal).first.wait_for(timeout=20_000)
        source = alice.locator("#knob-data-source textarea, #knob-data-source input").first
        assert source.input_value() == ""  # nothing was taken as the data source
        alice.reload()
        wait_loaded(alice)
        tab(alice, "2 · Data")
    alice.click("#data-sample")
    wait_text(alice, "#data-messages", "rows")

    tab(alice, "1 · Model")
    pick(alice, "model-preset", "A model folder on this machine")
    for typed in ("/etc", "../../users/bob", "/root"):
        fill(alice, "knob-model-source", typed)
        alice.click("#model-check")
        wait_text(alice, "#model-check-out", "not available here", timeout=30)

    tab(alice, "4 · Train")
    fill(alice, "knob-name", "/tmp/evil/../x")
    alice.click("#train-save-yaml")
    link = alice.locator("#train-yaml-file a").first
    link.wait_for()
    assert "tmp-evil-x.yaml" in "".join(alice.inner_text("#train-yaml-file").split())
    assert not (tmp_path.parent / "x.yaml").exists()
    alice.click("#train-start")  # with the typed model folder: refused before anything starts
    wait_text(alice, "#train-message", "not available here", timeout=30)
    assert not list((runs_dir / "users" / "alice" / "runs").glob("*x"))


def test_runs_wait_in_line_and_the_teacher_sees_the_line(classroom, person):
    url, runs_dir, runs, model_dir = classroom
    alice = person(url, "alice", "apple-pie")
    bob = person(url, "bob", "banana-split")
    carol = person(url, "carol", "cherry-tart")
    for page, name in ((alice, "alice-long"), (bob, "bob-waits")):
        tab(page, "2 · Data")
        page.click("#data-sample")
        wait_text(page, "#data-messages", "rows")
        tab(page, "1 · Model")
        pick(page, "model-preset", "A model folder on this machine")
        fill(page, "knob-model-source", str(model_dir))
        tab(page, "4 · Train")
        fill(page, "knob-name", name)
        page.click("#train-advanced button, #train-advanced .label-wrap")
        # alice's run must outlast the setting up of bob's: 200 steps (the teacher's limit)
        # of 128 tokens, where the tiny model rarely stops early
        for elem, value in {"knob-grpo-num_generations": 2, "knob-grpo-prompts_per_step": 1,
                            "knob-grpo-max_completion_length": 128 if page is alice else 8,
                            "knob-train-threads": 1}.items():
            fill(page, elem, value)
        fill(page, "knob-train-max_steps", 500)
        page.click("#train-start")
        wait_text(page, "#train-message", name, timeout=60)
    assert "Started" in alice.inner_text("#train-message")
    assert "number 1 in line" in bob.inner_text("#train-message")
    wait_text(bob, "#train-progress", "Waiting to start: number 1 in line", timeout=30)
    shot(bob, "shared-bob-waiting")

    tab(carol, "Classroom")
    carol.click("#class-refresh")
    wait_text(carol, "#class-runs", "bob-waits")
    assert "number 1 in line" in carol.inner_text("#class-runs")

    bob.click("#train-stop")
    wait_text(bob, "#train-message", "Taken out of the line", timeout=30)
    bob.click("#runs-delete")  # deleting is for good: the first press asks
    wait_text(bob, "#train-message", "for good", timeout=30)
    assert list((runs_dir / "users" / "bob" / "runs").glob("*bob-waits"))
    bob.click("#runs-delete")
    wait_text(bob, "#train-message", "Deleted", timeout=30)
    assert not list((runs_dir / "users" / "bob" / "runs").glob("*bob-waits"))
    # the banner no longer names the deleted run (it did until the next refresh)
    banner = bob.locator("#banner-run:visible")
    wait_until(lambda: banner.count() == 0 or "bob-waits" not in banner.inner_text(), 5,
               "the banner to forget it")
    pick(carol, "class-pick", "alice-long")
    carol.click("#class-stop")
    wait_text(carol, "#class-message", "stops after its current step", timeout=30)
    wait_until(lambda: "Stopped" in alice.inner_text("#train-progress"), 180, "alice's run to stop")


# ---- a Hugging Face Space ----------------------------------------------------------------------

class _Hub(http.server.BaseHTTPRequestHandler):
    """The one Hub call Gradio's local sign-in stand-in makes (whoami), answered on loopback."""

    def do_GET(self):
        if self.path.startswith("/api/whoami"):
            body = json.dumps({"type": "user", "name": "ann", "fullname": "Ann Example",
                               "avatarUrl": "", "orgs": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_model_dir):
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    runs_dir = tmp_path_factory.mktemp("space")
    url, proc = start_server(runs_dir, "--allow-model-folder", str(tiny_model_dir), env={
        "SPACE_ID": "owner/aha-studio", "HF_TOKEN": "hf_local_test_token",
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "HF_HUB_OFFLINE": "0"})
    yield url, runs_dir, tiny_model_dir
    stop_server(proc, runs_dir)
    hub.shutdown()


def test_space_training_needs_a_signed_in_user(space, page):
    url, runs_dir, model_dir = space
    page.goto(url)
    wait_loaded(page)
    wait_text(page, "#who", "not signed in")
    assert page.locator("#banner-storage").count() == 1  # no /data here: runs are not kept
    tab(page, "2 · Data")
    page.click("#data-sample")
    wait_text(page, "#data-messages", "rows")
    tab(page, "4 · Train")
    page.click("#train-start")
    wait_text(page, "#train-message", "Sign in with Hugging Face", timeout=30)
    assert not (runs_dir / "users").exists()

    page.click("#login")  # Gradio's stand-in for Hugging Face sign-in, as on a laptop
    wait_text(page, "#who", "Signed in as ann", timeout=60)
    tab(page, "1 · Model")
    pick(page, "model-preset", "A model folder on this machine")
    fill(page, "knob-model-source", str(model_dir))
    tab(page, "2 · Data")
    page.click("#data-sample")
    wait_text(page, "#data-messages", "rows")
    tab(page, "4 · Train")
    fill(page, "knob-name", "ann-run")
    page.click("#train-advanced button, #train-advanced .label-wrap")
    for elem, value in {"knob-grpo-num_generations": 2, "knob-grpo-prompts_per_step": 1,
                        "knob-grpo-max_completion_length": 8, "knob-train-threads": 1,
                        "knob-train-max_steps": 2}.items():
        fill(page, elem, value)
    page.click("#train-start")
    wait_text(page, "#train-message", "ann-run", timeout=60)
    assert list((runs_dir / "users" / "ann" / "runs").glob("*ann-run"))
    shot(page, "space-signed-in")


def test_a_visitor_chats_with_the_published_example_but_cannot_take_it(space, browser):
    url, runs_dir, model_dir = space
    from studio.access import Policy

    (run,) = [p for p in (runs_dir / "users" / "ann" / "runs").glob("*ann-run")]
    manager = RunManager(runs_dir)
    wait_until(lambda: (run / "adapter" / "adapter_model.safetensors").exists() or
               not manager.is_alive(run), 300, "ann's run to finish")
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    policy = Policy("space", runs_dir)
    policy.publish_example(policy.user_named("ann"), run)  # as the Space's author does

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    wait_text(page, "#who", "not signed in")
    tab(page, "5 · Try and export")
    page.click("#export-refresh")
    wait_value(page, "#export-run input", "ann-run")
    fill(page, "chat-question", "What is 2 + 3?")
    page.click("#chat-ask")
    wait_until(lambda: page.locator("#chat-trained .message, #chat-trained [data-testid='bot']")
               .count() > 0 or "❌" in page.inner_text("#chat-status"), 240, "an answer")
    assert "❌" not in page.inner_text("#chat-status")
    page.click("#export-zip")
    page.get_by_text("Only the run's owner or a teacher").first.wait_for(timeout=30_000)
    shot(page, "space-visitor-chat")
    context.close()
