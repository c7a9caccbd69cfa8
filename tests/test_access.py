"""Who may touch what: users, run refs, uploads and sources resolved inside their own folders."""
import os
from types import SimpleNamespace

import pytest

from core.config import RunConfig
from core.runs import RunManager
from studio.access import (AccessError, Limits, Policy, hash_password, load_accounts)

USERS = """
users:
  alice: {password: apple, role: student}
  bob: {password: banana, role: student}
  carol: {password_hash: HASH, role: teacher}
limits:
  max_steps: 50
  concurrent_runs: 1
"""


@pytest.fixture
def classroom(tmp_path):
    users = tmp_path / "users.yaml"
    users.write_text(USERS.replace("HASH", hash_password("cherry", iterations=1000)))
    accounts, limits = load_accounts(users)
    return Policy("classroom", tmp_path / "runs", accounts, limits)


def request(name):
    return SimpleNamespace(username=name)


def make_run(policy, user, name="demo"):
    return RunManager(policy.root).create(RunConfig(name=name), parent=user.runs_dir)


def test_sign_in_and_roles(classroom):
    assert classroom.check_login("alice", "apple") and classroom.check_login("carol", "cherry")
    assert not classroom.check_login("alice", "banana") and not classroom.check_login("eve", "x")
    alice, carol = classroom.user(request("alice")), classroom.user(request("carol"))
    assert (alice.role, carol.role) == ("student", "teacher")
    assert carol.sees_all and not alice.sees_all
    with pytest.raises(AccessError, match="sign in"):
        classroom.user(request(None))
    with pytest.raises(AccessError, match="sign in"):
        classroom.user(request("mallory"))  # a name the login page would never let through
    assert classroom.limits.max_steps == 50


def test_students_reach_only_their_own_runs(classroom):
    alice, bob = classroom.user(request("alice")), classroom.user(request("bob"))
    carol = classroom.user(request("carol"))
    run = make_run(classroom, alice)
    assert run.parent == classroom.root / "users" / "alice" / "runs"
    assert alice.run_dir(run.name) == run and alice.run_ref(run) == run.name
    for ref in (run.name, f"alice/{run.name}"):
        with pytest.raises(AccessError, match="No such run"):
            bob.run_dir(ref)
    assert carol.run_dir(f"alice/{run.name}") == run
    assert carol.run_ref(run) == f"alice/{run.name}"
    assert carol.run_folders() == [classroom.root / "users" / "alice" / "runs"]


@pytest.mark.parametrize("ref", ["../bob/runs/x", "/etc", "..", ".", "a/../../b", "x/../..",
                                 "alice/../../../etc", "", "   ", "a" * 200, "runs/../x",
                                 "c:\\windows", "x\x00y"])
def test_hostile_run_refs(classroom, ref):
    alice = classroom.user(request("alice"))
    make_run(classroom, alice)
    with pytest.raises(AccessError):
        alice.run_dir(ref)


def test_a_symlink_out_of_the_namespace_is_refused(classroom, tmp_path):
    alice, bob = classroom.user(request("alice")), classroom.user(request("bob"))
    theirs = make_run(classroom, bob)
    alice.runs_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(theirs, alice.runs_dir / "sneaky")
    with pytest.raises(AccessError):
        alice.run_dir("sneaky")


def test_sources_in_the_shared_modes(classroom, tmp_path):
    alice, bob = classroom.user(request("alice")), classroom.user(request("bob"))
    alice.uploads_dir.mkdir(parents=True)
    (alice.uploads_dir / "abc-data.csv").write_text("question,answer\n1+1,2\n")
    assert alice.data_source("upload:abc-data.csv") == str(alice.uploads_dir / "abc-data.csv")
    with pytest.raises(AccessError):
        bob.data_source("upload:abc-data.csv")  # not in bob's folder
    assert alice.data_source("builtin:arithmetic?n=5") == "builtin:arithmetic?n=5"
    assert alice.data_source("openai/gsm8k:main") == "hub:openai/gsm8k:main"
    assert alice.data_source("hub:openai/gsm8k:main") == "hub:openai/gsm8k:main"
    assert alice.display_source("hub:openai/gsm8k:main") == "openai/gsm8k:main"
    for hostile in ("/etc/passwd", "../users/bob/uploads/x.csv", "./x.csv", "~/x.csv",
                    "upload:../x", "upload:/etc/passwd", str(alice.uploads_dir / "abc-data.csv")):
        with pytest.raises(AccessError):
            alice.data_source(hostile)
    assert alice.display_source(str(alice.uploads_dir / "abc-data.csv")) == "upload:abc-data.csv"
    assert alice.model_source("default") == "default"
    for hostile in ("/tmp", "../models", "~/.cache/x", "a/b/../../c"):
        with pytest.raises(AccessError):
            alice.model_source(hostile)


