"""Every mail as a phone shows it: Debian's Chromium with mobile emulation (a 390 px phone in
light mode, a 320 px one in dark mode), one browser and one page for all templates.

A mail fits when nothing scrolls sideways and the phone does not zoom out to fit it (the layout
viewport stays the phone's width at scale 1); it reads when every text is at least 13 px (body
text 14 px) with 4.5:1 contrast on what is behind it (3:1 for large text), in both colour
schemes; it is usable when every button is at least 44 px high.
"""

from __future__ import annotations

import pytest

from tasks.messaging.render import Renderer
from tests.browser import chromium, screenshot
from tests.unit.test_mail_layout import sample_mails

PHONES = {"light": {"width": 390, "height": 844}, "dark": {"width": 320, "height": 640}}

# What a person would check, measured in the page: sizes, overflow, contrast (WCAG formula).
MEASURE = """() => {
  const rgb = text => text.match(/[\\d.]+/g).map(Number);
  const channel = v => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const behind = el => {
    for (; el; el = el.parentElement) {
      const colour = rgb(getComputedStyle(el).backgroundColor);
      if (colour.length < 4 || colour[3] > 0) return colour;
    }
    return [255, 255, 255];
  };
  const problems = [];
  for (const el of document.querySelectorAll("body *")) {
    const ownText = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!ownText || el.closest(".preheader")) continue;
    const style = getComputedStyle(el), size = parseFloat(style.fontSize);
    const [a, b] = [luminance(rgb(style.color)), luminance(behind(el))];
    const contrast = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const large = size >= 24 || (size >= 18.6 && Number(style.fontWeight) >= 700);
    const words = el.textContent.trim().slice(0, 30);
    if (contrast < (large ? 3 : 4.5)) problems.push(`contrast ${contrast.toFixed(2)}: ${words}`);
    if (size < (el.closest("p, li") && !el.closest(".footer") ? 14 : 13))
      problems.push(`${size}px text: ${words}`);
  }
  for (const button of document.querySelectorAll("a.button, a.rating")) {
    const box = button.getBoundingClientRect();
    if (box.height < 44 || box.width < 44) problems.push(`small button: ${button.textContent}`);
  }
  return {scrollWidth: document.scrollingElement.scrollWidth, innerWidth: window.innerWidth,
          scale: window.visualViewport.scale, problems};
}"""


@pytest.fixture(scope="module")
def mails(cfg) -> dict[str, str]:
    renderer = Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates)
    return {name: renderer.render(name, context).html
            for name, context in sample_mails(cfg).items()}


def test_every_mail_fits_and_reads_on_a_phone_in_both_colour_schemes(mails):
    faults, seen = [], 0
    with chromium() as browser:
        for scheme, phone in PHONES.items():
            context = browser.new_context(viewport=phone, is_mobile=True, has_touch=True,
                                          device_scale_factor=3, color_scheme=scheme)
            page = context.new_page()
            for name, html in mails.items():
                page.set_content(html)
                found = page.evaluate(MEASURE)
                where = f"{name} at {phone['width']} px ({scheme})"
                if found["scrollWidth"] > phone["width"]:
                    faults.append(f"{where}: scrolls sideways to {found['scrollWidth']} px")
                if found["innerWidth"] != phone["width"] or found["scale"] != 1:
                    faults.append(f"{where}: zoomed out to a {found['innerWidth']} px layout")
                faults += [f"{where}: {problem}" for problem in found["problems"]]
                seen += 1
            page.set_content(mails["confirmation"])  # the fullest mail, for a person to see
            screenshot(page, f"mail-confirmation-{phone['width']}-{scheme}")
            context.close()
    assert seen == 2 * len(mails) and faults == []
