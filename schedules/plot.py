"""Pictures of schedules and fits, drawn with Pillow (no plotting library needed).

``plot_grids`` draws sigma against step on a log axis for several grids, ``plot_curve`` loss
curves, ``solver_figure`` both for one fit; each returns a ``PIL.Image.Image``. A schedule keeps
its colour in every picture (``colour``).
"""

from __future__ import annotations

import math

import torch

COLOURS = [(220, 60, 50), (40, 110, 220), (30, 160, 80), (200, 140, 20), (140, 60, 200), (90, 90, 90)]
# the same schedule in the same colour wherever it is drawn (matched on the name's first word)
NAMED_COLOURS = {"learned": COLOURS[0], "karras": COLOURS[1], "exponential": COLOURS[2], "ays": COLOURS[3]}


def colour(name: str, number: int) -> tuple:
    """The colour of series ``name``, the ``number``-th drawn: its schedule's own, else the next free."""
    key = name.split()[0].lower() if name.strip() else ""
    if key in NAMED_COLOURS:
        return NAMED_COLOURS[key]
    spare = [c for c in COLOURS if c not in NAMED_COLOURS.values()]
    return spare[number % len(spare)]


def pil():
    try:
        from PIL import Image, ImageDraw
    except ImportError as err:  # pragma: no cover - Pillow ships with ComfyUI and the package
        raise ImportError("drawing plots needs Pillow: pip install pillow") from err
    return Image, ImageDraw


def plot_grids(grids: dict, title: str = "", size=(640, 400)):
    """Each grid (name -> sigmas, a final 0 is left out) as sigma over step index, log scale."""
    Image, ImageDraw = pil()
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 150, 30, height - 40
    series = {name: [float(s) for s in torch.as_tensor(g).flatten() if float(s) > 0] for name, g in grids.items()}
    values = [v for points in series.values() for v in points]
    if not values:
        raise ValueError("nothing to plot: every grid is empty")
    low, high = math.log10(min(values)), math.log10(max(values))
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    longest = max(len(points) for points in series.values())

    def to_xy(index, value):
        x = left + (right - left) * (index / max(longest - 1, 1))
        y = bottom - (bottom - top) * ((math.log10(value) - low) / (high - low))
        return x, y

    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for exponent in range(math.floor(low), math.ceil(high) + 1):
        if low <= exponent <= high:
            _, y = to_xy(0, 10.0 ** exponent)
            draw.line([left, y, right, y], fill=(225, 225, 225))
            draw.text((8, y - 6), f"1e{exponent}", fill=(0, 0, 0))
    for index in range(longest):
        x, _ = to_xy(index, 10.0 ** low)
        draw.text((x - 3, bottom + 6), str(index), fill=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 15, height - 18), "step", fill=(0, 0, 0))
    for number, (name, points) in enumerate(series.items()):
        fill = colour(name, number)
        xy = [to_xy(i, v) for i, v in enumerate(points)]
        if len(xy) > 1:
            draw.line(xy, fill=fill, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=fill)
        draw.line([right + 12, top + 10 + 18 * number, right + 32, top + 10 + 18 * number], fill=fill, width=3)
        draw.text((right + 38, top + 4 + 18 * number), name, fill=(0, 0, 0))
    return image


def preview(latents: torch.Tensor) -> torch.Tensor:
    """Samples [B, C, H, W] as pictures [B, H, W, 3] in 0..1 without a decoder: the first three
    channels (one channel as grey), each picture stretched to its own range."""
    latents = latents.detach().float().cpu()
    channels = latents[:, :3] if latents.shape[1] >= 3 else latents[:, :1].expand(-1, 3, -1, -1)
    flat = channels.flatten(1)
    low, high = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
    return ((channels - low) / (high - low).clamp(min=1e-8)).permute(0, 2, 3, 1)


