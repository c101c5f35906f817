"""Mesh shape resolution and construction (`dinov2_jax/parallel/mesh.py`)."""
import jax
import ml_collections
import pytest
from jax.sharding import AxisType

from dinov2_jax.parallel.mesh import MESH_AXES, batch_axis_size, make_mesh, resolve_mesh_shape


def _cfg(data=-1, fsdp=1, tensor=1):
    c = ml_collections.ConfigDict()
    c.data, c.fsdp, c.tensor = data, fsdp, tensor
    return c


@pytest.mark.parametrize(
    "sizes,n,expected",
    [
        ((-1, 1, 1), 8, (8, 1, 1)),
        ((2, -1, 1), 8, (2, 4, 1)),
        ((2, 4, 1), 8, (2, 4, 1)),
        ((1, 2, -1), 8, (1, 2, 4)),
        ((-1, 1, 1), 1, (1, 1, 1)),
    ],
)
def test_resolve_fills_minus_one(sizes, n, expected):
    assert resolve_mesh_shape(_cfg(*sizes), n) == expected


def test_resolve_accepts_dict_and_none():
    assert resolve_mesh_shape({"fsdp": 2, "data": -1}, 6) == (3, 2, 1)
    assert resolve_mesh_shape(None, 4) == (4, 1, 1)


@pytest.mark.parametrize(
    "sizes,n,match",
    [
        ((2, 2, 1), 8, "has 4 devices but 8 are available"),
        ((-1, 3, 1), 8, "does not divide"),
        ((-1, -1, 1), 8, "only one axis may be -1"),
        ((0, 1, 1), 8, "invalid"),
        ((-2, 1, 1), 8, "invalid"),
    ],
)
def test_resolve_errors(sizes, n, match):
    with pytest.raises(ValueError, match=match):
        resolve_mesh_shape(_cfg(*sizes), n)


def test_make_mesh_single_device_auto_axes():
    mesh = make_mesh(_cfg(), devices=jax.devices()[:1])
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert batch_axis_size(mesh) == 1


def test_make_mesh_wrong_count_names_fix():
    with pytest.raises(ValueError, match="data\\*fsdp\\*tensor"):
        make_mesh(_cfg(data=2, fsdp=1), devices=jax.devices()[:1])
