"""``stemcli remix``: change stem levels, pan, per-stem effects or remove the vocals of one file.

Only click and the standard library are imported at module level; numpy, pedalboard and the
separators are imported inside the command.  ``--fx`` is parsed with :mod:`ast`, never
evaluated: only pedalboard effect classes called with literal arguments are accepted.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from pathlib import Path
from typing import Any

import click

# Containers take plugin lists, external plugins load native code: neither belongs on a command line.
EXCLUDED_PLUGINS = frozenset(
    {"Plugin", "PluginContainer", "Chain", "Mix", "Pedalboard", "ExternalPlugin", "VST3Plugin", "AudioUnitPlugin"}
)
_STEM_PREFIX = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*:(.*)$", re.DOTALL)


def plugin_classes() -> dict[str, type]:
    """pedalboard's effect classes usable in ``--fx``: name -> class."""
    import pedalboard

    found = {}
    for name in dir(pedalboard):
        obj = getattr(pedalboard, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, pedalboard.Plugin)
            and not name.startswith("_")
            and name not in EXCLUDED_PLUGINS
            and not any(base.__name__ in EXCLUDED_PLUGINS - {"Plugin"} for base in obj.__mro__)
        ):
            found[name] = obj
    return dict(sorted(found.items()))


def parse_assignments(values: tuple[str, ...] | list[str], option: str, unit: str) -> dict[str, float]:
    """Parse repeated ``STEM=NUMBER[,STEM=NUMBER...]`` options, e.g. ``--gain vocals=+3,drums=-6``.

    A ``dB`` suffix is accepted for gains; ``-inf`` mutes.

    Raises:
        ValueError: malformed item, not a number, or a stem given twice.
    """
    out: dict[str, float] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, number = item.partition("=")
            name, number = name.strip(), number.strip()
            if unit == "dB" and number.lower().endswith("db"):
                number = number[:-2].strip()
            try:
                parsed = float(number)
            except ValueError:
                parsed = math.nan
            if not sep or not name or math.isnan(parsed):
                raise ValueError(f"{option} '{item}': expected STEM={unit}, e.g. {option} vocals=+3,drums=-6")
            if name in out:
                raise ValueError(f"{option}: stem '{name}' given twice")
            out[name] = parsed
    return out


def _literal(node: ast.AST, where: str, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(
            f"{where}: {what} must be a literal (number, string, True/False/None, list), got '{ast.unparse(node)}'"
        ) from None


def _plugin_from_node(node: ast.AST, where: str, classes: dict[str, type]) -> Any:
    if isinstance(node, ast.Name):  # "Reverb" without parentheses
        node = ast.Call(func=node, args=[], keywords=[])
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"{where}: expected Plugin(key=value, ...), got '{ast.unparse(node)}'")
    name = node.func.id
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"{where}: unknown plugin '{name}'{hint} (pedalboard effects: {', '.join(classes)})")
    args = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise ValueError(f"{where}: *arguments are not allowed")
        args.append(_literal(arg, where, f"an argument of {name}"))
    kwargs = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"{where}: **arguments are not allowed")
        kwargs[kw.arg] = _literal(kw.value, where, f"argument '{kw.arg}' of {name}")
    try:
        return classes[name](*args, **kwargs)
    except TypeError as exc:
        sig = re.search(r"\d+\.\s+\S*?\.?(\w+\(.*?\))\s*$", str(exc), re.MULTILINE)
        accepted = f"; usage: {sig.group(1)}" if sig else ""
        raise ValueError(f"{where}: bad arguments for {name}{accepted}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {name}: {str(exc).splitlines()[0]}") from None


def parse_fx(values: tuple[str, ...] | list[str]) -> dict[str | None, list[Any]]:
    """Parse repeated ``--fx '[STEM:]Plugin(key=value, ...)[, Plugin2(...)]'`` into plugins.

    Without a ``STEM:`` prefix the plugins run on the whole remixed output.  Repeating
    ``--fx`` for one stem appends to its chain, in order.

    Returns:
        stem (or None for the whole mix) -> list of pedalboard plugin instances.

    Raises:
        ValueError: syntax error, unknown plugin, non-literal or bad argument.
    """
    classes = plugin_classes()
    out: dict[str | None, list[Any]] = {}
    for value in values:
        where = f"--fx '{value}'"
        stem: str | None = None
        expr = value
        m = _STEM_PREFIX.match(value)
        if m and ("(" not in value or value.index(":") < value.index("(")):
            stem, expr = m.group(1), m.group(2)
        expr = expr.strip()
        if not expr:
            raise ValueError(f"{where}: no plugin given; expected [STEM:]Plugin(key=value, ...)")
        try:
            tree = ast.parse(expr, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"{where}: invalid syntax ({exc.msg}); expected [STEM:]Plugin(key=value, ...)") from None
        nodes = tree.body.elts if isinstance(tree.body, ast.Tuple) else [tree.body]
        out.setdefault(stem, []).extend(_plugin_from_node(n, where, classes) for n in nodes)
    return out


