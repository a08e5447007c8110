"""Every shell command the docs show works: each is run on tiny data or, when it needs a GPU or
hours, at least composed. A new command in the docs is checked without a new test.

How a page's commands are read (`doc_commands`):
- only fenced ```bash blocks of README.md and docs/*.md count; inline `code` is prose;
- a line ending in `\\` continues on the next; `#` starts a comment (outside quotes);
- `NAME=value` alone on a line sets a variable for the block's later lines (`$NAME`, `${NAME}`);
  `NAME=value command ...` sets an environment variable of that command only.

How a command is made to run here (`rewrite`), mechanically:
- it runs in a fresh temporary directory, with `BRAINSEG_DATA_DIR` and `BRAINSEG_OUTPUT_DIR`
  inside it and W&B offline, so relative outputs (`multirun/cpu-24`, `runs/cut`) land there;
- the real data set (`../shared/datasets/...`), `$ROOT` and `DIR` become a tiny folder data set
  of synthetic slices; `scans/` a folder of a few of its slices (PNG and figshare .mat);
- placeholders become real things (`PLACEHOLDERS`): `<run>` a smoke run's folder, `<sweep>` and
  `multirun/<date>/<time>` a sweep's, `<overrides>` the smoke preset; an unknown one fails;
- `benchmarks/...`, `docs/...` are the repository's files, whatever the directory.

What is done with it (`check`), by its program:
- `brainseg-train` / `python -m brainseg.train`: every job of the sweep is composed and resolved
  (as `--cfg job` would); a command on the smoke preset also runs (marked slow when it is
  a sweep of several jobs);
- slow (`is_slow`): sweeps of several smoke jobs, and the export, the FLOPs listing and the
  W&B dashboard (15-30 s each; their own fast tests cover them);
- `brainseg-predict`, `brainseg-export`, `brainseg-data info|verify`, `brainseg-report`,
  `python -m brainseg.models`: run (a report over a sweep the block composed but did not run
  reads a small fake sweep put in its place); `brainseg-data prepare` (a download): composed;
- any other `python -m brainseg.<module>` and `python benchmarks/<script>.py`: `--help`, after
  parsing the command's own arguments;
- `make <target>`: `make -n` (the recipe, not run), and each brainseg command of the recipe is
  checked as above; `pip install -e ".[extra]"`: the extras exist; `eval "$(... -sc install=bash)"`:
  the completion script is produced; `wandb sync`: the CLI answers `--help`.
Anything else fails with what to do: add a rule to `check`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tomllib
from omegaconf import OmegaConf

from .conftest import REPO_ROOT, load_benchmark
from .fake_sweep import make_sweep

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
REAL_DATA_TEXT = "../shared/datasets/figshare-brain-tumor-png256"
# Placeholders of the docs and what stands for them here (filled in by the fixtures).
PLACEHOLDERS = {
    "multirun/<date>/<time>": "{sweep}",
    "<sweep>": "{sweep}",
    "<other_sweep>": "{other_sweep}",
    "<my_configs>": "{my_configs}",
    "<run>": "{run}",
    "<run_dir>": "{run}",
    "<same overrides>": "experiment=smoke",
    "<overrides>": "experiment=smoke",
    "<entity>": "nobody",
}
HYDRA_CLIS = {"train": "train", "predict": "predict", "export": "export"}
TIMEOUT = 300


@dataclass
class DocCommand:
    """One command of a page: its words (variables expanded) and environment prefix."""

    page: str
    line: int
    text: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text.replace("<", "\\<"))  # placeholders are not redirections

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def logical_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """(line number, text) of each command: continuations joined, comments and blanks dropped."""
    out, pending, start = [], "", first_line
    for offset, raw in enumerate(block.splitlines()):
        if not pending:
            start = first_line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text = " ".join(shlex.split(pending + raw, comments=True, posix=False))
        pending = ""
        if text:
            out.append((start, text))
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by the block's variables; others left as they are."""
    return re.sub(
        r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), text
    )


ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
ENV_PREFIX = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S+)\s+")


