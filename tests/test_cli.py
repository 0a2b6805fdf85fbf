"""The command line's checks, help and progress: bad values end in one line before any long
work, every option explains itself, and progress reads well on a terminal and in a file."""

import io

import pytest

import learned_solvers.__main__ as cli
from learned_solvers.schedules.plot import colour

PRESET = str(cli.__file__).replace("__main__.py", "schedules/presets/test_unet_nfe4.safetensors")


@pytest.fixture()
def no_fit(monkeypatch):
    """Fail the test if the demo's fit starts: the checks must come first."""
    monkeypatch.setattr(cli, "demo", lambda *a, **k: pytest.fail("the demo started before its options were checked"))


@pytest.mark.parametrize("argv, message", [
    (["export", PRESET, "--steps", "0"], "--steps: 0 is outside 1..1000"),
    (["export", PRESET, "--denoise", "0"], "--denoise: 0.0 must be in (0, 1]"),
    (["inspect", PRESET, "--png", "/no/such/dir/x.png"], "/no/such/dir does not exist"),
    (["demo", "--out", "/no/such/dir/x.png"], "/no/such/dir does not exist"),
    (["demo", "--save", "/no/such/dir/x.safetensors"], "/no/such/dir does not exist"),
    (["demo", "--nfe", "100"], "--nfe: 100 is outside 2..20"),
    (["demo", "--nfe", "1"], "--nfe: 1 is outside 2..20"),
    (["compare", "--nfe", "0"], "--nfe: 0 is outside 2..100"),
    (["compare", "--model", "sd99"], "invalid choice"),
])
def test_bad_values_are_refused_in_one_line_before_any_work(argv, message, no_fit, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_swapped_sigma_range_is_refused(capsys):
    assert cli.main(["export", PRESET, "--sigma-range", "14.6", "0.03"]) == 1
    assert "0 < MIN < MAX" in capsys.readouterr().err


def test_export_without_steps_gives_the_first_fitted_grid(capsys):
    assert cli.main(["export", PRESET]) == 0
    assert len(capsys.readouterr().out.split(",")) == 5


def test_every_option_of_every_command_has_help_and_the_help_has_no_markup():
    parser = cli.build_parser()
    assert "``" not in parser.format_help()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert set(commands.choices) == set(cli.COMMANDS)
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help text"
        assert "``" not in sub.format_help(), name


def test_progress_written_to_a_file_is_lines_without_nan_or_carriage_returns():
    out = io.StringIO()
    progress = cli.Progress(out)
    nan = float("nan")
    progress(1, 23, nan, nan, nan)  # no model call timed yet: no estimate
    for step in range(2, 4):
        progress(step, 23, nan, nan, 100.0)  # teacher batches
    for step in range(4, 24):
        progress(step, 23, 0.5 / step, 0.1, 5.0 * (23 - step))
    text = out.getvalue()
    assert "\r" not in text and "nan" not in text.lower()
    lines = text.splitlines()
    assert lines[0].startswith("  teacher run: batch 1")
    assert 3 <= len(lines) <= 13 and lines[-1].startswith("  fitting 23/23")
    assert "left" not in lines[0]  # nothing timed yet: no guess
    assert "about 2 min left" in next(line for line in lines if line.startswith("  fitting"))  # 95 s, rounded


def test_a_schedule_keeps_its_colour_in_every_picture():
    # the demo drew (learned, karras, ays, exponential), inspect (learned, karras, exponential, ays)
    assert colour("ays", 2) == colour("ays (SD1.5)", 3)
    assert colour("exponential", 3) == colour("exponential", 2)
    assert len({colour(n, i) for i, n in enumerate(["learned (auto)", "karras", "exponential", "ays"])}) == 4


def test_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.1, 1.0, 1.0))  # another job holds a core
    assert cli.pick_threads() == 1
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.1, 0.2, 0.2))
    assert cli.pick_threads() == 2
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert cli.pick_threads() == 1
    assert cli.pick_threads(3) == 3


def test_compare_ranks_a_file_against_every_built_in_pair_and_draws_them(tmp_path, capsys):
    png = tmp_path / "compare.png"
    assert cli.main(["--threads", "1", "compare", "--model", "mixture", "--nfe", "4", "--seeds", "4",
                     "--solver", PRESET, "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "residual" in text and "learned (" in text and "<- winner" in text
    assert sum(" + " in line for line in text.splitlines()) >= 6 * 5  # every base x every built-in schedule
    from PIL import Image

    with Image.open(png) as picture:  # teacher, the learned solver and three built-ins, 4 seeds each
        assert picture.height >= 5 * 128 and picture.width >= 4 * 128
