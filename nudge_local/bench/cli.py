"""`nudge-local bench`: the benchmark's options, the pair it runs (generated, or real from --pair or
--base/--nudge) and its results file (measure.py does the measuring)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nudge_local.bench.generated import BASE_SHAPE, NUDGER_SHAPE, make_pair
from nudge_local.bench.measure import QUESTIONS, SYSTEMS, bench_pair
from nudge_local.catalog import is_url, load_catalog, parse_ref
from nudge_local.choose import local_path
from nudge_local.commands import Parser, add_model_options
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.gguf_check import check_gguf, read_header


def real_pair(args) -> tuple[Path, Path] | None:
    """The files of --pair or --base/--nudge, from disk or the Hugging Face cache (the benchmark
    downloads nothing: `nudge-local pull` does); None for the generated pairs."""
    if args.pair:
        pair = load_catalog().pair(args.pair)
        refs = (pair.base, pair.nudger)
    elif args.base or args.nudge:
        if not (args.base and args.nudge):
            raise NudgeError("A real pair needs both --base and --nudge (or --pair ALIAS).")
        refs = tuple(ref if is_url(ref) else parse_ref(ref) for ref in (args.base, args.nudge))
    else:
        return None
    return tuple(
        r if is_url(r) else check_gguf(local_path(r), role=role)
        for r, role in zip(refs, ("base", "nudger"), strict=True)
    )


def _shape(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """WIDTH,LAYERS for the base; the nudger keeps the default pair's proportions (1/4 the width,
    3/8 the layers), and both FFNs are 2.75x their width."""
    try:
        width, layers = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"WIDTH,LAYERS (like 1024,16) expected, not {text!r}") from None
    if width < 32 or layers < 1:
        raise argparse.ArgumentTypeError("a width of at least 32 and at least one layer are needed")
    nw, nl = max(32, width // 4), max(1, layers * 3 // 8)
    return (width, layers, width * 11 // 4), (nw, nl, nw * 11 // 4)


def _vocab(text: str) -> str:
    """A GGUF file with a tokenizer (a vocabulary-only file or a model)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    try:
        kv, _ = read_header(path, keys=lambda k: k == "tokenizer.ggml.tokens")
    except Exception:  # noqa: BLE001 - whatever a damaged file raises, the user gets one sentence
        kv = {}
    if "tokenizer.ggml.tokens" not in kv:
        raise argparse.ArgumentTypeError(f"{text} is not a GGUF file with a tokenizer")
    return str(path)


def _agreements(text: str) -> list[float]:
    try:
        values = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        values = []
    if not values or not all(0.0 <= a <= 1.0 for a in values):
        raise argparse.ArgumentTypeError(f"comma-separated shares from 0 to 1 expected (like 0.5,0.7), not {text!r}")
    return values


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1 expected (like 0.7), not {text!r}")
    return value


def add_generated_pair_options(ap: argparse.ArgumentParser) -> None:
    """The pair options of the side-by-side scripts (scripts/bench_serve.py, bench_remote.py): one
    generated pair (vocabulary, weights, agreement, shape), or a real one (--base and --nudge)."""
    ap.add_argument("--vocab", type=_vocab, help="vocabulary GGUF for the generated pair (default: built-in BPE)")
    ap.add_argument("--quant", default="F16", choices=("F16", "Q8_0", "Q4_0"), help="weights of the generated pair")
    ap.add_argument("--agreement", type=_share, default=0.7, help="the generated pair's agreement (default 0.7)")
    ap.add_argument("--shape", type=_shape, default=(BASE_SHAPE, NUDGER_SHAPE), metavar="WIDTH,LAYERS",
                    help="the generated base's width and layers (default 1024,16; the nudger scales)")  # fmt: skip
    add_model_options(ap)


