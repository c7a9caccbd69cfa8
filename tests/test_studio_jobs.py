"""Model work in a child process (studio.infer through studio.jobs), on a tiny real model.

The chat here is transformers' (what answers where llama.cpp is not installed); the llama.cpp
chat has its own tests (test_gguf_chat.py)."""
import pytest

from studio.jobs import JobError, run_job, run_job_quietly


@pytest.fixture(autouse=True)
def _transformers_answers(monkeypatch):
    monkeypatch.setenv("AHA_CHAT_ENGINE", "transformers")  # the model processes inherit it


def test_generate_reports_progress_then_completions(tiny_model_dir):
    req = {"job": "generate", "source": str(tiny_model_dir), "precision": "32bit",
           "questions": ["What is 2 + 2?", "Name a colour."], "num": 2, "max_new_tokens": 4,
           "threads": 1}
    seen = list(run_job(req))
    kinds = [k for k, _ in seen]
    assert "progress" in kinds and kinds[-1] == "result"
    result = seen[-1][1]
    assert len(result["base"]) == 2 and all(len(group) == 2 for group in result["base"])
    assert all(isinstance(t, str) for group in result["base"] for t in group)


def test_temperature_zero_answers_with_the_likeliest_tokens(tiny_model_dir):
    """Temperature 0 is greedy (as in the llama.cpp and vLLM chats): every answer the same,
    whatever the seed; at temperature 1 the tiny random model's answers differ."""
    req = {"job": "generate", "source": str(tiny_model_dir), "precision": "32bit",
           "questions": ["What is 2 + 2?"], "num": 3, "max_new_tokens": 8, "threads": 1}
    greedy = [run_job_quietly({**req, "temperature": 0, "seed": s})["base"][0] for s in (1, 2)]
    assert len(set(greedy[0])) == 1 and greedy[0] == greedy[1]
    sampled = run_job_quietly({**req, "temperature": 1.0, "seed": 1})["base"][0]
    assert len(set(sampled)) > 1


def test_prepare_reads_the_model_size(tiny_model_dir):
    result = run_job_quietly({"job": "prepare", "source": str(tiny_model_dir)})
    assert result["model_type"] == "llama" and result["params"] > 0


def test_a_bad_model_source_is_one_line_not_a_crash(tmp_path):
    with pytest.raises(JobError) as exc:
        run_job_quietly({"job": "generate", "source": str(tmp_path), "questions": ["hi"]})
    assert "config.json" in str(exc.value) and "\n" not in str(exc.value)
    assert "Traceback" in exc.value.traceback


def _tiny_run(tiny_model_dir, tmp_path):
    """A run folder on the tiny model whose adapter moves the answers (B is zero at the start)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.config import RunConfig

    run_dir = tmp_path / "tiny-run"
    run_dir.mkdir()
    RunConfig.from_dict({"model": {"source": str(tiny_model_dir)}}).save(run_dir / "config.yaml")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    adapted.save_pretrained(run_dir / "adapter")
    return run_dir


def test_the_export_job_merges_a_16bit_model_that_answers_like_base_plus_adapter(tiny_model_dir,
                                                                                 tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = _tiny_run(tiny_model_dir, tmp_path)
    out = tmp_path / "merged"
    seen = list(run_job({"job": "export", "run_dir": str(run_dir), "format": "merged",
                         "out": str(out), "threads": 1, "lang": "de"}))
    assert ("progress", "Adapter wird in das Ausgangsmodell eingebaut") in seen  # page language
    result = seen[-1][1]
    assert result["folder"] == str(out) and result["checkpoint"] == "final"
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.bfloat16
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (out / "tokenizer_config.json").exists() and (out / "README.md").exists()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(fresh, run_dir / "adapter")
    ids = torch.tensor([[1, 20, 300, 4000, 50]])
    with torch.no_grad():
        want, got = reference(input_ids=ids).logits, merged(input_ids=ids).logits
    assert (got.float() - want.float()).abs().max() < 0.05 * want.float().abs().max()
    with reference.disable_adapter(), torch.no_grad():
        plain = reference(input_ids=ids).logits
    assert not torch.allclose(got.float(), plain.float(), atol=1e-3)  # the adapter is in it


def test_an_export_that_cannot_run_says_why_in_the_page_language(tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    run_dir = _tiny_run(tiny_model_dir, tmp_path)
    monkeypatch.setenv("AHA_LLAMA_CPP", str(tmp_path))  # no llama.cpp converter there
    with pytest.raises(JobError) as exc:
        run_job_quietly({"job": "export", "run_dir": str(run_dir), "format": "gguf",
                         "out": str(tmp_path / "gguf"), "lang": "de"})
    assert str(exc.value).startswith("Für den GGUF-Export braucht es den Konverter")
    assert not (tmp_path / "gguf").exists()


def test_push_to_hub_gives_one_line_reasons(tmp_path):
    from studio.step_export import push_to_hub

    for repo, token, words in [("no-slash", "hf_x", "your-name/model-name"),
                               ("me/model", "", "access token"),
                               ("me/model", "hf_x", "Could not push to the Hub")]:
        with pytest.raises(ValueError) as exc:
            push_to_hub(tmp_path, repo, token)  # tests run offline: the Hub is never reached
        assert words in str(exc.value) and "\n" not in str(exc.value)


def _compare_request(model_dir, tmp_path, max_new_tokens: int) -> dict:
    """A question to an adapter (saved untrained into tmp_path) and the base model together."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "adapter")
    return {"job": "generate", "source": str(model_dir), "precision": "32bit",
            "questions": ["What is 2 + 2?"], "num": 1, "max_new_tokens": max_new_tokens,
            "threads": 1, "adapter": str(tmp_path / "adapter"), "compare_base": True}


