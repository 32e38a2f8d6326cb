"""The placeholder syntax shared by the local topology and the chart."""

import pytest

from deploy.templating import placeholders, render


def test_render_fills_every_placeholder():
    """Each @@NAME@@ is replaced by its value."""
    assert render("listen @@PORT@@; # @@PORT@@", {"PORT": 80}) == "listen 80; # 80"


def test_render_refuses_a_missing_value():
    """A placeholder left without a value is an error, not an empty string."""
    with pytest.raises(KeyError, match="PORT"):
        render("listen @@PORT@@;", {})


def test_render_refuses_an_unknown_value():
    """A value the template does not use is a typo somewhere."""
    with pytest.raises(KeyError, match="PROT"):
        render("listen @@PORT@@;", {"PORT": 80, "PROT": 1})


def test_placeholders_lists_names():
    """The chart's drift test relies on this listing."""
    assert placeholders("@@A@@ @@B_2@@ @@A@@ @@lower@@") == {"A", "B_2"}