@click.command("remix")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output file (wav, flac, aiff, ogg, mp3 by extension).")
@click.option("-m", "--model", default=None, help="Separator name (see `stemcli list`) or model file. Default: the shipped 4-stem model, else hpss.")
@click.option("--gain", "gains", multiple=True, metavar="STEM=DB[,...]", help="Stem levels in dB, e.g. vocals=+3,drums=-6 (-inf mutes). Repeatable.")
@click.option("--pan", "pans", multiple=True, metavar="STEM=PAN[,...]", help="Constant-power pan in [-1, 1] per stem, e.g. vocals=-0.3 (stereo input). Repeatable.")
@click.option("--fx", "fx", multiple=True, metavar="[STEM:]PLUGIN(...)", help="pedalboard effect for a stem, e.g. 'vocals:Reverb(room_size=0.6)'; without STEM: on the whole output. Repeatable.")
@click.option("--karaoke", is_flag=True, help="Remove the vocals (mixture minus the vocals estimate).")
@click.option("--bit-depth", type=click.Choice(["16", "24", "32"]), default=None, help="Output bit depth (32 = float). Default: the input's.")
@click.option("--backend", type=click.Choice(["onnx", "torch"]), default=None, help="Runtime for model-based separators.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line.")
def remix(input_path, output, model, gains, pans, fx, karaoke, bit_depth, backend, force, quiet) -> None:
    """Remix one file through its stems: levels, pan, per-stem pedalboard effects, karaoke.

    Separates INPUT once, runs each stem through its --fx plugins, then --gain, then --pan,
    sums the stems (plus whatever the model left out of them) and writes OUTPUT at the input's
    sample rate and channel count.  Offline: the whole file is processed in memory.

    \b
    Examples:
      stemcli remix song.wav -o karaoke.wav --karaoke
      stemcli remix song.wav -o out.wav --gain vocals=+3,drums=-6 --pan vocals=-0.3 \\
          --fx 'vocals:Reverb(room_size=0.6)' --fx 'drums:Compressor(threshold_db=-20, ratio=4)'
    """
    from stemcli.audio import AudioError, probe
    from stemcli.plugins import SeparatorError

    def fail(path: Path, exc: BaseException) -> click.ClickException:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        named = msg.startswith((f"{input_path}:", f"{output}:"))
        return click.ClickException(msg if named else f"{path}: {msg}")

    try:
        info = probe(input_path)
    except AudioError as exc:
        raise fail(input_path, exc) from None
    if output.exists() and not force:
        raise click.ClickException(f"{output}: output exists (use --force to overwrite)")
    try:
        gain_map = parse_assignments(gains, "--gain", "dB")
        pan_map = parse_assignments(pans, "--pan", "PAN")
        fx_map = parse_fx(fx)
        if pan_map and info.channels != 2:
            raise ValueError(f"--pan needs stereo input, the file has {info.channels} channel(s)")
    except ValueError as exc:
        raise fail(input_path, exc) from None

    from stemcli.effects import build_remix, process_file

    try:
        effect = build_remix(model, gain_map, pan_map, fx_map, karaoke, backend=backend)
        result = process_file(effect, input_path, output, force=force, bit_depth=int(bit_depth) if bit_depth else None)
    except (AudioError, SeparatorError, ValueError, TypeError) as exc:
        raise fail(input_path, exc) from None
    except (FileExistsError, OSError) as exc:
        raise fail(output, exc) from None
    fmt = output.suffix.lstrip(".").lower() if result["lossy"] else f"{result['bit_depth']}-bit"
    if result["peak"] > 1.0 and (result["lossy"] or result["bit_depth"] < 32):
        db = 20 * math.log10(result["peak"])
        hint = "" if result["lossy"] else " or use --bit-depth 32"
        click.echo(f"warning: {output}: peak {db:+.1f} dBFS is clipped in {fmt}; lower the gains{hint}", err=True)
    if not quiet:
        seconds = result["frames"] / result["sample_rate"]
        click.echo(f"wrote {output} ({seconds:.1f} s, {fmt})", err=True)
