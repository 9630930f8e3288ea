"""The output folder of run_qa_prune.py (issue 26): only the script's own files move, nothing is lost."""
import json
import os

import pytest

from hf_prune.run_outputs import (CHECKPOINT_MARKER, MANIFEST_NAME, PREVIOUS_NAME, STAGING_NAME,
                                  check_evaluation_output, check_output_location, prepare_output_dir, publish,
                                  recover_interrupted, staging_dir)


def _finished_run(folder, files=("model.safetensors", "config.json", "eval_results.json")):
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_text(f"old {name}")
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": list(files)}))
    checkpoint = folder / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / CHECKPOINT_MARKER).write_text("")
    return folder


@pytest.mark.parametrize("relation", ["same", "inside", "holds"])
def test_output_dir_is_never_the_model_folder_or_near_it(tmp_path, relation):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    output = {"same": model, "inside": model / "sub", "holds": tmp_path}[relation]
    with pytest.raises(ValueError, match="is, holds or lies inside the teacher folder"):
        check_output_location(str(output), {"model": None, "teacher": str(model)})


@pytest.mark.parametrize("where", [".", ".."])
def test_output_dir_is_never_the_current_directory_or_a_parent(tmp_path, monkeypatch, where):
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(ValueError, match="is the current directory or one of its parents"):
        check_output_location(where, {})
    check_output_location("outputs/run", {})  # a folder of its own is fine


def test_overwrite_moves_only_the_scripts_own_files(tmp_path):
    out = _finished_run(tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint-7").mkdir()  # a folder the user named so, with no marker: the new run's could collide
    with pytest.raises(ValueError, match="holds checkpoint-7, which no run of this script wrote"):
        prepare_output_dir(str(out), overwrite=True, resume_from_checkpoint=None)
    (out / "checkpoint-7").rmdir()
    prepare_output_dir(str(out), overwrite=True, resume_from_checkpoint=None)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "model.safetensors").exists() and (out / PREVIOUS_NAME / "model.safetensors").is_file()
    staging = staging_dir(str(out))
    for name in ("model.safetensors", "config.json"):
        open(os.path.join(staging, name), "w").write(f"new {name}")
    publish(staging, str(out), replace_run=True)
    assert (out / "model.safetensors").read_text() == "new model.safetensors"
    assert not (out / PREVIOUS_NAME).exists() and not (out / "eval_results.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / MANIFEST_NAME).read_text())["files"] == ["config.json", "model.safetensors"]


def test_overwrite_refuses_files_it_did_not_write(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text("the user's")
    (out / "README.md").write_text("the user's")
    with pytest.raises(ValueError, match="which no run of this script wrote"):
        prepare_output_dir(str(out), overwrite=True, resume_from_checkpoint=None)
    assert (out / "config.json").read_text() == "the user's" and (out / "README.md").read_text() == "the user's"


def test_an_interrupted_overwrite_puts_the_earlier_run_back(tmp_path):
    out = _finished_run(tmp_path / "out")
    prepare_output_dir(str(out), overwrite=True, resume_from_checkpoint=None)
    (out / "checkpoint-4").mkdir()  # the new run saved a checkpoint of the same number, then was killed
    recover_interrupted(str(out))
    assert (out / "model.safetensors").read_text() == "old model.safetensors"
    assert (out / "checkpoint-4" / CHECKPOINT_MARKER).is_file() and not (out / PREVIOUS_NAME).exists()


def test_a_staging_folder_holding_a_model_is_never_deleted(tmp_path):
    out = tmp_path / "out"
    (out / STAGING_NAME).mkdir(parents=True)
    (out / STAGING_NAME / "model.safetensors").write_text("the only copy")
    for call in (lambda: staging_dir(str(out)), lambda: prepare_output_dir(str(out), True, None),
                 lambda: check_evaluation_output(str(out), "elsewhere", True)):
        with pytest.raises(ValueError, match="interrupted run"):
            call()
    assert (out / STAGING_NAME / "model.safetensors").read_text() == "the only copy"


def test_evaluation_into_another_finished_model_is_refused(tmp_path):
    out = _finished_run(tmp_path / "model-a")
    with pytest.raises(ValueError, match="holds another finished model"):
        check_evaluation_output(str(out), str(tmp_path / "model-b"), overwrite=False)
    check_evaluation_output(str(out), str(tmp_path / "model-b"), overwrite=True)
    assert not (out / "model.safetensors").exists() and (out / PREVIOUS_NAME / "model.safetensors").is_file()