def test_warm_workers_keep_the_model_between_questions(tiny_model_dir, tmp_path):
    """The second question goes to the same process with the model already loaded, an adapter
    rewritten on disk is loaded again, and an idle worker is ended."""
    import time

    from studio.jobs import JobPool

    pool = JobPool(size=1, idle=0.5)
    req = _compare_request(tiny_model_dir, tmp_path, max_new_tokens=4)

    def ask():
        t0 = time.perf_counter()
        steps = list(pool.run(req))
        return steps, time.perf_counter() - t0

    first, t_first = ask()
    assert first[-1][0] == "result" and set(first[-1][1]) == {"adapter", "base"}
    assert "Loading the model" in [v for k, v in first if k == "progress"]
    (worker,) = pool._idle_workers
    second, t_second = ask()
    assert pool._idle_workers == [worker]  # the same process answered
    progress = [v for k, v in second if k == "progress"]
    assert "Loading the model" not in progress and "Loading the adapter" not in progress
    assert second[-1][1] == first[-1][1]  # same seed, same model: the same answers
    print(f"first answer {t_first:.2f} s, second {t_second:.2f} s")
    assert t_second < t_first
    (tmp_path / "adapter" / "adapter_model.safetensors").touch()  # a newer checkpoint
    third, _ = ask()
    assert "Loading the adapter" in [v for k, v in third if k == "progress"]
    time.sleep(1.0)
    assert pool.reap() == 1 and pool.warm() == 0 and not worker.alive


def test_a_preloaded_model_answers_the_first_question_without_loading(tiny_model_dir, tmp_path):
    """The page loads the model when a checkpoint is chosen: a question asked while that load
    runs waits for it and goes to the same process (one load, not two); a second preload of the
    same model meanwhile does nothing; a preload finds no free slot: it does nothing."""
    import threading
    import time

    from studio.jobs import JobPool

    pool = JobPool(size=2, idle=0.1)
    req = _compare_request(tiny_model_dir, tmp_path, max_new_tokens=4)
    preloaded, asked = [], []
    try:
        loader = threading.Thread(target=lambda: preloaded.extend(pool.preload(req)))
        loader.start()
        deadline = time.monotonic() + 60
        while not pool._loading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool._loading, "the preload did not start"
        assert list(pool.preload(req)) == []  # the same model is loading already
        asked = list(pool.run(req))  # asked during the load: waits for it
        loader.join(120)
        assert preloaded[-1] == ("result", {"loaded": True, "engine": "transformers"})
        assert "Loading the model" in [v for k, v in preloaded if k == "progress"]
        assert asked[-1][0] == "result" and set(asked[-1][1]) == {"adapter", "base"}
        said = [v for k, v in asked if k == "progress"]
        assert "Loading the adapter" not in said and "Preparing" not in " ".join(said)
        assert len(pool._idle_workers) == 1 and pool.warm() == 1  # one process did both
        # no free slot: the preload gives way at once
        taken = [pool._slots.acquire(blocking=False) for _ in range(2)]
        assert all(taken)
        t0 = time.monotonic()
        assert list(pool.preload(req)) == [] and time.monotonic() - t0 < 1
        for _ in taken:
            pool._slots.release()
    finally:
        time.sleep(0.2)
        pool.reap()


