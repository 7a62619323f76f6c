"""Module-scoped product key sets for tests that sign images: a fast KDF
(the development scrypt cost) and two key sets under the test module's
PASSPHRASE. Import the fixtures into the test module to use them."""

from __future__ import annotations

import pytest
from mantra.signing import keys
from mantra.signing.keys import KeySet


@pytest.fixture(scope="module")
def fast_kdf():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "SCRYPT_LOG2_N", keys.DEV_SCRYPT_LOG2_N)
        yield


@pytest.fixture(scope="module")
def keyset(fast_kdf, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return keys.init_keyset(tmp_path_factory.mktemp("keys") / "product", request.module.PASSPHRASE)


@pytest.fixture(scope="module")
def other_keyset(fast_kdf, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return keys.init_keyset(tmp_path_factory.mktemp("keys") / "other", request.module.PASSPHRASE)
