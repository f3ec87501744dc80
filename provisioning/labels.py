"""Device labels: a QR code (PNG) per device and a printable A4 PDF sheet for a batch.

The QR payload is ``LL1;id=<device id>;k=<kind>;c=<claim code>``: who the device is and the claim code,
nothing secret (the claim code is random, not derived from the root key). Printed beside the code in
plain text for reading out on the phone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import qrcode  # type: ignore[import-untyped]
from fpdf import FPDF

QR_PREFIX = "LL1"


@dataclass(frozen=True, slots=True)
class Label:
    device_id: str
    kind: str
    claim_code: str
    spatial_unit: str = ""

    @property
    def payload(self) -> str:
        return f"{QR_PREFIX};id={self.device_id};k={self.kind};c={self.claim_code}"


def qr_png(label: Label) -> bytes:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    qr.add_data(label.payload)
    qr.make(fit=True)
    img = qr.make_image(fill_color="black", back_color="white")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_png(label: Label, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{label.device_id}.png"
    path.write_bytes(qr_png(label))
    return path


def pdf_sheet(labels: Sequence[Label], *, columns: int = 3, rows: int = 7) -> bytes:
    """A4 sheets of labels (63.5 x 38.1 mm cells, the common 21-up layout)."""
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    cell_w, cell_h = 63.5, 38.1
    left, top = (210 - columns * cell_w) / 2, (297 - rows * cell_h) / 2
    per_page = columns * rows
    for i, label in enumerate(labels):
        if i % per_page == 0:
            pdf.add_page()
        slot = i % per_page
        x = left + (slot % columns) * cell_w
        y = top + (slot // columns) * cell_h
        pdf.image(io.BytesIO(qr_png(label)), x=x + 2, y=y + 2, w=cell_h - 4, h=cell_h - 4)
        tx = x + cell_h
        pdf.set_font("Helvetica", "B", 8)
        pdf.set_xy(tx, y + 5)
        pdf.cell(cell_w - cell_h - 1, 4, "Lifeline")
        pdf.set_font("Courier", "", 7)
        for n, text in enumerate((label.device_id[:8], label.device_id[8:], label.kind[:14], label.claim_code,
                                  label.spatial_unit[:14])):
            pdf.set_xy(tx, y + 11 + n * 4.5)
            pdf.cell(cell_w - cell_h - 1, 4, text)
    out = pdf.output()
    return bytes(out)
