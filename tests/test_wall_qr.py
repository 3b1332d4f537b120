import pytest
import segno
from test_wall_harness import fake_bolt11

from wallunit.qr import NotAnInvoice, lightning_uri, make, terminal_text, write_png

INVOICE = fake_bolt11("deposit", 25_000_000)


def test_uri_is_upper_case_lightning_scheme_for_alphanumeric_mode():
    uri = lightning_uri(INVOICE)
    assert uri == "LIGHTNING:" + INVOICE.upper()
    assert make(INVOICE).mode == "alphanumeric"
    assert lightning_uri("lightning:" + INVOICE) == uri


def test_upper_case_code_is_smaller_than_the_lower_case_one():
    assert make(INVOICE).version < segno.make_qr("lightning:" + INVOICE, error="m").version


@pytest.mark.parametrize("bad", ["", "hello", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", INVOICE[:-1] + "x"])
def test_anything_but_a_lightning_invoice_is_refused(bad):
    with pytest.raises(NotAnInvoice):
        lightning_uri(bad)


def test_png_is_written_whole_and_replaced_in_place(tmp_path):
    target = tmp_path / "qr" / "manual-pay.png"
    write_png(INVOICE, target)
    first = target.read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    write_png(fake_bolt11("final", 120_000), target)
    assert target.read_bytes() != first
    assert [p.name for p in target.parent.iterdir()] == ["manual-pay.png"]


def test_terminal_rendering_has_one_row_of_characters_per_two_modules():
    text = terminal_text(INVOICE)
    lines = text.splitlines()
    width = make(INVOICE).symbol_size(border=4)[0]
    assert len(lines) == (width + 1) // 2
    assert all(len(line) == width for line in lines)
