"""Bad input found on the way: one ``error:`` line, exit code 2, no traceback, before slow work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
# The CLI of this checkout (the console script may belong to another install of the package).
CLI = [sys.executable, "-c", "from autocompress.cli.app import run; run()"]
# Cheap settings: a MACs budget needs no latency table, torch target no ONNX export.
FAST = ["--budget", "macs<=60%", "--target", "torch-1t", "--finetune-steps", "1", "--trials", "1"]

RAISES = '''\
def _read(path):
    raise FileNotFoundError(f"no data at {path}")


def make_task():
    return _read("/nowhere/data.npz")
'''


def _error_line(err: str, trail: int = 0) -> str:
    """The only ``error:`` line of ``err``, followed by exactly ``trail`` other lines."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 + trail, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    """Write module ``name`` into ``tmp_path`` and make it importable for this test."""
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_task_factory_that_raises_shows_its_own_frames(tmp_path, monkeypatch, capsys) -> None:
    mod = _module(tmp_path, monkeypatch, "acbad_raises", RAISES)
    rc = main(["search", "--task", f"{mod}:make_task", *FAST, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    line = _error_line(err, trail=2)
    assert f"task factory '{mod}:make_task' raised FileNotFoundError: no data at " in line
    trail = err.strip().splitlines()[1:]
    assert trail[0].endswith("acbad_raises.py line 6, in make_task: return _read(\"/nowhere/data.npz\")")
    assert "acbad_raises.py line 2, in _read" in trail[1]
    assert not any("autocompress" in t for t in trail)  # autocompress's own frames are left out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("body", "expected", "where"),
    [
        ("import json\nVALUE = json.loads('{x')\n", "raised JSONDecodeError",
         "acbad_import.py line 2, in <module>: VALUE = json.loads('{x')"),
        ("import acbad_no_such_dependency\n",
         "raised ModuleNotFoundError: No module named 'acbad_no_such_dependency'",
         "acbad_import.py line 1, in <module>: import acbad_no_such_dependency"),
        ("def make_task(:\n    pass\n", "raised SyntaxError: invalid syntax",
         "acbad_import.py line 1: def make_task(:"),
    ],
    ids=["raises on import", "missing dependency", "syntax error"],
)
def test_task_module_that_fails_to_import(body, expected, where, tmp_path, monkeypatch,
                                          capsys) -> None:
    mod = _module(tmp_path, monkeypatch, "acbad_import", body)
    rc = main(["search", "--task", f"{mod}:make_task", *FAST, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    line = _error_line(err, trail=1)
    assert f"importing module '{mod}' for task '{mod}:make_task' {expected}" in line
    assert err.strip().splitlines()[1].endswith(where)


def test_task_factory_error_in_a_real_process(tmp_path) -> None:
    (tmp_path / "acbad_proc.py").write_text(RAISES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [*CLI, "search", "--task", "acbad_proc:make_task", *FAST, "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr, trail=2)
    assert "task factory 'acbad_proc:make_task' raised FileNotFoundError" in line
    assert proc.stderr.strip().splitlines()[1].startswith("  acbad_proc.py line 6, in make_task")


def _out_cases(tmp_path: Path) -> dict[str, list[str]]:
    """Each command that writes a folder, with ``{out}`` where the folder goes."""
    config = tmp_path / "search.yaml"
    config.write_text("task: digits\nbudget: macs<=60%\ntarget: torch-1t\n")
    policy = tmp_path / "policy.json"
    policy.write_text('{"format": "autocompress.policy", "schema_version": 1, "layers": {}}')
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    return {
        "search": ["search", "--task", "digits", *FAST, "--out", "{out}"],
        "apply": ["apply", "--task", "digits", "--policy", str(policy), "--out", "{out}"],
        "export": ["export", "--storage", str(tmp_path / "none.log"), "--out", "{out}"],
        "worker": ["worker", "--storage", db, "--config", str(config), "--out", "{out}"],
    }


@pytest.mark.parametrize("command", ["search", "apply", "export", "worker"])
@pytest.mark.parametrize("under", [False, True], ids=["file", "under a file"])
def test_out_naming_a_file(command: str, under: bool, tmp_path, capsys) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder\n")
    out = taken / "run" if under else taken
    argv = [a.replace("{out}", str(out)) for a in _out_cases(tmp_path)[command]]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    where = f"lies under {str(taken)!r}, which is a file" if under else "is a file"
    assert f"--out {str(out)!r} {where}; expected a folder" in line
    assert taken.read_text() == "not a folder\n"
    assert not (tmp_path / "none.log").exists()  # export failed before it opened the storage


def test_out_from_a_config_file_naming_a_file(tmp_path, capsys) -> None:
    config = tmp_path / "search.yaml"
    config.write_text(f"task: digits\nout: {tmp_path / 'search.yaml'}\n")
    assert main(["search", "--config", str(config)]) == 2
    assert f"out {str(config)!r} is a file" in _error_line(capsys.readouterr().err)


SCHEMES = "postgresql://, postgres://, mysql://, sqlite://"


@pytest.mark.parametrize("command", ["search", "worker", "export"])
def test_storage_with_an_unknown_scheme(command: str, tmp_path, capsys) -> None:
    argv = {
        "search": ["search", "--task", "digits", *FAST, "--out", str(tmp_path / "o")],
        "worker": ["worker", "--study", "s"],
        "export": ["export", "--out", str(tmp_path / "o")],
    }[command]
    assert main([*argv, "--storage", "foo://bar"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"storage 'foo://bar' is not a database URL this version knows ({SCHEMES}" in line
    assert "give e.g. postgresql://user:pass@host:5432/db or results/run/study.log" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("under", [False, True], ids=["folder", "under a file"])
def test_storage_path_that_cannot_be_a_journal_file(under: bool, tmp_path, capsys) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("")
    storage = str(taken / "study.log") if under else str(tmp_path)
    argv = ["search", "--task", "digits", *FAST, "--out", str(tmp_path / "o")]
    assert main([*argv, "--storage", storage]) == 2
    line = _error_line(capsys.readouterr().err)
    if under:
        assert f"--storage {storage!r} lies under {str(taken)!r}, which is a file" in line
    else:
        assert f"--storage {storage!r} is a folder; expected a journal file path" in line
    assert not (tmp_path / "o").exists()


def test_storage_for_opens_a_journal_path_and_rejects_unknown_schemes(tmp_path) -> None:
    from optuna.storages import JournalStorage

    from autocompress.engine.storage import storage_for
    from autocompress.errors import ConfigError

    assert isinstance(storage_for(tmp_path, str(tmp_path / "runs" / "study.log")), JournalStorage)
    with pytest.raises(ConfigError, match="storage 'foo://bar' is not a database URL"):
        storage_for(tmp_path, "foo://bar")