def labelled_rows(rows, tile: int = 128, pad: int = 4, label_width: int = 200):
    """A sheet of images, one row per sampler: rows = [(label, images [N, H, W, 3] floats in
    0..1)], the label (e.g. "dpmpp_2m + karras  RMSE 0.031") on the left, each image scaled so
    its longer side is ``tile`` pixels; the same column is the same seed in every row."""
    Image, ImageDraw = pil()
    count = max(len(images) for _, images in rows)
    first = rows[0][1]
    h, w = first.shape[1], first.shape[2]
    scale = tile / max(h, w)
    tile_h, tile_w = max(1, round(h * scale)), max(1, round(w * scale))
    sheet = Image.new("RGB", (label_width + count * (tile_w + pad) + pad, len(rows) * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        y = pad + r * (tile_h + pad)
        for line_number, line in enumerate(str(label).split("\n")[:4]):
            draw.text((pad, y + 4 + 14 * line_number), line[:34], fill=(0, 0, 0))
        for c, image in enumerate(images):
            pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
            picture = Image.fromarray(pixels, "RGB").resize((tile_w, tile_h), Image.NEAREST if scale >= 2 else Image.BILINEAR)
            sheet.paste(picture, (label_width + c * (tile_w + pad), y))
    return sheet


def stack_vertically(images, pad: int = 8):
    """Stack PIL images top to bottom on white, centred."""
    Image, _ = pil()
    width = max(i.width for i in images)
    height = sum(i.height for i in images) + pad * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    y = 0
    for picture in images:
        canvas.paste(picture, ((width - picture.width) // 2, y))
        y += picture.height + pad
    return canvas


def plot_curve(series: dict, title: str = "", size=(640, 260), log_scale: bool = True):
    """Lines over their own index (name -> list of (x, y) or of y), e.g. loss curves."""
    Image, ImageDraw = pil()
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 150, 30, height - 30
    points = {}
    for name, values in series.items():
        pairs = [(float(v[0]), float(v[1])) if isinstance(v, (tuple, list)) else (float(i), float(v))
                 for i, v in enumerate(values)]
        pairs = [(x, y) for x, y in pairs if math.isfinite(y) and (y > 0 or not log_scale)]
        if pairs:
            points[name] = pairs
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    if not points:
        draw.text((left + 10, top + 10), "nothing to plot", fill=(0, 0, 0))
        return image
    transform = (lambda y: math.log10(y)) if log_scale else (lambda y: y)
    xs = [x for p in points.values() for x, _ in p]
    ys = [transform(y) for p in points.values() for _, y in p]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    for label, y in ((y0, y0), (y1, y1)):
        text = f"{10 ** label:.3g}" if log_scale else f"{label:.3g}"
        draw.text((4, bottom - (bottom - top) * (y - y0) / (y1 - y0) - 6), text, fill=(0, 0, 0))
    draw.text((left, bottom + 6), f"{x0:g}", fill=(0, 0, 0))
    draw.text((right - 30, bottom + 6), f"{x1:g}", fill=(0, 0, 0))
    for number, (name, pairs) in enumerate(points.items()):
        fill = COLOURS[number % len(COLOURS)]
        xy = [(left + (right - left) * (x - x0) / (x1 - x0), bottom - (bottom - top) * (transform(y) - y0) / (y1 - y0))
              for x, y in pairs]
        if len(xy) > 1:
            draw.line(xy, fill=fill, width=2)
        else:
            draw.ellipse([xy[0][0] - 3, xy[0][1] - 3, xy[0][0] + 3, xy[0][1] + 3], fill=fill)
        draw.line([right + 12, top + 10 + 18 * number, right + 32, top + 10 + 18 * number], fill=fill, width=3)
        draw.text((right + 38, top + 4 + 18 * number), name, fill=(0, 0, 0))
    return image


def solver_figure(solver, nfe: int, references: dict):
    """The learned grid of ``nfe`` against ``references`` (name -> sigmas) above the fit's
    training-loss and validation-RMSE curves; a PIL image."""
    fit = solver.fits[nfe]
    grids = {f"learned ({fit.method})": fit.sigmas, **references}
    title = (f"NFE {nfe}, {solver.base}: held-out RMSE {fit.held_out_rmse:.4g} "
             f"(base {fit.base_held_out_rmse:.4g})")
    curves = {"training loss": fit.losses, "validation RMSE": fit.validation}
    return stack_vertically([plot_grids(grids, title), plot_curve(curves, "fit")])