def test_a_hub_id_never_reads_the_servers_own_files(classroom, tmp_path, monkeypatch):
    """"runs/accounts.csv" looks like a Hub id: typed into the dataset box of a shared studio,
    it once read that file of the server's working folder (any table one folder deep)."""
    from core.data import check_data
    alice = classroom.user(request("alice"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "accounts.csv").write_text("user,password\nalice,secret\n")
    assert check_data("runs/accounts.csv").columns == ["user", "password"]  # a local path
    for typed in ("runs/accounts.csv", "runs", "hub:runs/accounts.csv"):
        report = check_data(alice.data_source(typed))
        assert report.columns == [] and "Hub" in report.errors[0], typed


def test_model_allowlists(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    policy = Policy("classroom", tmp_path / "runs", {}, {"allowed_models": ["Qwen/Qwen3-0.6B"]},
                    local_models=[str(folder)])
    user = policy.user_named("someone")
    assert user.model_source("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert user.model_source(str(folder)) == str(folder.resolve())
    with pytest.raises(AccessError, match="allowed"):
        user.model_source("Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(AccessError, match="allowed"):
        user.model_source("default")


def test_local_mode_is_one_trusted_person(tmp_path):
    policy = Policy("local", tmp_path / "runs")
    me = policy.user()
    assert me.role == "owner" and me.runs_dir == policy.root
    run = make_run(policy, me)
    assert me.run_dir(run.name) == run
    assert me.data_source("/some/file.csv") == "/some/file.csv"  # their own machine
    with pytest.raises(AccessError):
        me.run_dir("../elsewhere")
    me.check_quota(adding=10**15)  # no quota locally


def test_visitors_see_only_the_published_example(tmp_path):
    policy = Policy("space", tmp_path / "runs", admins=("owner",))
    visitor, member = policy.user(None, None), policy.user(None, SimpleNamespace(username="ann"))
    owner = policy.user(None, SimpleNamespace(username="owner"))
    assert (visitor.role, member.role, owner.role) == ("visitor", "member", "teacher")
    assert not visitor.can_train and member.can_train
    run = make_run(policy, member)
    with pytest.raises(AccessError):
        visitor.run_dir(f"ann/{run.name}")
    policy.publish_example(member, run)
    assert visitor.run_dir(f"ann/{run.name}") == run and not visitor.owns(run)
    other = make_run(policy, member, "private")
    with pytest.raises(AccessError):
        visitor.run_dir(f"ann/{other.name}")


def test_quota_and_limits(classroom):
    alice = classroom.user(request("alice"))
    classroom.save_limits(Limits.from_dict({"disk_quota_mb": 1}))
    alice.uploads_dir.mkdir(parents=True)
    (alice.uploads_dir / "big.bin").write_bytes(b"x" * (2 << 20))
    with pytest.raises(AccessError, match="space is full"):
        alice.check_quota()
    reloaded = Policy("classroom", classroom.root, classroom.accounts)
    assert reloaded.limits.disk_quota_mb == 1  # saved in the runs folder
    for bad in ({"concurrent_runs": 0}, {"max_steps": -1}, {"nope": 1}, {"upload_mb": "x"},
                {"max_steps": 10**30}):
        with pytest.raises(AccessError):
            Limits.from_dict(bad)


@pytest.mark.parametrize("text, words", [
    ("alice: {password: a, role: student}", "at least one teacher"),
    ("'../x': {password: a, role: teacher}", "may use only"),
    ("t: {role: teacher}", "no password"),
    ("t: {password: a, role: admin}", "use student or teacher"),
    ("a: &a {password: a, role: teacher}\nb: *a", "anchors"),
    ("[1, 2]", "must map"),
])
def test_users_file_problems_are_one_line(tmp_path, text, words):
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(AccessError, match=words):
        load_accounts(path)
