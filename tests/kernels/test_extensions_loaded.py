"""With DICOMACCEL_REQUIRE_EXTENSIONS=1 (CI), a kernel that silently fell back is a failure."""

import pytest

from dicomaccel import encaps, frames, multipart, walk
from dicomaccel._compat import NO_EXTENSIONS, REQUIRE_EXTENSIONS


@pytest.mark.parametrize("module", [multipart, frames, encaps, walk], ids=lambda m: m.__name__)
def test_selected_implementation(module):
    if NO_EXTENSIONS:
        assert module.IMPLEMENTATION.endswith("_py")
    elif REQUIRE_EXTENSIONS:
        assert module.IMPLEMENTATION.endswith("_c")
    else:
        pytest.skip("neither DICOMACCEL_NO_EXTENSIONS nor DICOMACCEL_REQUIRE_EXTENSIONS is set")
