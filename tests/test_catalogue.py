"""The catalogue (names known without importing torch) agrees with the registries that build them."""

from __future__ import annotations

import pytest

from subnets import catalogue
from subnets.data.registry import _REGISTRY as DATASETS
from subnets.models.registry import _REGISTRY as MODELS
from subnets.pooling import pool_names


def test_builtin_datasets_are_the_registered_ones_with_their_kind_and_required_options() -> None:
    built_in = {name: entry for name, entry in DATASETS.items() if entry.build.__module__.startswith("subnets.")}
    assert set(built_in) == set(catalogue.BUILTIN_DATASETS)
    for name, entry in built_in.items():
        assert catalogue.dataset_kind(name) == entry.kind, name
        loader = f"{entry.build.__module__}.{entry.build.__qualname__}" if entry.kind == "sentences" else ""
        assert catalogue.DatasetName(entry.kind, bool(entry.required), loader) == catalogue._DATASETS[name], name


def test_builtin_models_are_the_registered_ones() -> None:
    built_in = {name for name, build in MODELS.items() if build.__module__.startswith("subnets.")}
    assert built_in == set(catalogue.BUILTIN_MODELS)


@pytest.mark.parametrize(("dim", "names"), [(1, catalogue.SPATIAL_POOLS), (2, catalogue.SPATIAL_POOLS),
                                            ("tokens", catalogue.TOKEN_POOLS), ("layers", catalogue.LAYER_POOLS)])
def test_pool_names_are_the_factory_ones(dim, names) -> None:
    assert tuple(pool_names(dim)) == names


def test_a_registered_dataset_and_model_become_known_names(monkeypatch) -> None:
    from subnets import register_dataset, register_model

    monkeypatch.setattr(catalogue, "_DATASETS", dict(catalogue._DATASETS))  # every registration is undone
    monkeypatch.setattr(catalogue, "_MODELS", list(catalogue._MODELS))
    monkeypatch.setattr("subnets.data.registry._REGISTRY", dict(DATASETS))
    monkeypatch.setattr("subnets.models.registry._REGISTRY", dict(MODELS))
    with pytest.raises(ValueError, match="unknown dataset '_catalogue_blobs'"):
        catalogue.check_dataset_name("_catalogue_blobs")
    with pytest.raises(ValueError, match="unknown model '_catalogue_net'"):
        catalogue.check_model_name("_catalogue_net")
    register_dataset("_catalogue_blobs")(lambda path: None)
    register_model("_catalogue_net")(lambda input_shape, num_classes: None)
    assert catalogue.check_dataset_name("_catalogue_blobs") == "_catalogue_blobs"
    assert catalogue.check_model_name("_catalogue_net") == "_catalogue_net"
    assert "_catalogue_blobs" not in catalogue.table_names()  # it needs an option (path)


def test_a_table_or_sentence_set_is_not_a_tensor_dataset() -> None:
    with pytest.raises(ValueError, match="'wine' holds tables, not tensors"):
        catalogue.check_dataset_name("wine")
    with pytest.raises(ValueError, match="'stsb' holds sentences"):
        catalogue.check_dataset_name("stsb")