def _modes(text: str) -> list[str]:
    modes = [m for m in text.split(",") if m]
    unknown = [m for m in modes if m not in SYSTEMS]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"modes are some of {','.join(SYSTEMS)}, not {text!r}")
    return modes


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1 expected, not {text!r}")
    return n


def _questions(text: str) -> int:
    n = _positive(text)
    if n > len(QUESTIONS):
        raise argparse.ArgumentTypeError(f"at most {len(QUESTIONS)} questions, not {text!r}")
    return n


def _template(text: str) -> str:
    """A Jinja chat template file, read."""
    try:
        return Path(text).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"the chat template {text} cannot be read ({e})") from None


def main(argv: list[str] | None = None) -> None:
    ap = Parser(prog="nudge-local bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--vocab", type=_vocab, help="vocabulary GGUF for the generated pair (default: a small built-in BPE)"
    )
    add_model_options(ap)  # a real pair instead of the generated ones
    ap.add_argument("--base-model", help="with --base URL: the model's name where its server serves several")
    ap.add_argument("--nudge-model", help="with --nudge URL: the model's name where its server serves several")
    ap.add_argument("--pair", help="a catalog pair instead of the generated pair (its files downloaded beforehand)")
    ap.add_argument(
        "--agreement",
        type=_agreements,
        default=[0.5, 0.7, 0.9],
        help="comma-separated agreements to generate pairs for",
    )
    ap.add_argument("--gamma", type=float, default=0.4)
    ap.add_argument("--max-tokens", type=_positive, default=128)
    ap.add_argument("--rounds", type=_positive, default=3)
    ap.add_argument("--draft", type=_positive, default=None,
                    help="speculative: drafts of this many tokens (default: sized from measured costs)")  # fmt: skip
    ap.add_argument("--questions", type=_questions, default=None,
                    help="questions answered each round (default 1 on generated pairs, 5 on a real pair)")  # fmt: skip
    ap.add_argument("--chat-template", type=_template, default=None, metavar="FILE",
                    help="Jinja chat template file for the nudger (default: its GGUF's)")  # fmt: skip
    ap.add_argument("--modes", type=_modes, default=list(SYSTEMS), help=f"comma-separated, of {','.join(SYSTEMS)}")
    ap.add_argument("--threads", type=_positive, default=None)
    ap.add_argument("--quant", default="F16", choices=("F16", "Q8_0", "Q4_0"),
                    help="weights of the generated pair: F16, or quantized as laptops run them")  # fmt: skip
    ap.add_argument("--shape", type=_shape, default=(BASE_SHAPE, NUDGER_SHAPE), metavar="WIDTH,LAYERS",
                    help="the generated base's width and layers (default 1024,16; the nudger scales)")  # fmt: skip
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    modes = args.modes
    if args.json and not Path(args.json).expanduser().resolve().parent.is_dir():
        raise NudgeError(f"The folder for --json {args.json} does not exist; create it or give another path.")
    results = {}
    real = real_pair(args)
    if args.questions is None:
        args.questions = 5 if real else 1
    if real:
        print(f"== {real[0]} + {real[1]}")
        results["real"] = bench_pair(*real, modes, args)
    else:
        for agreement in args.agreement:
            print(f"\n== generated pair, agreement {agreement:.0%}")
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    base_path, nudger_path = make_pair(Path(tmp), args.vocab, agreement, quant=args.quant,
                                                       shapes=args.shape)  # fmt: skip
                except ValueError as e:  # a vocabulary without the benchmark's words
                    raise NudgeError(f"The vocabulary {args.vocab} cannot make the benchmark's pair: {e}.") from None
                results[f"agreement_{agreement}"] = bench_pair(base_path, nudger_path, modes, args)
    if args.json:
        tmp = Path(args.json + ".part")  # written beside, then renamed: never a half-written file
        try:
            tmp.write_text(json.dumps(results, indent=2))
            tmp.replace(args.json)
        except OSError as e:
            raise NudgeError(f"The results cannot be written to {args.json} ({e.strerror}).") from None
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
