"""The example workflows are well-formed graphs that use the pack's nodes."""

import json
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1] / "example_workflows"
FILES = sorted(FOLDER.glob("*.json"))


def test_there_are_both_examples():
    assert {f.stem for f in FILES} >= {"distill_then_sample", "load_shared_solver_then_sample"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_links_join_existing_sockets_of_the_same_type(path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert any(node["type"].startswith("LS") for node in nodes.values())
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        assert nodes[source]["outputs"][source_slot]["type"] == kind
        assert link_id in nodes[source]["outputs"][source_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["type"] == kind
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    for node in nodes.values():  # every input is connected
        assert all(socket["link"] is not None for socket in node["inputs"]), node["type"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_thumbnail_was_drawn_from_the_workflow_as_it_is(path):
    """``tests/workflow_thumbnails.py`` draws the template thumbnails in ComfyUI's page and records
    the workflow each was drawn from; a workflow changed since needs its thumbnail drawn again."""
    from workflow_thumbnails import RECORD, workflow_digest

    assert (FOLDER / f"{path.stem}.jpg").is_file()
    drawn_from = json.loads(RECORD.read_text()).get(path.stem)
    assert drawn_from == workflow_digest(path), (
        f"{path.name} changed after its thumbnail was drawn: run COMFYUI_PATH=... python tests/workflow_thumbnails.py")