def doc_commands(page: Path) -> list[DocCommand]:
    """The commands of the ```bash blocks of `page`, in order."""
    text = page.read_text()
    name = page.relative_to(REPO_ROOT).as_posix()
    commands = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        first = text[: block.start()].count("\n") + 2
        variables: dict[str, str] = {}
        for line, command in logical_lines(block.group(1), first):
            expanded = expand(command, variables)
            words = shlex.split(expanded)
            if len(words) == 1 and ASSIGNMENT.match(words[0]):
                key, value = ASSIGNMENT.match(words[0]).groups()
                variables[key] = value
                continue
            env = {}
            while prefix := ENV_PREFIX.match(expanded):
                env[prefix.group(1)] = prefix.group(2)
                expanded = expanded[prefix.end() :]
            commands.append(DocCommand(name, line, expanded, env))
    return commands


ALL = [command for page in PAGES for command in doc_commands(page)]


def is_slow(command: DocCommand) -> bool:
    """A run of several smoke jobs (a minute or more on a busy 2-core machine), or one of the
    commands that take 15-30 s there and have fast tests of their own: the ONNX export
    (test_export), the networks' FLOPs listing (test_models), the W&B dashboard (test_wandb)."""
    words = command.words
    if words[:2] == ["make", "smoke"] or "--dashboard" in words:
        return True
    if program(words)[0] in ("export", "models"):
        return True
    sweep = "-m" in words and any("," in w or "range(" in w for w in words if "=" in w)
    return "experiment=smoke" in words and sweep


def params() -> list:
    return [
        pytest.param(
            command,
            marks=[pytest.mark.slow] if is_slow(command) else [],
            id=f"{command.page}:{command.line}",
        )
        for command in ALL
    ]


# --- the tiny things that stand in for data, runs and sweeps --------------------------------


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    """A tiny folder data set, a smoke run and a fake sweep, shared by the module's commands."""
    from brainseg.config import compose
    from brainseg.data.synthetic import SyntheticSource
    from brainseg.train import train

    base = tmp_path_factory.mktemp("doc_commands")
    data = write_folder_data(base / "tiny", SyntheticSource(24, 8, 64))
    run = base / "run"
    train(
        compose(
            [
                "experiment=smoke",
                "model=unet",
                "trainer.max_epochs=1",
                f"paths.output_dir={run}",
                f"paths.data_dir={base / 'data'}",
            ]
        )
    )
    sweep = make_sweep(base / "sweep", n_images=12, n_patients=4)
    other_sweep = make_sweep(base / "other_sweep", n_images=12, n_patients=4, epochs=5)
    wandb_sweep = make_sweep(base / "wandb_sweep", n_images=12, n_patients=4, wandb=True)
    return {
        "my_configs": documented_configs(base / "my_configs"),
        "data": data,
        "run": run,
        "sweep": sweep,
        "other_sweep": other_sweep,
        "wandb_sweep": wandb_sweep,
    }


def documented_configs(root: Path) -> Path:
    """A config folder holding every yaml block of the docs that names its place in one
    (`# my_configs/<group>/<name>.yaml` on its first line), as a reader would write it."""
    for page in PAGES:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            first = block.splitlines()[0]
            if first.startswith("# my_configs/"):
                path = root / first.removeprefix("# my_configs/").strip()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block)
    return root


