"""Local folder or Hub id: a missing folder is named, an unreachable Hub is one sentence ending with the hint."""
import pytest

from hf_prune import hub_loading


@pytest.mark.parametrize("name, local", [("./model", True), ("../shared/m", True), ("/abs/m", True), ("~/m", True),
                                         ("a/b/c", True), ("org/name", False), ("bert-base-uncased", False)])
def test_looks_local(name, local):
    assert hub_loading.looks_local(name) is local


def test_a_missing_local_folder_is_named_before_any_load():
    with pytest.raises(ValueError, match=r"model folder './nowhere' does not exist"):
        hub_loading.from_hub_or_local("model", "./nowhere", lambda: pytest.fail("loaded"), "hint")


def test_an_unreachable_hub_stops_with_the_hint(monkeypatch):
    monkeypatch.setattr(hub_loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit, match=r"Hub is unreachable, so tokenizer 'org/name' cannot be downloaded; "
                                         r"offline, pass --local \(or set HF_HUB_OFFLINE=1"):
        hub_loading.from_hub_or_local("tokenizer", "org/name", lambda: pytest.fail("loaded"), "pass --local")


def test_a_failed_hub_load_is_one_sentence_and_a_local_error_is_raised_as_is(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def fail():
        raise OSError("connection refused\nmore lines")

    with pytest.raises(SystemExit, match=r"could not load model 'org/name' .*connection refused\); offline, hint\."):
        hub_loading.from_hub_or_local("model", "org/name", fail, "hint")
    with pytest.raises(OSError, match="connection refused"):
        hub_loading.from_hub_or_local("model", str(tmp_path), fail, "hint")