def test_the_evaluate_job_scores_held_out_questions_for_the_page_and_the_model_card(
        tiny_model_dir, tmp_path):
    """Step 5's "Did it learn?": base and trained scored in a model process in the page's
    language, drawn and listed from the result, and carried into an export's model card."""
    import json
    import os
    from pathlib import Path

    from core.export import export_run
    from core.modelcard import saved_evaluation
    from core.trainer import Trainer
    from studio import evaluation, i18n
    from tests.test_trainer import tiny_config

    cfg = tiny_config(tiny_model_dir)
    cfg.data.eval_share, cfg.train.eval_max_questions = 0.2, 4
    cfg.rewards[0].template = "numeric_match"
    cfg.rewards[0].params = {"partial_credit_for_number": 0.1}
    assert Trainer(cfg, tmp_path).setup().train() == "finished"
    seen = list(run_job({"job": "evaluate", "run_dir": str(tmp_path), "threads": 1,
                         "lang": "de"}))
    assert ("progress", "Dein trainiertes Modell beantwortet 4 Fragen") in seen
    assert ("progress", "Das Ausgangsmodell beantwortet dieselben 4 Fragen") in seen
    result = seen[-1][1]
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    assert saved_evaluation(tmp_path, "final") == result
    assert saved_evaluation(tmp_path, "step-1") is None  # another adapter was not scored
    assert saved_evaluation(tmp_path, "final", split="train") is None

    base, trained = result["greedy"]["base"], result["greedy"]["trained"]
    with i18n.speaking("de"):
        line = evaluation.summary(result, "endgültiger Adapter")
        fig = evaluation.figure(result)
        table = evaluation.changed_table(result)
    assert line.startswith(f"Bei 4 zurückgehaltenen Fragen (endgültiger Adapter, Antworten ohne "
                           f"Zufall): vor dem Training in {round(100 * base['accuracy'])} % ")
    assert [trace.name for trace in fig.data] == ["vorher (das Ausgangsmodell)",
                                                  "nachher (trainiert)"]
    names = result["rewards"]
    assert list(fig.data[0].x) == ["richtige Antworten (Anteil)", "Gesamtbelohnung", *names]
    assert list(fig.data[1].y) == [trained["accuracy"], trained["total"],
                                   *[trained["rewards"][n] for n in names]]
    changed = [item for item in result["items"] if item["changed"]]
    assert table["headers"][0] == "Frage" and len(table["data"]) == len(changed)
    assert [row[0] for row in table["data"]] == [item["question"] for item in changed]

    line = f"| accuracy | {base['accuracy']:.3f} | {trained['accuracy']:.3f} |"
    own = (tmp_path / "adapter" / "README.md").read_text()  # the adapter's own card, too
    assert "The base model and this adapter on 4 held-out questions never trained on" in own
    assert line in own
    card = (Path(export_run(tmp_path, "adapter")["folder"]) / "README.md").read_text()
    assert line in card
    # the adapter trained again since (a resumed run): its old score is not shown as its own
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert saved_evaluation(tmp_path, "final") is None


def test_streamed_answers_grow_into_the_final_ones(tiny_model_dir, tmp_path):
    """With "stream", the model process sends the adapter's and the base model's answers so far
    while it writes them; each is the start of the answer it becomes."""
    import time

    from studio.jobs import JobPool

    pool = JobPool(size=1, idle=0.1)
    req = {**_compare_request(tiny_model_dir, tmp_path, max_new_tokens=24), "stream": True}
    try:
        steps = list(pool.run(req))
        plain = list(pool.run({**req, "stream": False}))
    finally:
        time.sleep(0.2)
        pool.reap()  # the idle model process ends
    kinds = [k for k, _ in steps]
    assert kinds[-1] == "result" and "partial" in kinds
    assert kinds.index("partial") < len(kinds) - 1
    final = steps[-1][1]
    assert final == plain[-1][1] and "partial" not in [k for k, _ in plain]  # same answers
    for kind, value in steps:
        if kind == "partial":
            assert set(value) == {"adapter", "base"}
            for side in ("adapter", "base"):
                assert final[side][0][0].startswith(value[side][0][0])
