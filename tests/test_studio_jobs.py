"""Model work in a child process (studio.infer through studio.jobs), on a tiny real model."""
import pytest

from studio.jobs import JobError, run_job, run_job_quietly


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


def test_prepare_reads_the_model_size(tiny_model_dir):
    result = run_job_quietly({"job": "prepare", "source": str(tiny_model_dir)})
    assert result["model_type"] == "llama" and result["params"] > 0


def test_a_bad_model_source_is_one_line_not_a_crash(tmp_path):
    with pytest.raises(JobError) as exc:
        run_job_quietly({"job": "generate", "source": str(tmp_path), "questions": ["hi"]})
    assert "config.json" in str(exc.value) and "\n" not in str(exc.value)
    assert "Traceback" in exc.value.traceback
