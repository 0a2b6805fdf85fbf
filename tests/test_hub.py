"""Hub sharing through huggingface_hub's real code paths, without the network: pulls resolve
from its cache layout (``local_files_only``), pushes go to an API whose two network calls are
recorded instead of sent."""

import os

import pytest
import yaml
from helpers import hub_cache
from huggingface_hub import HfApi

from learned_solvers.distill import NoiseLevels, distill
from learned_solvers.learned_samplers import GaussianMixtureDenoiser
from learned_solvers.schedules import LearnedSolverFileError, load_learned_solver, save_learned_solver
from learned_solvers.schedules.hub import SharingError, model_card, pull_learned_solver, push_learned_solver

SHAPE = (2, 8, 8)
REPO = "someone/solvers"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def solver_file(tmp_path_factory):
    model = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)
    solver = distill(model, SHAPE, levels=NoiseLevels(0.0291675, 14.6146412, convention="ve"),
                     nfe=[4], method="dode", samples=8, validation=4, teacher_steps=12)
    return save_learned_solver(solver, tmp_path_factory.mktemp("fit") / "mix4",
                               metadata={"author": "A. Artist", "license": "CC0-1.0", "description": "test fit"})


def cache_with(tmp_path, files: dict):
    return hub_cache(tmp_path / "cache", REPO, files, COMMIT)


def test_pull_from_the_cache_validates_and_copies(solver_file, tmp_path):
    data = open(solver_file, "rb").read()
    cache = cache_with(tmp_path, {"mix4.safetensors": data})
    dest = tmp_path / "models" / "learned_solvers"
    path = pull_learned_solver(REPO, "mix4.safetensors", str(dest), cache_dir=cache, local_files_only=True)
    assert path == str(dest / "mix4.safetensors") and open(path, "rb").read() == data
    assert load_learned_solver(path).nfes == [4]
    # the same file again is a no-op; a different file of that name gets a numbered name
    assert pull_learned_solver(REPO, "mix4.safetensors", str(dest), cache_dir=cache, local_files_only=True) == path
    (dest / "mix4.safetensors").write_bytes(data[:-8] + b"\1" * 8)
    again = pull_learned_solver(REPO, "mix4.safetensors", str(dest), cache_dir=cache, local_files_only=True)
    assert os.path.basename(again) == "mix4_00001.safetensors"


def test_a_hostile_file_is_refused_and_nothing_lands(tmp_path):
    cache = cache_with(tmp_path, {"evil.safetensors": b"\x80\x04\x95 pickled payload"})
    dest = tmp_path / "dest"
    with pytest.raises(LearnedSolverFileError):
        pull_learned_solver(REPO, "evil.safetensors", str(dest), cache_dir=cache, local_files_only=True)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_offline_without_the_file_says_what_to_do(tmp_path):
    cache = cache_with(tmp_path, {})
    with pytest.raises(SharingError, match="not in the local Hugging Face cache"):
        pull_learned_solver(REPO, "absent.safetensors", str(tmp_path / "dest"), cache_dir=cache,
                            local_files_only=True)
    with pytest.raises(SharingError, match="not a learned-solver file"):
        pull_learned_solver(REPO, "model.ckpt", str(tmp_path / "dest"), cache_dir=cache, local_files_only=True)
    with pytest.raises(SharingError, match="not a valid repository id"):
        pull_learned_solver("not a repo//id", "x.safetensors", str(tmp_path / "dest"), cache_dir=cache,
                            local_files_only=True)


class RecordingApi(HfApi):
    """HfApi with its two network calls recorded; the commit operations are the real ones."""

    def __init__(self, fail=None):
        super().__init__(token="hf_test")
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kwargs):
        if self.fail:
            raise self.fail
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, operations, kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{COMMIT}"})()


def test_push_uploads_the_file_and_a_card_with_its_metadata(solver_file):
    api = RecordingApi()
    url = push_learned_solver(solver_file, REPO, api=api)
    assert url.endswith(COMMIT)
    (_, repo, kwargs), (_, _, operations, _) = api.calls
    assert repo == REPO and kwargs["exist_ok"] is True
    by_name = {op.path_in_repo: op for op in operations}
    assert by_name["mix4.safetensors"].path_or_fileobj == solver_file
    card = by_name["README.md"].path_or_fileobj.decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "learned-solvers" and front["license"] == "cc0-1.0"
    assert front["learned_solver"]["method"] == "dode" and front["learned_solver"]["nfes"] == "4"
    assert "A. Artist" in card and "| 4 | " in card


def test_push_refuses_an_invalid_file_and_explains_refusals(solver_file, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(open(solver_file, "rb").read()[:100])
    api = RecordingApi()
    with pytest.raises(LearnedSolverFileError):
        push_learned_solver(broken, REPO, api=api)
    assert api.calls == []

    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(SharingError, match="HF_HUB_OFFLINE"):
        push_learned_solver(solver_file, REPO, api=RecordingApi(fail=OfflineModeIsEnabled("offline")))


def test_model_card_without_optional_metadata():
    card = model_card({"method": "ld3", "base": "euler", "fits": "{}"}, "x.safetensors")
    assert yaml.safe_load(card.split("---")[1])["learned_solver"]["base"] == "euler"
