"""experiments._common helpers that the scripts' command lines depend on."""

import pytest

from experiments._common import key_json_options


def test_key_json_options_parses_json_values_and_names_a_bad_item() -> None:
    assert key_json_options(["width=100", "lrs=[0.1, 0.3]", "name=\"a=b\""]) == {
        "width": 100, "lrs": [0.1, 0.3], "name": "a=b"}
    assert key_json_options([]) == {}
    with pytest.raises(SystemExit, match="--workload-option 'width'"):
        key_json_options(["width"], "--workload-option")
    with pytest.raises(SystemExit, match="--search-option 'lr=fast'"):
        key_json_options(["lr=fast"], "--search-option")
