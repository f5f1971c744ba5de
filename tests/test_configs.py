"""The shipped configs compose: a file that names another (`config: other.yaml`) resolves to that file's
values with its own keys replaced and nothing else changed, so each file holds only what differs."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import ROOT
from miri_lightning.cli import MIRICLI, read_config
from miri_lightning.data.datamodule import MaskedImageDataModule
from miri_lightning.errors import ConfigError
from miri_lightning.module import MIRI

CONFIGS = ROOT / "configs"
DATA_FILES = {"cifar10_uint8.npz": (32, 32, 3), "mnist32_uint8.npz": (32, 32), "celeba64_uint8.npz": (64, 64, 3)}


def flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


OVERRIDES = {"logging.backend": "csv", "trainer.accelerator": "cpu"}  # no W&B, no GPU probe in tests


def resolved(path) -> dict:
    """The whole config that `--config path` gives, flattened to dotted keys (less the tests' OVERRIDES)."""
    cli = MIRICLI(MIRI, MaskedImageDataModule, run=False,
                  args=["--config", str(path), *(f"--{key}={value}" for key, value in OVERRIDES.items())])
    config = cli.config.clone()
    del config["config"]
    return {key: value for key, value in flat(yaml.safe_load(cli.parser.dump(config, skip_none=False))).items()
            if key not in OVERRIDES}


def explicit(path) -> dict:
    """The keys a config file and the files it names state themselves, flattened (no defaults)."""
    own = yaml.safe_load(path.read_text())
    parent = own.pop("config", None)
    return {**(explicit(path.parent / parent) if parent else {}), **flat(own)}


@pytest.fixture
def stand_in_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name, shape in DATA_FILES.items():
        np.savez(tmp_path / "data" / name, images=np.zeros((8, *shape), np.uint8))
    return tmp_path


COMPOSED = sorted(p for p in CONFIGS.rglob("*.yaml") if "config" in yaml.safe_load(p.read_text()))


def test_the_gpu_and_cpu_recipes_are_composed():
    assert {p.name for p in COMPOSED} >= {"cifar10.yaml", "celeba.yaml", "mnist.yaml", "cifar10_cpu.yaml",
                                          "celeba_cpu.yaml"}


@pytest.mark.parametrize("child", COMPOSED, ids=lambda p: p.name)
def test_a_composed_config_is_its_parent_with_its_own_keys_replaced(child, stand_in_data):
    own = yaml.safe_load(child.read_text())
    parent = child.parent / own.pop("config")
    mine, theirs = resolved(child), resolved(parent)
    own = flat(own)
    # A block whose class the file names (data.source: another source) takes that class's defaults too.
    classes = [key[:-len("class_path")] for key in own if key.endswith("class_path")]
    changed = {key for key in mine if mine[key] != theirs.get(key) and not key.startswith(tuple(classes))}
    assert changed <= set(own), f"{child.name} changes keys it does not name: {changed - set(own)}"
    ignored = [key for key, value in own.items() if mine.get(key) != value]
    assert not ignored, f"keys of {child.name} that did not apply: {ignored}"
    assert any(own[key] != theirs.get(key) for key in own)
    stated = explicit(parent)  # a default may be restated for the reader; what the parent says, not
    repeated = [key for key in own if key in stated and own[key] == stated[key]]
    assert not repeated, f"{child.name} repeats what {parent.name} holds: {repeated}"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_read_config_states_what_the_command_line_resolves(config, stand_in_data):
    stated, whole = flat(read_config(config)), resolved(config)
    stated = {key: value for key, value in stated.items() if key not in OVERRIDES}
    assert {key: whole.get(key) for key in stated} == stated


def test_read_config_refuses_keys_above_the_file_it_names(tmp_path):
    (tmp_path / "base.yaml").write_text("rounds:\n  steps: 7\n")
    (tmp_path / "child.yaml").write_text("rounds.num_rounds: 3\nconfig: base.yaml\n")
    with pytest.raises(ConfigError, match="must be the first key"):
        read_config(tmp_path / "child.yaml")
    (tmp_path / "child.yaml").write_text("config: base.yaml\nrounds.num_rounds: 3\n")
    assert read_config(tmp_path / "child.yaml") == {"rounds": {"steps": 7, "num_rounds": 3}}
