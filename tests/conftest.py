"""Shared fixtures: HE parties are expensive to key, so one pair serves a test session."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from common.he.crt_bfv import CrtBfvClient, CrtBfvParams, CrtBfvServer
from common.prg import SecureRng


@pytest.fixture(scope="session")
def he_params() -> CrtBfvParams:
    return CrtBfvParams()


@pytest.fixture(scope="session")
def he_pair(he_params: CrtBfvParams) -> tuple[CrtBfvServer, CrtBfvClient]:
    client = CrtBfvClient(he_params)
    server = CrtBfvServer(he_params, client.public_keys(), SecureRng(7))
    return server, client


@pytest.fixture(autouse=True)
def _quiet_dealer():
    from common.mpc.preprocessing import InsecureDealerWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureDealerWarning)
        yield


def chi2_uniform_bytes(values: np.ndarray) -> float:
    """Chi-square statistic of the top byte of uint64 values against uniform (255 dof)."""
    top = (np.asarray(values, dtype=np.uint64).ravel() >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    exp = top.size / 256
    return float(((counts - exp) ** 2 / exp).sum())


# 255 degrees of freedom: mean 255, sd 22.6; 10 sd above is far beyond any honest sample.
CHI2_LIMIT = 255 + 10 * 22.6
