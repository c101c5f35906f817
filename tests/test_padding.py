import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.padding import pad_rows, valid_rows


def test_valid_rows_scalar_and_per_group():
    np.testing.assert_array_equal(valid_rows(4, 2), [True, True, False, False])
    np.testing.assert_array_equal(valid_rows(3, np.array([0, 3])), [[False] * 3, [True] * 3])
    # traceable: the count may be a traced value under jit
    got = jax.jit(lambda n: valid_rows(5, n))(jnp.int32(1))
    np.testing.assert_array_equal(got, [True, False, False, False, False])


def test_pad_rows_fill_dtype_and_errors():
    x = np.arange(6, dtype=np.int32).reshape(3, 2)
    y = pad_rows(x, 5, fill=-1)
    assert y.shape == (5, 2) and y.dtype == np.int32
    np.testing.assert_array_equal(y[:3], x)
    np.testing.assert_array_equal(y[3:], -1)
    np.testing.assert_array_equal(pad_rows(x, 3), x)
    with pytest.raises(ValueError, match="cannot pad 3 rows to 2"):
        pad_rows(x, 2)
