"""Settings added after runs were planned keep every existing run id: left out of the hash while at default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ioussl.config import ModelConfig, RunConfig, added, canonical_json, plain, run_hash


@dataclass(frozen=True)
class _Extra:
    scale: float = 1.0


@dataclass(frozen=True)
class _Model(ModelConfig):
    new_knob: int = added(3)
    new_tuple: tuple[int, ...] = added((1, 2))
    new_section: _Extra | None = added(None)



def test_a_setting_at_its_default_leaves_the_hash_unchanged():
    from ioussl.config import FinetuneConfig

    before = RunConfig(stage="finetune", seed=1, finetune=FinetuneConfig())
    after = dataclasses.replace(before, model=_Model())
    assert after.to_json() == before.to_json()
    assert run_hash(after, None) == run_hash(before, None)
    assert "new_knob" not in plain(after)["model"]


def test_a_setting_off_its_default_is_hashed_and_written():
    from ioussl.config import FinetuneConfig

    base = RunConfig(stage="finetune", seed=1, finetune=FinetuneConfig())
    default = dataclasses.replace(base, model=_Model())
    for changed in (_Model(new_knob=4), _Model(new_tuple=(1, 2, 3)), _Model(new_section=_Extra(2.0))):
        other = dataclasses.replace(base, model=changed)
        assert run_hash(other, None) != run_hash(default, None)
        assert other.to_json() == canonical_json(other.to_dict())
    written = plain(dataclasses.replace(base, model=_Model(new_section=_Extra(2.0))))["model"]
    assert written["new_section"] == {"scale": 2.0}
    assert "new_tuple" not in written
