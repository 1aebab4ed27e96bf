"""Regenerate Paradiff's icon: paradiff.svg, paradiff.png (256x256) and paradiff.ico.

Run ``python resources/make_icon.py``; it needs only Pillow. All three files come from the one
set of shapes below, so the vector and raster icons cannot drift apart.

The picture: a landscape "canvas" at dusk inside a rounded square, covered by a 3x3 grid of
translucent tiles that overlap their neighbours, the way Paradiff's tiles cover a canvas. Where
tiles overlap the white adds up, so the overlap bands show.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
VIEW = 256  # every coordinate below is in a 256x256 box

# Rounded-square backdrop.
BG_X0, BG_X1, BG_RADIUS = 8, 248, 56

# Sky: vertical gradient (offset 0..1 along SKY_Y0..SKY_Y1, sRGB like SVG's default).
SKY_Y0, SKY_Y1 = 8, 200
SKY_STOPS = [(0.0, "#1E1B4B"), (0.55, "#6D28D9"), (1.0, "#F9A8D4")]

SUN = (184, 100, 30, "#FDE68A")  # cx, cy, r, colour

# Far range first, then near hills; each is a closed polygon.
HILLS = [
    ("#5B21B6", [(8, 170), (58, 122), (96, 150), (150, 96), (206, 146), (248, 118), (248, 248), (8, 248)]),
    ("#1E1B4B", [(8, 204), (70, 172), (128, 196), (190, 166), (248, 190), (248, 248), (8, 248)]),
]

# Tiles: 76 px wide, placed every 56 px, so neighbours share a 20 px band.
TILE_SIZE, TILE_STEP, TILE_START, TILE_RADIUS = 76, 56, 34, 10
TILE_FILL_ALPHA, TILE_STROKE_ALPHA, TILE_STROKE = 0.14, 0.6, 2

ICO_SIZES = [16, 24, 32, 48, 64, 128, 256]
SUPERSAMPLE = 4  # Pillow draws without anti-aliasing; drawing big and shrinking smooths edges


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _tiles() -> list[tuple[int, int]]:
    return [
        (TILE_START + col * TILE_STEP, TILE_START + row * TILE_STEP) for row in range(3) for col in range(3)
    ]


def svg() -> str:
    stops = "\n".join(f'      <stop offset="{off:g}" stop-color="{col}"/>' for off, col in SKY_STOPS)
    bg_w = BG_X1 - BG_X0
    hills = "\n".join(
        f'    <polygon fill="{col}" points="{" ".join(f"{x},{y}" for x, y in pts)}"/>' for col, pts in HILLS
    )
    tiles = "\n".join(
        f'    <rect x="{x}" y="{y}" width="{TILE_SIZE}" height="{TILE_SIZE}" rx="{TILE_RADIUS}"/>'
        for x, y in _tiles()
    )
    cx, cy, r, sun_col = SUN
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{VIEW}" height="{VIEW}" \
viewBox="0 0 {VIEW} {VIEW}">
  <title>Paradiff</title>
  <defs>
    <linearGradient id="sky" gradientUnits="userSpaceOnUse" x1="0" y1="{SKY_Y0}" x2="0" \
y2="{SKY_Y1}">
{stops}
    </linearGradient>
    <clipPath id="frame">
      <rect x="{BG_X0}" y="{BG_X0}" width="{bg_w}" height="{bg_w}" rx="{BG_RADIUS}"/>
    </clipPath>
  </defs>
  <g clip-path="url(#frame)">
    <rect x="{BG_X0}" y="{BG_X0}" width="{bg_w}" height="{bg_w}" fill="url(#sky)"/>
    <circle cx="{cx}" cy="{cy}" r="{r}" fill="{sun_col}"/>
{hills}
  </g>
  <g fill="#FFFFFF" fill-opacity="{TILE_FILL_ALPHA:g}" stroke="#FFFFFF" \
stroke-opacity="{TILE_STROKE_ALPHA:g}" stroke-width="{TILE_STROKE}">
{tiles}
  </g>
</svg>
"""


def _sky_colour(y: float) -> tuple[int, int, int]:
    t = min(1.0, max(0.0, (y - SKY_Y0) / (SKY_Y1 - SKY_Y0)))
    for (o0, c0), (o1, c1) in itertools.pairwise(SKY_STOPS):
        if t <= o1:
            f = (t - o0) / (o1 - o0)
            a, b = _rgb(c0), _rgb(c1)
            return tuple(round(a[i] + (b[i] - a[i]) * f) for i in range(3))
    return _rgb(SKY_STOPS[-1][1])


def render(size: int) -> Image.Image:
    """The icon as an RGBA image of ``size`` x ``size`` pixels."""
    big = size * SUPERSAMPLE
    k = big / VIEW

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        # Pillow's last pixel is inclusive; SVG's edge is not.
        return [x0 * k, y0 * k, x1 * k - 1, y1 * k - 1]

    scene = Image.new("RGBA", (big, big))
    draw = ImageDraw.Draw(scene)
    for py in range(big):
        draw.line([(0, py), (big - 1, py)], fill=_sky_colour((py + 0.5) / k))
    cx, cy, r, sun_col = SUN
    draw.ellipse(box(cx - r, cy - r, cx + r, cy + r), fill=_rgb(sun_col))
    for col, pts in HILLS:
        draw.polygon([(x * k, y * k) for x, y in pts], fill=_rgb(col))

    frame = Image.new("L", (big, big), 0)
    ImageDraw.Draw(frame).rounded_rectangle(box(BG_X0, BG_X0, BG_X1, BG_X1), radius=BG_RADIUS * k, fill=255)
    icon = Image.new("RGBA", (big, big))
    icon.paste(scene, mask=frame)

    # One layer per tile, composited in order, so overlaps add up exactly as SVG paints them.
    fill = (255, 255, 255, round(255 * TILE_FILL_ALPHA))
    stroke = (255, 255, 255, round(255 * TILE_STROKE_ALPHA))
    half = TILE_STROKE / 2  # SVG centres the stroke on the edge; Pillow draws it inside
    for x, y in _tiles():
        layer = Image.new("RGBA", (big, big))
        ImageDraw.Draw(layer).rounded_rectangle(
            box(x - half, y - half, x + TILE_SIZE + half, y + TILE_SIZE + half),
            radius=(TILE_RADIUS + half) * k,
            fill=fill,
            outline=stroke,
            width=round(TILE_STROKE * k),
        )
        icon.alpha_composite(layer)

    return icon.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    (HERE / "paradiff.svg").write_text(svg(), encoding="utf-8")
    render(256).save(HERE / "paradiff.png", optimize=True)
    frames = [render(s) for s in ICO_SIZES]
    frames[-1].save(
        HERE / "paradiff.ico",
        sizes=[(s, s) for s in ICO_SIZES],
        append_images=frames[:-1],
    )
    print(f"wrote paradiff.svg, paradiff.png, paradiff.ico in {HERE}")


if __name__ == "__main__":
    main()