def write_folder_data(root: Path, source) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["sample_id,pid,label"]
    for i, (image, mask, meta) in enumerate(source):
        grey = (255 * (image - image.min()) / max(np.ptp(image), 1e-6)).astype(np.uint8)
        Image.fromarray(grey).save(root / "images" / f"{i}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
        rows.append(f"{i},{meta['pid'] or f'P{i}'},{meta['label'] or 1}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def scans(workdir: Path, data: Path) -> None:
    """`scans/`: three PNG slices and one figshare .mat slice."""
    from .data.datafiles import write_mat

    (workdir / "scans").mkdir(exist_ok=True)
    for i in range(3):
        shutil.copy(data / "images" / f"{i}.png", workdir / "scans" / f"{i}.png")
    image = np.asarray(__import__("PIL.Image").Image.open(data / "images" / "3.png"))
    write_mat(workdir / "scans" / "3.mat", image.astype(np.int16), np.zeros_like(image))


# --- rewriting a command to run here ---------------------------------------------------------


def rewrite(command: DocCommand, stand_ins: dict[str, Path], workdir: Path) -> list[str]:
    """The command's words with data, placeholders and repository paths made real here."""
    text = command.text
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value.format(**{k: str(v) for k, v in stand_ins.items()}))
    unknown = re.findall(r"<[a-z_ ]+>", text)
    assert not unknown, (
        f"{command}: placeholder {unknown[0]} has no stand-in; add it to PLACEHOLDERS in "
        "tests/test_doc_commands.py, or write the command without it"
    )
    text = text.replace("ckpt_path=...", f"ckpt_path={stand_ins['run']}/checkpoints/best.ckpt")
    words = []
    for word in shlex.split(text):
        word = word.replace(REAL_DATA_TEXT, str(stand_ins["data"]))
        word = re.sub(r"(?<=data\.root=)(DIR|\$ROOT)$", str(stand_ins["data"]), word)
        if word in ("$ROOT", "DIR"):
            word = str(stand_ins["data"])
        if re.match(r"^(benchmarks|docs)/", word) and not word.startswith("docs/results/*"):
            word = str(REPO_ROOT / word)
        words.append(word)
    if any(w.startswith("input=scans") for w in words):
        scans(workdir, stand_ins["data"])
    return words


def environment(workdir: Path, command: DocCommand) -> dict[str, str]:
    return {
        **os.environ,
        **command.env,
        "PYTHONPATH": str(REPO_ROOT),
        "BRAINSEG_DATA_DIR": str(workdir / "data"),
        "BRAINSEG_OUTPUT_DIR": str(workdir / "out"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }


def run(words: list[str], workdir: Path, command: DocCommand) -> str:
    result = subprocess.run(
        words,
        cwd=workdir,
        env=environment(workdir, command),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, (
        f"{command}\nran as: {shlex.join(words)}\nexit {result.returncode}\n"
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


# --- checking each kind of command -----------------------------------------------------------


def program(words: list[str]) -> tuple[str, list[str]]:
    """("train", args) for `brainseg-train ...` and `python -m brainseg.train ...`, ("script",
    [path, *args]) for `python benchmarks/x.py`, else (first word, rest)."""
    if words[0].startswith("brainseg-"):
        return words[0].removeprefix("brainseg-"), words[1:]
    if words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m":
        module = words[2]
        if module.startswith("brainseg."):
            return module.removeprefix("brainseg."), words[3:]
    if words[0] in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        return "script", words[1:]
    return words[0], words[1:]


def check(command: DocCommand, words: list[str], stand_ins: dict, workdir: Path) -> None:
    name, args = program(words)
    python = [sys.executable, "-m"]
    if name == "train":
        compose_jobs(command, "train", args, workdir)
        if "experiment=smoke" in args:
            run([*python, "brainseg.train", *args], workdir, command)
    elif name in ("predict", "export"):
        if "--cfg" not in args:
            run([*python, f"brainseg.{name}", *args], workdir, command)
    elif name == "data":
        if args[0] == "prepare":  # the figshare download: composing is all CI can do
            compose_jobs(command, "train", args[1:], workdir)
        else:
            run([*python, "brainseg.data", *args], workdir, command)
    elif name == "report":
        sweep = Path(workdir, args[0])
        if "--dashboard" in args and sweep == stand_ins["sweep"]:
            args = [str(stand_ins["wandb_sweep"]), *args[1:]]  # a dashboard needs W&B runs
        elif not sweep.exists():  # made by a command the block only composed
            shutil.copytree(stand_ins["sweep"], sweep)
        run([*python, "brainseg.report", *args], workdir, command)
    elif name == "models":
        run([*python, "brainseg.models", *args], workdir, command)
    elif name == "script":
        script_help(command, Path(args[0]), args[1:])
    elif words[0] in ("python", "python3") and words[1:2] == ["-m"]:
        run([*python, *words[2:], "--help"], workdir, command)
    elif name == "make":
        check_make(command, args, stand_ins, workdir)
    elif name == "pip":
        check_pip(command, args)
    elif name == "eval":
        inner = shlex.split(re.fullmatch(r"\$\((.*)\)", args[0]).group(1))
        out = run([*python, f"brainseg.{program(inner)[0]}", *inner[1:]], workdir, command)
        assert "complete" in out, f"{command}: no completion script in:\n{out[:500]}"
    elif name == "wandb":
        run([*python, "wandb", args[0], "--help"], workdir, command)
    else:
        pytest.fail(
            f"{command}\ntests/test_doc_commands.py does not know how to check `{name}`: add a "
            "rule to `check` there (run it on tiny data, or compose it when it needs a GPU or "
            "hours), or show the command outside a ```bash block if it is not meant to be run"
        )


def script_help(command: DocCommand, path: Path, args: list[str]) -> None:
    """`<script> <args> --help`, in this process (torch is loaded once): the arguments parse."""
    assert path.is_file(), f"{command}: no such script {path}"
    assert path.parent == REPO_ROOT / "benchmarks", f"{command}: only benchmarks/ scripts are known"
    module = load_benchmark(path.stem)
    argv = sys.argv
    sys.argv = [str(path), *args, "--help"]
    try:
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
            module.main()
    finally:
        sys.argv = argv
    assert exit_info.value.code in (0, None), f"{command}: --help exited {exit_info.value.code}"


def compose_jobs(command: DocCommand, config_name: str, args: list[str], workdir: Path) -> None:
    """Composes and resolves every job of the command's sweep, as `--cfg job` would."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from brainseg.config import compose, prepare_run_config

    overrides = [a for a in args if a not in ("-m", "--multirun") and not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    for job in batches[0]:
        try:
            cfg = compose([*job, f"paths.output_dir={workdir / 'out' / 'job'}"], config_name)
            prepare_run_config(cfg)
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except Exception as error:  # noqa: BLE001  (the message names the command)
            pytest.fail(f"{command}\nthe job {job} does not compose: {error}")


def check_make(command: DocCommand, args: list[str], stand_ins: dict, workdir: Path) -> None:
    """`make -n` prints the recipe; its brainseg commands are checked like the docs' own."""
    env_dir = workdir / "env"
    (env_dir / "bin").mkdir(parents=True, exist_ok=True)
    (env_dir / ".brainseg-installed").touch()  # newer than pyproject.toml: no install step
    words = ["make", "-n", "-s", "-C", str(REPO_ROOT), f"ENV_DIR={env_dir}", *args]
    recipe = run(words, workdir, command)
    python = f"{env_dir}/bin/python"
    for line in recipe.splitlines():
        line = line.replace(python, "python").strip()
        sub = program(shlex.split(line)) if line else ("", [])
        if sub[0] in ("train", "report", "script", "models", "data", "predict", "export"):
            inner = DocCommand(command.page, command.line, line, command.env)
            check(inner, rewrite(inner, stand_ins, workdir), stand_ins, workdir)


def check_pip(command: DocCommand, args: list[str]) -> None:
    assert args[:2] == ["install", "-e"], f"{command}: only `pip install -e .[extras]` is known"
    extras = re.fullmatch(r"\.(?:\[(.*)\])?", args[2]).group(1) or ""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    known = pyproject["project"]["optional-dependencies"]
    for extra in filter(None, extras.split(",")):
        assert extra in known, f"{command}: pyproject.toml has no extra [{extra}]"


# --- the tests -------------------------------------------------------------------------------


def test_the_docs_show_commands_of_every_kind():
    """The collection itself: a change in how pages are read would otherwise pass silently."""
    assert len(ALL) > 40
    texts = [c.text for c in ALL]
    assert any(t.startswith("make smoke") for t in texts)
    # a continued line joined, its comment dropped
    assert any("seed=0,1,2 logger=csv hydra.sweep.dir=multirun/cpu-24" in t for t in texts)
    assert not any("#" in t and "seed" not in t for t in texts if t.startswith("make "))
    # a block variable expanded, an environment prefix split off
    converge = [c for c in ALL if "converge-unet" in c.text and "train" in c.text]
    assert converge and converge[0].env == {"OMP_NUM_THREADS": "1"}
    assert "trainer.max_epochs=30" in converge[0].text


@pytest.mark.parametrize("command", params())
def test_doc_command_works(command, stand_ins, tmp_path):
    words = rewrite(command, stand_ins, tmp_path)
    check(command, words, stand_ins, tmp_path)
