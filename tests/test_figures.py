"""Figures for a paper: `report` and `compare` write vector figures a reader opens (PDF, SVG), the
means they print and plot leave the warm-up round out and say so, and the flags refuse bad input.
All in this process, on a copy of a stored CKKS run (tests/data/v1-run: 2 rounds, models saved)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pypdf import PdfReader

import main
from hefl.control.sweep import label
from hefl.errors import HeflError
from hefl.records import RunSummary
from hefl.results.claims import plot_compare
from hefl.results.compare import relabel
from hefl.results.options import FigureOptions
from hefl.results.plots import FIGURES, plot_run
from hefl.results.report import summary_lines
from hefl.results.summary import summarize
from hefl.results.warmup import left_out, skipped, which
from tests.helpers import DATA

V1_RUN = DATA / "v1-run"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A copy of the stored run, in a folder named like a run of today."""
    exp = tmp_path / "digits-mlp-20261207-000000-abcd"
    shutil.copytree(V1_RUN, exp)
    return exp


@pytest.fixture
def draft(tmp_path: Path) -> str:
    """A style over hefl's that makes PNGs at screen resolution: quicker, and a --style to use."""
    path = tmp_path / "draft.mplstyle"
    path.write_text("savefig.dpi: 30\n")
    return str(path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`main.py ARGV` in this process (no Python started): what it printed."""
    args = main._parser().parse_args(list(argv))
    assert args.func(args) == 0
    return capsys.readouterr().out


def pdf_text(path: Path) -> str:
    reader = PdfReader(path)
    assert len(reader.pages) == 1
    return " ".join(page.extract_text() for page in reader.pages)


def svg_text(path: Path) -> list[str]:
    """Every piece of text in an SVG, parsed as XML (text stays text: svg.fonttype none)."""
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return ["".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text")]


def test_report_writes_pdfs_a_reader_opens_and_leaves_warm_up_out_of_its_means(
    run: Path, draft: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "report", str(run), "--format", "pdf", "--style", draft)
    for name in FIGURES:
        assert (run / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = pdf_text(run / f"{name}.pdf")
        assert run.name not in text and "v1-log" not in text  # no experiment-id titles
        assert not (run / f"{name}.svg").exists()
    legend = pdf_text(run / "bytes.pdf")
    for word in ("client", "switch", "aggregator", "sent", "received"):  # the role legend
        assert word in legend
    assert "round 1 left out: warm-up" in legend
    assert "HE error" in pdf_text(run / "accuracy.pdf")  # the run saved its models
    lines = out.splitlines()
    (first,) = [x for x in lines if x.lstrip().startswith("1 ")]
    (second,) = [x for x in lines if x.lstrip().startswith("2 ")]
    assert first.endswith("(warm-up: not in the means)") and "warm-up" not in second
    (means,) = [x for x in lines if x.startswith("mean per round")]
    assert means.startswith("mean per round over round 2 (round 1 left out: warm-up): ")
    assert "wrote" in lines[-1] and "(png, pdf)" in lines[-1]
    # summary.json keeps every round, and its totals count them all
    summary = json.loads((run / "summary.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1]
    assert summary["totals"]["bytes_on_wire"] == sum(r["bytes_on_wire"] for r in summary["rounds"])
    second_round = summary["rounds"][1]
    assert f"{second_round['round_s']:.3f} s" in means


def test_skip_rounds_0_counts_every_round_and_svgs_are_the_same_bytes_again(
    run: Path, draft: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("report", str(run), "--skip-rounds", "0", "--format", "svg", "--style", draft)
    out = cli(capsys, *argv)
    assert "mean per round over all 2 rounds: " in out and "warm-up" not in out
    assert any("all 2 rounds" in t for t in svg_text(run / "bytes.svg"))
    assert not any("warm-up" in t for t in svg_text(run / "critical_path.svg"))
    # no date, version or random id in a file: the same summary gives the same bytes
    first = {name: (run / f"{name}.svg").read_bytes() for name in FIGURES}
    for name in FIGURES:
        (run / f"{name}.svg").unlink()
    cli(capsys, *argv)
    assert {name: (run / f"{name}.svg").read_bytes() for name in FIGURES} == first


def test_compare_writes_svgs_a_reader_parses_one_per_claim(
    run: Path, tmp_path: Path, draft: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "digits-mlp-20261207-000001-ef01"
    shutil.copytree(run, other)
    config = json.loads((other / "config.json").read_text())
    config["training"]["lr"] = 0.1  # another experiment: a group of its own
    (other / "config.json").write_text(json.dumps(config))
    out_dir = tmp_path / "cmp"
    args = ["compare", str(run), str(other), "--out", str(out_dir), "--format", "svg"]
    args += ["--style", draft]
    out = cli(capsys, *args, "--label", "baseline", "--label", "faster lr")
    assert out.splitlines()[1].startswith("baseline ") and "each run's round 1 left out" in out
    claims = ("compare-accuracy", "compare-overhead", "compare-hops")
    for name in claims:
        assert (out_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert not (out_dir / f"{name}.pdf").exists()
    assert not (out_dir / "compare-links.svg").exists()  # no link rate recorded
    accuracy = svg_text(out_dir / "compare-accuracy.svg")
    assert {"baseline", "faster lr", "HE error (max)", "round"} <= set(accuracy)
    assert {"up client→switch", "up switch→aggregator", "down switch→client", "metrics"} <= set(
        svg_text(out_dir / "compare-hops.svg")
    )
    overhead = svg_text(out_dir / "compare-overhead.svg")
    assert {"x1.00", "training", "crypto", "transfer"} <= set(overhead)
    rows = json.loads((out_dir / "compare.json").read_text())
    assert rows[0]["rounds_left_out"]["mean"] == 1 and rows[0]["rounds"]["mean"] == 2
    # runs of the virtual cluster at two link rates: the round time against the rate
    for folder, rate in ((run, "10mbit"), (other, "1gbit")):
        (folder / "vcluster").mkdir()
        (folder / "vcluster" / "links.json").write_text(json.dumps({"rate": rate}))
    out = cli(capsys, *args)
    assert "ckks, adding, 10mbit" in out and "ckks, adding, 1gbit" in out
    links = svg_text(out_dir / "compare-links.svg")
    assert {"link rate (Mbit/s)", "ckks, adding", "10", "1000"} <= set(links)


def test_size_and_style_are_options_and_a_phase_never_spent_is_left_out(
    run: Path, tmp_path: Path, draft: str
) -> None:
    """--size and --style reach every figure (no size or font set per call); a phase no role
    spent time in is in neither the bars nor the legend."""
    summary = summarize(run)
    rounds = tuple(
        dataclasses.replace(
            row, phases_by_role={r: {**p, "decrypt": 0.0} for r, p in row.phases_by_role.items()}
        )
        for row in summary.rounds
    )
    summary = dataclasses.replace(summary, rounds=rounds)
    big_letters = tmp_path / "big.mplstyle"
    big_letters.write_text("font.size: 20\naxes.labelsize: 20\nsavefig.dpi: 30\n")
    widths, sizes = [], []
    for options in (
        FigureOptions(("png", "svg"), size=(3.5, 2.4), style=draft),
        FigureOptions(("png", "svg"), size=(8.0, 5.0), style=str(big_letters)),
    ):
        out = tmp_path / str(len(widths))
        out.mkdir()
        plot_run(summary, out, options)
        root = ET.parse(out / "critical_path.svg").getroot()
        widths.append(float(root.attrib["width"].removesuffix("pt")))
        label = next(
            el for el in root.iter("{http://www.w3.org/2000/svg}text") if el.text == "round"
        )
        sizes.append(label.attrib["style"])
        phases = svg_text(out / "phases.svg")
        assert "train" in phases and "encrypt" in phases and "decrypt" not in phases
    assert widths[0] < 3.5 * 72 < 8.0 * 72 * 0.8 < widths[1]
    assert "9px" in sizes[0] and "20px" in sizes[1]


def test_a_run_with_no_round_completed_still_gets_its_figures(tmp_path: Path, draft: str) -> None:
    """A run that failed in round 1: empty figures, no warning (an empty legend is not drawn)."""
    empty = RunSummary(experiment="x", scheme="ckks")
    options = FigureOptions(style=draft)
    assert len(plot_run(empty, tmp_path, options)) == len(FIGURES)
    paths = plot_compare(["a"], [{"link_rate": None}], [[empty]], tmp_path, options)
    assert [p.name for p in paths] == [f"compare-{c}.png" for c in ("accuracy", "overhead", "hops")]
    assert summary_lines(empty)[-1] == "total: no round completed"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["--format", "jpg"],
            "argument --format: unknown format 'jpg' (choose from png, pdf, svg)",
        ),
        (["--size", "3"], "argument --size: '3' is not WIDTH,HEIGHT in inches"),
        (["--size", "0,2"], "argument --size: width and height must be in (0, 40] inches"),
        (["--skip-rounds", "-1"], "argument --skip-rounds: must be at least 0, got -1"),
        (["--skip-rounds", "x"], "argument --skip-rounds: 'x' is not a whole number"),
        (["--style", "no-such-style"], "'no-such-style' is neither a file nor a matplotlib style"),
    ],
)
@pytest.mark.parametrize("command", ["report", "compare"])
def test_a_bad_figure_flag_is_one_line(
    command: str, argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main._parser().parse_args([command, "log/x", *argv])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"main.py {command}: error: ") and words in last


def test_labels_must_name_every_group_in_order() -> None:
    groups = [("ckks, adding", [Path("a")]), ("none, adding", [Path("b")])]
    assert relabel(groups, []) == groups
    assert relabel(groups, ["HE", "plain"]) == [("HE", [Path("a")]), ("plain", [Path("b")])]
    with pytest.raises(
        HeflError, match=r"1 --label given for 2 group\(s\) of runs \(ckks, adding; none"
    ):
        relabel(groups, ["HE"])


def test_warm_up_rounds_left_out_and_said() -> None:
    assert [skipped(n) for n in (0, 1, 2, 10)] == [0, 0, 1, 1]
    assert skipped(10, 0) == 0 and skipped(3, 5) == 2  # never every round
    assert which(list(range(10))) == "rounds 2-10 (round 1 left out: warm-up)"
    assert which(list(range(10)), 3) == "rounds 4-10 (rounds 1-3 left out: warm-up)"
    assert which([0]) == "its only round" and which([0, 1], 0) == "all 2 rounds"
    assert left_out() == "each run's round 1 left out (warm-up)"
    assert left_out(0) == "every round counted"


def test_a_sweep_label_names_only_the_grid_keys_that_vary() -> None:
    grid = {"encryption.scheme": ["none", "ckks"], "training.save_models": [True]}
    values = {"encryption.scheme": "ckks", "training.save_models": True}
    assert label(values, grid) == "scheme=ckks"
    assert label(values, {k: [v] for k, v in values.items()}) == (
        "scheme=ckks, save_models=true"  # one cell: nothing varies, every key names it
    )
    two = {"a.lr": [1, 2], "b.lr": [3, 4]}  # the same last part: the whole key
    assert label({"a.lr": 1, "b.lr": 3}, two) == "a.lr=1, b.lr=3"
