"""The one weights loader of the learned methods (``ivfuse.models.base.load_state``): every ivfuse container format
round-trips to the same tensors and config, and a bad file is a one-line error naming it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ivfuse.errors import InputError
from ivfuse.models.base import load_state


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "stem.weight": torch.randn(4, 2, 3, 3, generator=g),
        "stem.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "half.weight": torch.randn(3, generator=g).half(),
    }


CFG = {"width": 4, "colour": "ycbcr"}


def _write(tmp_path, fmt: str, sd: dict):
    """``sd`` saved in container format ``fmt``; returns (path, load_state keyword arguments)."""
    f = tmp_path / f"{fmt}.{'safetensors' if fmt.startswith('safetensors') else 'pt'}"
    if fmt == "safetensors":
        save_file(sd, str(f), metadata={"config": json.dumps(CFG), "note": "plain text", "width": "4"})
    elif fmt == "safetensors_bare":
        save_file(sd, str(f))
    elif fmt == "checkpoint":
        torch.save({"modules": {"F": sd, "D": {"x": torch.zeros(1)}}, "optimizers": {}, "config": {"fusion": CFG}}, f)
    elif fmt == "container":
        torch.save({"state_dict": sd, "config": CFG, "genotype": {"name": "g"}}, f)
    else:
        torch.save(sd, f)
    return f, {"module": "F", "section": "fusion"} if fmt == "checkpoint" else {}


FORMATS = [
    ("safetensors", "export", CFG),
    ("safetensors_bare", "raw", None),
    ("checkpoint", "checkpoint", CFG),
    ("container", "container", CFG),
    ("bare", "raw", None),
]


@pytest.mark.parametrize("fmt, kind, config", FORMATS)
def test_every_container_round_trips(tmp_path, fmt, kind, config):
    sd = _state()
    f, kw = _write(tmp_path, fmt, sd)
    w = load_state(f, "toy", **kw)
    assert w.kind == kind and w.config == config
    assert set(w.state) == set(sd)
    for k, v in sd.items():  # same dtype and bits, not merely close
        assert w.state[k].dtype == v.dtype and torch.equal(w.state[k], v), k
    if fmt == "safetensors":  # metadata: JSON decoded, plain strings kept
        assert w.meta == {"config": CFG, "note": "plain text", "width": 4}
    if fmt == "container":  # the container's other keys
        assert w.meta == {"genotype": {"name": "g"}}


def test_checkpoint_config_whole_or_section(tmp_path):
    f, _ = _write(tmp_path, "checkpoint", _state())
    assert load_state(f, "toy", module="F").config == {"fusion": CFG}
    assert load_state(f, "toy", module="F", section="model").config is None
    assert set(load_state(f, "toy", module="D").state) == {"x"}


BROKEN = [(b"not a checkpoint", "safetensors"), (b"PK\x03\x04 truncated", "pt"), (b"", "pt")]


@pytest.mark.parametrize("data, suffix", BROKEN)
def test_corrupted_file_is_one_line_naming_it(tmp_path, data, suffix):
    f = tmp_path / f"broken.{suffix}"
    f.write_bytes(data)
    with pytest.raises(InputError) as e:
        load_state(f, "toy")
    msg = str(e.value)
    assert msg.startswith(f"{f}: cannot read toy weights") and "\n" not in msg


def test_missing_file_and_checkpoint_without_the_network(tmp_path):
    with pytest.raises(InputError, match=r"missing\.pt: toy weights file not found"):
        load_state(tmp_path / "missing.pt", "toy")
    f, _ = _write(tmp_path, "checkpoint", _state())
    for kw, want in (({"module": "net"}, "needs its network 'net'"), ({}, "does not load training checkpoints")):
        with pytest.raises(InputError) as e:
            load_state(f, "toy", **kw)
        msg = str(e.value)
        assert msg.startswith(f"{f}: an ivfuse training checkpoint (networks: F, D)") and want in msg
        assert "export=FILE" in msg and "\n" not in msg


@pytest.mark.parametrize("method", ["lite", "metafusion", "occo", "tim", "tsjnet"])
def test_learned_methods_read_their_export_through_load_state(method, monkeypatch):
    """Every learned method's ``from_checkpoint`` unpacks files with ``load_state`` (no format switch of its own): a
    spy sees the shipped default read through it."""
    import ivfuse.models.base as base
    from ivfuse.models import create_model

    mod = __import__(f"ivfuse.models.{method}", fromlist=["load_state"])
    seen = []

    def spy(path, m, *a, **kw):
        seen.append(m)
        return base.load_state(path, m, *a, **kw)

    monkeypatch.setattr(mod, "load_state", spy)
    create_model(method)
    assert len(seen) == 1


@pytest.mark.parametrize("method, module, section", [("lite", "net", None), ("metafusion", "F", "fusion")])
def test_models_load_the_same_weights_from_every_container(tmp_path, method, module, section):
    """The shipped weights re-saved in each container load into the same network, bit for bit."""
    from ivfuse.models import create_model

    ref = create_model(method)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    cfg = {"width": ref.width} if method == "lite" else {"width": ref.width, "colour": ref.colour, "blocks": ref.blocks}
    files = {
        "container.pt": {"state_dict": sd, "config": cfg},
        "bare.pt": sd,
        "checkpoint.pt": {"modules": {module: sd}, "config": {section: cfg} if section else cfg},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(sd, str(tmp_path / "export.safetensors"), metadata={"config": json.dumps(cfg)})
    for name in [*files, "export.safetensors"]:
        got = create_model(method, weights=tmp_path / name).state_dict()
        assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items()), name
