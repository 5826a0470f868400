"""jobs/sweep.py's command line: bad inputs end in one line naming the field or file, exit 2, before any trial
starts, with nothing written to --output; --help explains the required flags."""

import pytest

from minigpt_ray import cli


def sweep_main(argv):
    return cli.main(["sweep", *argv])


CASES = {
    "missing model dir": (["--model", "{tmp}/no/model"], "model: ", "does not exist"),
    "sparsity 1.5": (["--sparsities", "0.5,1.5"], "search.sparsities: ", "must be in [0, 1)"),
    "unknown method": (["--methods", "magnitude,random"], "search.methods: ", "'random'"),
    "int4 group 48": (["--group-sizes", "48"], "search.group_sizes: ", "got 48"),
    "empty space": (["--quants", ""], "search.quants: ", "empty search space"),
    "only baseline": (
        ["--methods", "none", "--quants", "none", "--algorithm", "grid"],
        "search: ",
        "only the uncompressed",
    ),
    "pattern vs widths": (["--patterns", "3:5"], "search.patterns: ", "divisible by 5"),
    "group vs widths": (["--group-sizes", "256"], "search.group_sizes: ", "does not divide in_features 64"),
    "block over positions": (["--block-size", "128"], "data.block_size: ", "exceeds the 64 positions"),
    "missing corpus": (["--data", "{tmp}/nope.txt"], "data.sources: ", "nope.txt"),
    "bad objective": (["--objectives", "perplexity,speed"], "search.objectives: ", "speed"),
    "unknown algorithm": (["--algorithm", "random"], "search.algorithm: ", "optuna or grid"),
    "unknown preference": (["--prefer", "cheap"], "winner.prefer: ", "size or speed"),
    "run name a path": (["--run-name", "a/b"], "run_name: ", "no path separators"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(case, tiny_trained, tmp_path, capsys):
    argv, field, detail = CASES[case]
    output = tmp_path / "out"
    base = [
        "--model",
        tiny_trained["dir"],
        "--data",
        "shakespeare",
        "--max-chars-per-source",
        "60000",
        "--block-size",
        "64",
        "--group-sizes",
        "32",
        "--output",
        str(output),
    ]
    assert sweep_main(base + [a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: " + field) and detail in err[0], err[0]
    assert not output.exists()


def test_help_explains_each_required_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in [
        "--model",
        "--data",
        "--output",
        "--config",
        "--num-samples",
        "--methods",
        "--max-ppl",
        "--max-size-mb",
    ]:
        assert flag in text
    assert "NSGA-II" in text and "smallest candidate" in text
