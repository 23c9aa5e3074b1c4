"""Every training option is declared once (captioning.training.options): the command line, the fit loop, SCST and
the Train page's fine-tunes read its default, and its range is one rule wherever a value is checked."""
import ast
import dataclasses
from pathlib import Path

import pytest

import train
from captioning.training import options
from captioning.training.fit import TrainConfig
from captioning.training.jobs import FinetuneSettings
from captioning.training.options import OPTION
from captioning.training.scst import SCSTConfig
from captioning.training.settings import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
RECORDS = {TrainConfig: "train", SCSTConfig: "scst"}


def settings_fields():
    return [f for section in SECTIONS for f in dataclasses.fields(section) if "declared" in f.metadata]


def test_every_settings_field_of_a_declared_option_takes_its_default_and_help_from_the_declaration():
    found = {f.metadata["declared"]: f for f in settings_fields()}
    assert set(found) == {o.name for o in options.OPTIONS if o.flag}       # every offered option has its flag
    for name, f in found.items():
        option = OPTION[name]
        assert f.name == name and f.default == option.cli_default and f.metadata["help"] == option.help_text()
        if option.kind in (int, float):
            assert f.metadata["type"] is option.kind


def test_the_records_the_fit_loop_and_scst_read_default_to_the_declaration_for_their_command():
    for record, command in RECORDS.items():
        for f in dataclasses.fields(record):
            assert f.metadata.get("declared") == f.name, f"{record.__name__}.{f.name} is not a declared option"
            assert f.default == OPTION[f.name].value_for(command), f"{record.__name__}.{f.name}"


def _literal_defaults(path: Path) -> list[str]:
    """``name: type = <constant>`` in a class body where ``name`` is a declared training option: a second default."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and item.target.id in OPTION and isinstance(item.value, (ast.Constant, ast.UnaryOp))):
                    found.append(f"{path.name}:{item.lineno} {node.name}.{item.target.id}")
    return found


def test_no_module_of_the_training_package_declares_a_training_default_again():
    found = [hit for path in sorted((ROOT / "captioning" / "training").rglob("*.py")) if path.name != "options.py"
             for hit in _literal_defaults(path)]
    assert found == []


def test_the_check_catches_a_literal_default(tmp_path):
    module = tmp_path / "knobs.py"
    module.write_text("class Knobs:\n    epochs: int = 20\n    lr_decay: float = -1.0\n    other: int = 3\n"
                      "    seed: int = default('seed')\n")
    assert [hit.split()[-1] for hit in _literal_defaults(module)] == ["Knobs.epochs", "Knobs.lr_decay"]


@pytest.mark.parametrize("argv, command", [(["train"], "train"), ([], "all"), (["scst", "--from", "b"], "scst"),
                                           (["finetune", "--from", "b", "--captions", "c", "--images", "d"],
                                            "finetune")])
def test_the_command_line_defaults_are_what_the_fit_loop_and_scst_default_to(argv, command):
    config = train.parse_args(argv)
    tr = config.train
    if command in ("train", "all"):
        assert TrainConfig.from_settings(tr, units=tr.units_for()) == TrainConfig()
    if command == "scst":
        assert SCSTConfig.from_settings(tr) == SCSTConfig()
    if command == "finetune":                    # the Train page queues fine-tunes with the terminal's defaults
        page = FinetuneSettings()
        assert (page.epochs, page.learning_rate, page.replay, page.min_count, page.patience, page.seed) == \
               (tr.epochs, tr.learning_rate, config.user_data.replay, tr.min_count, tr.patience, tr.seed)
    for name in ("epochs", "learning_rate"):
        assert getattr(tr, name) == OPTION[name].value_for(command)


@pytest.mark.parametrize("name, value, label", [("label_smoothing", 1.0, "label smoothing"),
                                                ("lr_decay", 0.0, "learning-rate decay"),
                                                ("dropout", 1.0, "dropout"), ("epochs", 0, "epochs")])
def test_one_range_rule_for_the_command_line_and_the_fit_loop(name, value, label, capsys):
    rule = OPTION[name].valid
    with pytest.raises(ValueError) as raised:
        TrainConfig(**{name: value})
    assert str(raised.value) == f"{label} {value:g} is out of range; use {rule}"
    with pytest.raises(SystemExit):
        train.parse_args([f"--{name.replace('_', '-')}", str(value)])
    assert capsys.readouterr().err.strip() == f"error: --{name.replace('_', '-')} {value:g} is out of range; use {rule}"


def test_scst_checks_its_sampling_knobs_through_the_declaration():
    with pytest.raises(ValueError, match="max length 1 is out of range; use at least 2"):
        SCSTConfig(max_length=1)
    with pytest.raises(ValueError, match="select beam 0"):
        SCSTConfig(select_beam=0)
    tr = train.parse_args(["scst", "--from", "b", "--samples", "7", "--epochs", "2", "--seed", "3"]).train
    assert SCSTConfig.from_settings(tr) == SCSTConfig(samples=7, epochs=2, seed=3, patience=tr.patience)


def test_help_states_the_per_command_and_per_decoder_defaults_from_the_declaration():
    assert OPTION["epochs"].help_text() == "most epochs (default: 20; scst 5, finetune 10)"
    assert OPTION["units"].help_text() == "LSTM size (default: merge 256; attention 512, topdown 512)"
    assert train.parse_args(["--decoder", "attention"]).train.units_for() == 512
